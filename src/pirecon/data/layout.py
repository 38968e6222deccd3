"""LeRobot dataset folders on disk (codebase v2.0, v2.1, v3.0): where the folder is, its metadata
and files read into one form (`Layout`: episodes, tasks, files), episode selection.

The dataset (`pirecon.data.lerobot`), the stats, doctor and tokenizer commands and the writer use
it. Known quirks of real datasets are handled with one `DatasetWarning` each; broken data raises
`DatasetError` naming the file or key.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pirecon.configs.data import DatasetConfig
from pirecon.errors import ConfigError, DatasetError
from pirecon.hubcache import resolve_dataset

SUPPORTED_VERSIONS = ("v2.0", "v2.1", "v3.0")
DEFAULT_COLUMNS = ("timestamp", "frame_index", "episode_index", "index", "task_index")
V2_DATA_PATH = "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"
V2_VIDEO_PATH = "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"
V3_DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
V3_VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"


class DatasetWarning(UserWarning):
    """A quirk in a dataset that pirecon works around (the message says how)."""


def warn(message: str) -> None:
    warnings.warn(message, DatasetWarning, stacklevel=3)


def dataset_root(cfg: DatasetConfig) -> Path:
    """The local folder of `--dataset.root`, else of `--dataset.repo_id`: $HF_LEROBOT_HOME/<repo_id> when
    it exists there, else the Hugging Face cache (offline unless asked; `pirecon.hubcache`)."""
    if cfg.root:
        return Path(cfg.root).expanduser()
    if cfg.repo_id:
        home = os.environ.get("HF_LEROBOT_HOME", "~/.cache/huggingface/lerobot")
        local = Path(home).expanduser() / cfg.repo_id
        if local.is_dir():
            return local
        return resolve_dataset(f"{cfg.repo_id}@{cfg.revision}" if cfg.revision else cfg.repo_id)
    raise ConfigError("--dataset.root: expected a dataset folder (or --dataset.repo_id=ORG/NAME of a Hub "
                      "dataset or a local copy)")


# ---------------------------------------------------------------------------------------------
# File helpers: every failure names the file


def read_json(path: Path):
    if not path.is_file():
        raise DatasetError(f"{path}: file not found")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: not valid JSON ({exc})") from None


def read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        raise DatasetError(f"{path}: file not found")
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise DatasetError(f"{path}:{number}: not valid JSON ({exc})") from None
    return rows


def read_table(path: Path, columns: list[str] | None = None) -> pa.Table:
    """Read (some columns of) a parquet file; a missing or truncated file is a DatasetError."""
    if not path.is_file():
        raise DatasetError(f"{path}: parquet file not found")
    try:
        return pq.read_table(path, columns=columns)
    except (pa.ArrowException, OSError) as exc:
        raise DatasetError(f"{path}: cannot read parquet file ({exc})") from None


def parquet_columns(path: Path) -> list[str]:
    """Column names of a parquet file (reads only the footer)."""
    if not path.is_file():
        raise DatasetError(f"{path}: parquet file not found")
    try:
        return pq.read_schema(path).names
    except (pa.ArrowException, OSError) as exc:
        raise DatasetError(f"{path}: cannot read parquet file ({exc})") from None


def column_vectors(table: pa.Table, name: str, path: Path) -> np.ndarray:
    """A list (or scalar) column as a (rows, D) numpy array, checking every row has D values."""
    column = table.column(name).combine_chunks()
    rows = len(column)
    if column.null_count:
        raise DatasetError(f"{path}: column {name!r} has {column.null_count} empty rows; expected values")
    if pa.types.is_fixed_size_list(column.type):
        values, dim = column.flatten(), column.type.list_size
    elif pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
        lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
        dim = int(lengths[0]) if rows else 0
        if rows and (lengths != dim).any():
            bad = int(np.flatnonzero(lengths != dim)[0])
            raise DatasetError(f"{path}: column {name!r} row {bad} has {lengths[bad]} values; expected {dim}")
        values = column.flatten()
    else:
        values, dim = column, 1
    try:
        return values.to_numpy(zero_copy_only=False).reshape(rows, dim)
    except (pa.ArrowException, ValueError) as exc:
        raise DatasetError(f"{path}: column {name!r} is not numeric ({exc})") from None


# ---------------------------------------------------------------------------------------------
# Metadata of any version in one form


@dataclass
class Episode:
    """One episode's metadata and files (v3.0: a slice of shared files)."""

    index: int
    length: int
    tasks: list[str]
    data_file: Path | None = None
    # camera key -> (mp4 file, from_timestamp, to_timestamp or None)
    videos: dict[str, tuple[Path, float, float | None]] = field(default_factory=dict)


class Layout:
    """The metadata of a dataset folder: info, episodes, tasks and where each file is.

    `quirks` lists what was worked around (one message per kind); `missing_files` the video
    files absent for a camera that has other files (the doctor lists them all; the reader raises
    on the first one of a selected episode).
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)
        info_path = self.root / "meta" / "info.json"
        if not info_path.is_file():
            raise DatasetError(f"{info_path}: missing; expected a LeRobot dataset folder with meta/info.json")
        self.info: dict = read_json(info_path)
        self.version = self.info.get("codebase_version")
        if self.version not in SUPPORTED_VERSIONS:
            raise DatasetError(f"{info_path}: codebase_version {self.version!r} is not supported; "
                               f"expected one of {', '.join(SUPPORTED_VERSIONS)}")
        for key in ("fps", "features"):
            if key not in self.info:
                raise DatasetError(f"{info_path}: missing key {key!r}")
        self.fps = float(self.info["fps"])
        self.features: dict = self.info["features"]
        self.quirks: list[str] = []
        if self.version == "v3.0":
            self.tasks, self.episodes = self._load_v3()
        else:
            self.tasks, self.episodes = self._load_v2()
        self.image_keys = [k for k, ft in self.features.items() if ft.get("dtype") == "image"]
        declared = [k for k, ft in self.features.items() if ft.get("dtype") == "video"]
        self.phantom_cameras = [k for k in declared if not self._camera_has_files(k)]
        if self.phantom_cameras:
            self.quirks.append(f"info.json lists camera(s) {self.phantom_cameras} without any video file; "
                               f"skipping them")
        self.video_keys = [k for k in declared if k not in self.phantom_cameras]
        self.missing_files = [ep.videos[k][0] for ep in self.episodes.values() for k in self.video_keys
                              if k in ep.videos and not ep.videos[k][0].is_file()]
        multi = [ep.index for ep in self.episodes.values() if len(ep.tasks) > 1]
        if multi:
            example = self.episodes[multi[0]].tasks
            self.quirks.append(f"{len(multi)} episode(s) list several task strings (episode {multi[0]}: "
                               f"{example}); each frame's task comes from its task_index column "
                               f"(or the episode's first task)")

    @property
    def camera_keys(self) -> list[str]:
        return self.video_keys + self.image_keys

    # v2.x: one parquet and one mp4 per episode ---------------------------------------------
    def _load_v2(self):
        meta = self.root / "meta"
        tasks = {int(row["task_index"]): str(row["task"]) for row in read_jsonl(meta / "tasks.jsonl")}
        chunks_size = int(self.info.get("chunks_size") or 1000)
        episodes = {}
        for row in read_jsonl(meta / "episodes.jsonl"):
            if "episode_index" not in row:
                raise DatasetError(f"{meta / 'episodes.jsonl'}: a line lacks 'episode_index'")
            index = int(row["episode_index"])
            tasks_ = row.get("tasks") or []
            episodes[index] = Episode(index, int(row.get("length", 0)), [tasks_] if isinstance(tasks_, str)
                                      else list(tasks_))
        data_t = self._template("data_path", V2_DATA_PATH, episodes, chunks_size)
        video_keys = [k for k, ft in self.features.items() if ft.get("dtype") == "video"]
        video_t = {k: self._template("video_path", V2_VIDEO_PATH, episodes, chunks_size, k) for k in video_keys}
        for ep in episodes.values():
            names = {"episode_chunk": ep.index // chunks_size, "episode_index": ep.index}
            ep.data_file = self.root / data_t.format(**names)
            ep.videos = {k: (self.root / t.format(video_key=k, **names), 0.0, None) for k, t in video_t.items()}
        return tasks, dict(sorted(episodes.items()))

    def _template(self, key: str, default: str, episodes: dict, chunks_size: int, video_key=None) -> str:
        """info[key], or the standard v2 template when that finds more of the episodes' files."""
        template = self.info.get(key) or default
        if not episodes or template == default:
            return template

        def found(t: str) -> int:
            return sum((self.root / t.format(episode_chunk=i // chunks_size, episode_index=i,
                                             video_key=video_key)).is_file() for i in episodes)
        try:
            ours = found(template)
        except (KeyError, IndexError, ValueError):
            ours = 0
        if found(default) > ours:
            message = f"info.json {key} {template!r} does not match the files; using the standard {default!r}"
            if message not in self.quirks:
                self.quirks.append(message)
            return default
        return template

    # v3.0: many episodes per file, episode table in meta/episodes/ ---------------------------
    def _load_v3(self):
        meta = self.root / "meta"
        tasks_table = read_table(meta / "tasks.parquet")
        names = tasks_table.column_names
        index_columns = (tasks_table.schema.pandas_metadata or {}).get("index_columns", [])
        text_col = next((c for c in ["task", "__index_level_0__", *index_columns] if c in names), None)
        if text_col is None or "task_index" not in names:
            raise DatasetError(f"{meta / 'tasks.parquet'}: expected a 'task_index' column and the task "
                               f"strings as index (or a 'task' column); found {names}")
        tasks = dict(zip(map(int, tasks_table.column("task_index").to_pylist()),
                         map(str, tasks_table.column(text_col).to_pylist())))
        files = sorted((meta / "episodes").glob("chunk-*/file-*.parquet"))
        if not files:
            raise DatasetError(f"{meta / 'episodes'}: no chunk-XXX/file-XXX.parquet episode tables found")
        data_t = self.info.get("data_path") or V3_DATA_PATH
        video_t = self.info.get("video_path") or V3_VIDEO_PATH
        video_keys = [k for k, ft in self.features.items() if ft.get("dtype") == "video"]
        episodes = {}
        for path in files:
            table = read_table(path, [c for c in parquet_columns(path) if not c.startswith("stats/")])
            required = ["episode_index", "length", "data/chunk_index", "data/file_index"]
            missing = [c for c in required if c not in table.column_names]
            if missing:
                raise DatasetError(f"{path}: missing episode column(s) {missing}")
            for row in table.to_pylist():
                ep = Episode(int(row["episode_index"]), int(row["length"]), list(row.get("tasks") or []))
                ep.data_file = self.root / data_t.format(chunk_index=row["data/chunk_index"],
                                                         file_index=row["data/file_index"])
                for k in video_keys:
                    chunk, file = row.get(f"videos/{k}/chunk_index"), row.get(f"videos/{k}/file_index")
                    if chunk is None or file is None:
                        continue
                    video_path = self.root / video_t.format(video_key=k, chunk_index=chunk, file_index=file)
                    ep.videos[k] = (video_path, float(row.get(f"videos/{k}/from_timestamp") or 0.0),
                                    row.get(f"videos/{k}/to_timestamp"))
                episodes[ep.index] = ep
        return tasks, dict(sorted(episodes.items()))

    def _camera_has_files(self, key: str) -> bool:
        return any(ep.videos[key][0].is_file() for ep in self.episodes.values() if key in ep.videos)


def select_episodes(layout: Layout, episodes=None, split: str = "all", val_episodes: int = 0) -> list[int]:
    """Sorted episode indices of `split` among `episodes` (None: all); the last `val_episodes` are "val"."""
    available = list(layout.episodes)
    chosen = available if episodes is None else sorted(set(int(e) for e in episodes))
    unknown = sorted(set(chosen) - set(available))
    if unknown:
        raise DatasetError(f"{layout.root}: episode(s) {unknown} not in the dataset "
                           f"(it has {len(available)}: {available[0]}..{available[-1]})")
    if split not in ("train", "val", "all"):
        raise ConfigError(f"split={split!r}: expected 'train', 'val' or 'all'")
    if not 0 <= val_episodes < len(chosen) + (split != "train"):
        raise DatasetError(f"val_episodes={val_episodes}: expected 0 <= val_episodes < {len(chosen)} "
                           f"(the number of selected episodes) so that training episodes remain")
    if split == "val" and val_episodes == 0:
        raise DatasetError("split='val' is empty: set val_episodes to the number of held-out episodes")
    if split == "val":
        return chosen[-val_episodes:]
    return chosen if split == "all" or val_episodes == 0 else chosen[:-val_episodes]
