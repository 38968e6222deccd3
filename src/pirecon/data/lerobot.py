"""Read LeRobot datasets (codebase v2.0, v2.1, v3.0) from a local folder.

`open_dataset(root, action_horizon=H)` returns a map-style torch Dataset whose samples match
LeRobot's `LeRobotDataset(delta_timestamps={"action": [i / fps for i in range(H)]})`:

    observation.images.<key>  (3, H, W) float32 in [0, 1]
    observation.state         (S,) float32
    action                    (H, D) float32; past the episode end the last action repeats
    action_is_pad             (H,) bool, True where the action was padded
    task                      str
    timestamp, frame_index, episode_index, index, task_index   scalar tensors
    other numeric features (e.g. next.reward)                  as stored, shape [1] -> scalar

`pirecon.data.layout.Layout` reads the metadata of any supported version into one form
(episodes, tasks, files). The dataset loads all parquet columns of the selected
episodes as numpy arrays when it opens; per item only video frames are decoded
(`pirecon.data.video.FrameDecoder`, or torchcodec's with `video_backend="torchcodec"`, one per process). Known quirks of real datasets (phantom
cameras, no frame_index column, several task strings per episode, wrong path templates) are
handled with one warning each; broken data raises `DatasetError` naming the file or key.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from PIL import Image

from pirecon.configs.data import DatasetConfig
from pirecon.data.checks import episode_problems
from pirecon.data.layout import (DEFAULT_COLUMNS, Episode, Layout, column_vectors, dataset_root, parquet_columns,
                                 read_table, select_episodes, warn)
from pirecon.data.stats import load_dataset_stats
from pirecon.data.video import frame_decoder
from pirecon.errors import ConfigError, DatasetError


def open_from_config(cfg: DatasetConfig, action_horizon: int, split: str = "train", **kwargs) -> LeRobotDataset:
    """`open_dataset` with the config's root, episodes, val_episodes and video backend."""
    return open_dataset(dataset_root(cfg), action_horizon, episodes=cfg.episodes, split=split,
                        val_episodes=cfg.val_episodes, video_backend=cfg.video_backend, **kwargs)


class LeRobotDataset(torch.utils.data.Dataset):
    """Map-style dataset of LeRobot frames with action chunks (see the module docstring).

    Every numeric feature of info.json found in the parquet files is returned too (e.g.
    `next.reward`, `observation.gaze_bbox`), as LeRobot does: shape [1] as a scalar tensor.
    """

    def __init__(self, layout: Layout, episodes: list[int], action_horizon: int,
                 tolerance_s: float | None = None, frame_cache_mb: float = 256, video_backend: str = "pyav"):
        if action_horizon < 1:
            raise ConfigError(f"action_horizon={action_horizon}: expected a positive integer")
        if "action" not in layout.features:
            raise DatasetError(f"{layout.root / 'meta' / 'info.json'}: features has no 'action'")
        self.root, self.meta, self.features = layout.root, layout.info, layout.features
        self.codebase_version, self.fps, self.tasks = layout.version, layout.fps, layout.tasks
        self.episodes, self.action_horizon = list(episodes), action_horizon
        self.camera_keys, self.video_keys, self.image_keys = layout.camera_keys, layout.video_keys, layout.image_keys
        self.tolerance_s = tolerance_s if tolerance_s is not None else 0.5 / self.fps
        for message in layout.quirks:
            warn(f"{layout.root}: {message}")
        self._load(layout)
        self.stats = load_dataset_stats(layout)
        self._decoder = frame_decoder(video_backend, cache_mb=frame_cache_mb) if self.video_keys else None

    # loading ----------------------------------------------------------------------------------
    def _load(self, layout: Layout) -> None:
        """Read every needed column of the selected episodes into flat numpy arrays."""
        by_file: dict[Path, list[Episode]] = {}
        for index in self.episodes:
            episode = layout.episodes[index]
            for key in self.video_keys:
                path = episode.videos.get(key, (None,))[0]
                if path is None or not path.is_file():
                    raise DatasetError(f"{path or layout.root}: video file of camera {key!r} for episode "
                                       f"{index} is missing (other episodes of this camera have files)")
            by_file.setdefault(episode.data_file, []).append(episode)
        parts: dict[str, list[np.ndarray]] = {}
        images: dict[str, list] = {k: [] for k in self.image_keys}
        self._videos = {k: [] for k in self.video_keys}  # camera -> per episode (file, from_ts, to_ts)
        derived: set[str] = set()
        lengths = []
        for path, episodes in by_file.items():
            table = self._read_data_file(path)
            file_eps = (table.column("episode_index").to_numpy() if "episode_index" in table.column_names
                        else np.full(table.num_rows, episodes[0].index))
            for episode in episodes:
                rows = np.flatnonzero(file_eps == episode.index)
                if len(rows) == 0:
                    raise DatasetError(f"{path}: no rows with episode_index {episode.index}")
                contiguous = rows[-1] - rows[0] + 1 == len(rows)
                sub = table.slice(int(rows[0]), len(rows)) if contiguous else table.take(pa.array(rows))
                for key, value in self._episode_arrays(sub, path, episode, rows, derived).items():
                    parts.setdefault(key, []).append(value)
                for key in self.image_keys:
                    column = sub.column(key).combine_chunks()
                    images[key].append(column.field("bytes") if pa.types.is_struct(column.type) else column)
                for key in self.video_keys:
                    self._videos[key].append(episode.videos[key])
                lengths.append(len(rows))
        for column in sorted(derived):
            warn(f"{layout.root}: parquet files have no {column!r} column; derived from row order")
        late = [ts[0] for ts in parts["timestamp"] if abs(ts[0]) > 0.5 / self.fps]
        if late:
            warn(f"{layout.root}: timestamps of {len(late)} episode(s) start after 0 (first: {late[0]:.4f} s); "
                 f"video frames are looked up by timestamp as LeRobot does, and a time past the last frame "
                 f"shows the last frame")
        # name -> (N,) or (N, D); an optional column missing from some files is dropped
        self._columns = {k: np.concatenate(v) for k, v in parts.items() if len(v) == len(lengths)}
        self._images = {k: pa.concat_arrays(v) for k, v in images.items()}
        self._row_episode = np.repeat(np.arange(len(lengths)), lengths).astype(np.int32)  # (N,)
        self._episode_last = np.cumsum(lengths) - 1  # last row of each selected episode

    def _read_data_file(self, path: Path) -> pa.Table:
        names = parquet_columns(path)
        required = ["action", "timestamp", *self.image_keys]
        required += ["observation.state"] if "observation.state" in self.features else []
        for column in required:
            if column not in names:
                raise DatasetError(f"{path}: missing column {column!r} (listed in meta/info.json features)")
        self._extra = [k for k, ft in self.features.items() if k in names and k not in required
                       and k not in DEFAULT_COLUMNS and ft.get("dtype") not in ("video", "image", "string")]
        return read_table(path, [c for c in dict.fromkeys(required + list(DEFAULT_COLUMNS) + self._extra)
                                 if c in names])

    def _episode_arrays(self, sub: pa.Table, path: Path, episode: Episode, rows: np.ndarray,
                        derived: set[str]) -> dict[str, np.ndarray]:
        n, cols = sub.num_rows, sub.column_names
        out = {}
        for name in ("action", "observation.state"):
            if name not in cols:
                continue
            values = column_vectors(sub, name, path)
            bad = ~np.isfinite(values)
            if bad.any():
                row, dim = (int(x) for x in np.argwhere(bad)[0])
                raise DatasetError(f"{path}: column {name!r} holds {values[row, dim]} in episode "
                                   f"{episode.index} at row {int(rows[row])} (dimension {dim}); "
                                   f"expected finite numbers")
            out[name] = values.astype(np.float32)
        out["timestamp"] = sub.column("timestamp").to_numpy().astype(np.float64)

        def ints(name: str, fallback) -> np.ndarray:
            if name in cols:
                return sub.column(name).to_numpy().astype(np.int64)
            derived.add(name)
            return np.asarray(fallback, dtype=np.int64)
        out["frame_index"] = ints("frame_index", np.arange(n))
        out["episode_index"] = np.full(n, episode.index, dtype=np.int64)
        out["index"] = ints("index", np.arange(n))
        first_task = next((i for i, t in self.tasks.items() if episode.tasks and t == episode.tasks[0]), 0)
        out["task_index"] = ints("task_index", np.full(n, first_task))
        problems = episode_problems(episode.index, n, episode.length,
                                    out["frame_index"] if "frame_index" not in derived else None,
                                    out["task_index"], self.tasks)
        if problems:
            raise DatasetError(f"{path}: {problems[0]} (`pirecon doctor` lists every problem)")
        for name in self._extra:
            values = column_vectors(sub, name, path)
            kind = values.dtype.kind
            values = values.astype(np.float32 if kind == "f" else bool if kind == "b" else np.int64)
            out[name] = values[:, 0] if list(self.features[name].get("shape", [])) == [1] else values
        return out

    # access -----------------------------------------------------------------------------------
    @property
    def num_frames(self) -> int:
        return len(self._row_episode)

    @property
    def num_episodes(self) -> int:
        return len(self.episodes)

    def __len__(self) -> int:
        return self.num_frames

    def __getitem__(self, i: int) -> dict:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} frames")
        i = int(i) % len(self)
        episode = int(self._row_episode[i])
        last = int(self._episode_last[episode])
        rows = i + np.arange(self.action_horizon)  # (H,)
        item = {key: torch.from_numpy(np.array(values[i])) for key, values in self._columns.items()
                if key != "action"}
        item["timestamp"] = item["timestamp"].float()
        item["action"] = torch.from_numpy(self._columns["action"][np.minimum(rows, last)])  # (H, D)
        item["action_is_pad"] = torch.from_numpy(rows > last)  # (H,)
        item["task"] = self.tasks[int(self._columns["task_index"][i])]
        timestamp = float(self._columns["timestamp"][i])
        for key in self.video_keys:
            path, start, end = self._videos[key][episode]
            item[key] = _to_chw(self._decoder.frame_at(path, start + timestamp, self.tolerance_s, end))
        for key in self.image_keys:
            data = self._images[key][i].as_py()
            if data is None:
                raise DatasetError(f"{self.root}: image {key!r} of row {int(self._columns['index'][i])} "
                                   f"holds no bytes")
            item[key] = _to_chw(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))
        return item

    def __repr__(self) -> str:
        return (f"LeRobotDataset({self.root}, {self.codebase_version}, {self.num_episodes} episodes, "
                f"{self.num_frames} frames, cameras={self.camera_keys}, horizon={self.action_horizon})")


def _to_chw(frame: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, H, W) float32 in [0, 1].

    In numpy: torch would split this small op over its intra-op threads, which is many times
    slower when the cores are busy (DataLoader workers, other processes).
    """
    out = np.empty((3, *frame.shape[:2]), dtype=np.float32)
    np.divide(frame.transpose(2, 0, 1), np.float32(255.0), out=out)
    return torch.from_numpy(out)


def open_dataset(root: str | Path, action_horizon: int = 50, episodes: list[int] | None = None,
                 split: str = "train", val_episodes: int = 0, *, tolerance_s: float | None = None,
                 frame_cache_mb: float = 256, video_backend: str = "pyav") -> LeRobotDataset:
    """Open a local LeRobot dataset as a map-style torch Dataset of frames with action chunks.

    split: "train" (selected episodes minus the last `val_episodes`), "val" (those last ones) or
    "all". tolerance_s: how far a video frame may be from the requested timestamp (default half a
    frame). frame_cache_mb: decoded-frame cache per process (0 disables it; PyAV only).
    video_backend: "pyav" or "torchcodec" (`--dataset.video_backend`; both give the same frames).
    """
    layout = Layout(root)
    chosen = select_episodes(layout, episodes, split, val_episodes)
    return LeRobotDataset(layout, chosen, action_horizon, tolerance_s, frame_cache_mb, video_backend)
