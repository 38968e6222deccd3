"""Cheap structural checks of one episode's rows, shared by `pirecon doctor` (which lists every
problem) and the dataset reader (which refuses the first, so training never reads wrong data)."""

from __future__ import annotations

from typing import Container

import numpy as np


def episode_problems(index: int, rows: int, table_length: int | None, frame_index: np.ndarray | None,
                     task_index: np.ndarray | None, tasks: Container[int]) -> list[str]:
    """What makes episode `index` unreadable as it stands: its row count against the episode table
    (meta/episodes*), frame_index not counting 0, 1, ... in row order (its action chunks would mix
    frames), and task indices that name no task of meta/tasks*."""
    problems = []
    if rows == 0:
        return [f"episode {index} has no rows"]
    if table_length and table_length != rows:
        problems.append(f"episode {index} has {rows} rows, the episode table says {table_length}")
    if frame_index is not None and len(frame_index) == rows and not np.array_equal(frame_index, np.arange(rows)):
        first = int(np.flatnonzero(frame_index != np.arange(rows))[0])
        problems.append(f"episode {index}: frame_index is {int(frame_index[first])} at row {first} of the episode; "
                        f"expected 0, 1, 2, ... in row order")
    if task_index is not None:
        unknown = sorted(set(np.unique(task_index).tolist()) - set(tasks))
        if unknown:
            problems.append(f"episode {index}: task_index {unknown} names no task of meta/tasks")
    return problems
