"""Write LeRobot datasets (codebase v3.0 or v2.1) that LeRobot and `open_dataset` can read.

    writer = LeRobotWriter("out/demo", fps=20, features={
        "observation.images.top": {"dtype": "video", "shape": [64, 64, 3], "names": ["height", "width", "channels"]},
        "observation.state": {"dtype": "float32", "shape": [7], "names": None},
        "action": {"dtype": "float32", "shape": [7], "names": None},
    })
    for episode in demos:
        for frame in episode:
            writer.add_frame({"observation.images.top": rgb, "observation.state": q, "action": a}, task="pick")
        writer.save_episode()          # or writer.clear_episode() to drop a failed demo
    writer.finalize()                  # writes meta/, then moves the folder into place

Video frames are encoded as they arrive (one mp4 per episode and camera): H.264 by default,
`vcodec="av1"` for AV1 (libsvtav1, LeRobot's default; crf 30 unless given); `gop` is the keyframe
interval (2, as LeRobot's recorder, keeps random access cheap). v3.0 then appends each
episode's packets to the shared `file-XXX.mp4` without re-encoding. Everything is written into a
hidden sibling folder that replaces `root` only in `finalize()`; an exception inside a `with`
block, or a writer that is never finalized, leaves no folder behind.
"""

from __future__ import annotations

import io
import json
import shutil
import uuid
import weakref
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from pirecon.data.layout import V2_DATA_PATH, V2_VIDEO_PATH, V3_DATA_PATH, V3_VIDEO_PATH
from pirecon.data.stats import aggregate_stats
from pirecon.data.video import VideoConcatenator, VideoEncoder, codec_label, pick_codec
from pirecon.errors import DatasetError

VERSIONS = ("v3.0", "v2.1")
DEFAULT_FEATURES = {
    "timestamp": {"dtype": "float32", "shape": [1], "names": None},
    "frame_index": {"dtype": "int64", "shape": [1], "names": None},
    "episode_index": {"dtype": "int64", "shape": [1], "names": None},
    "index": {"dtype": "int64", "shape": [1], "names": None},
    "task_index": {"dtype": "int64", "shape": [1], "names": None},
}
STAT_QUANTILES = {"q01": 0.01, "q99": 0.99}


def array_stats(x: np.ndarray) -> dict[str, np.ndarray]:
    """LeRobot stats of x: (N, D) -> min, max, mean, std, q01, q99 as (D,) and count as (1,)."""
    x = x.astype(np.float64)
    stats = {"min": x.min(0), "max": x.max(0), "mean": x.mean(0), "std": x.std(0), "count": np.array([len(x)])}
    for name, q in STAT_QUANTILES.items():
        stats[name] = np.quantile(x, q, axis=0)
    return stats


class _ChannelStats:
    """Per-channel min/max/mean/std of images in [0, 1], on a pixel subsample of every frame."""

    def __init__(self, height: int, width: int):
        self.step = max(1, min(height, width) // 64)
        self.frames, self.pixels = 0, 0
        self.sum, self.sumsq = np.zeros(3), np.zeros(3)
        self.min, self.max = np.full(3, np.inf), np.full(3, -np.inf)

    def add(self, image: np.ndarray) -> None:  # image: (H, W, 3) uint8
        x = image[:: self.step, :: self.step].reshape(-1, 3).astype(np.float64) / 255.0
        self.frames, self.pixels = self.frames + 1, self.pixels + len(x)
        self.sum += x.sum(0)
        self.sumsq += (x**2).sum(0)
        self.min, self.max = np.minimum(self.min, x.min(0)), np.maximum(self.max, x.max(0))

    def result(self) -> dict[str, np.ndarray]:
        mean = self.sum / self.pixels
        std = np.sqrt(np.maximum(self.sumsq / self.pixels - mean**2, 0.0))
        shape = (3, 1, 1)  # LeRobot keeps image stats broadcastable over (C, H, W)
        return {"min": self.min.reshape(shape), "max": self.max.reshape(shape), "mean": mean.reshape(shape),
                "std": std.reshape(shape), "count": np.array([self.frames])}


def _nested(value):
    return value.tolist() if isinstance(value, np.ndarray) else value


class LeRobotWriter:
    """Record episodes frame by frame into a new LeRobot dataset folder (see module docstring)."""

    def __init__(self, root: str | Path, fps: float, features: dict, version: str = "v3.0",
                 robot_type: str | None = None, *, vcodec: str = "auto", crf: int | None = None, gop: int = 2,
                 chunks_size: int = 1000, data_files_size_in_mb: float = 100,
                 video_files_size_in_mb: float = 500):
        self.root = Path(root)
        if version not in VERSIONS:
            raise DatasetError(f"version={version!r}: expected one of {', '.join(VERSIONS)}")
        if self.root.exists() and (not self.root.is_dir() or any(self.root.iterdir())):
            raise DatasetError(f"{self.root}: already exists and is not empty; expected a new dataset folder")
        if fps <= 0:
            raise DatasetError(f"fps={fps}: expected a positive number")
        self.fps = int(fps) if float(fps).is_integer() else float(fps)  # LeRobot stores an int
        self.version, self.robot_type = version, robot_type
        self.features = self._check_features(features)
        self.video_keys = [k for k, ft in self.features.items() if ft["dtype"] == "video"]
        self.image_keys = [k for k, ft in self.features.items() if ft["dtype"] == "image"]
        self.vector_keys = [k for k, ft in self.features.items() if ft["dtype"] not in ("video", "image")
                            and k not in DEFAULT_FEATURES]
        self.vcodec = pick_codec(vcodec) if self.video_keys else None
        self.crf, self.gop = crf, gop
        self.chunks_size = chunks_size
        self.data_limit, self.video_limit = data_files_size_in_mb * 2**20, video_files_size_in_mb * 2**20

        self.root.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = self.root.parent / f".{self.root.name}.partial-{uuid.uuid4().hex[:8]}"
        self._tmp.mkdir()
        self._cleanup = weakref.finalize(self, shutil.rmtree, str(self._tmp), True)
        self._tasks: dict[str, int] = {}
        self._episodes: list[dict] = []  # rows of the episode table
        self._episode_stats: list[dict] = []
        self._columns: dict[str, list[np.ndarray]] = {k: [] for k in self.vector_keys}  # all episodes
        self._total_frames = 0
        self._data_file = (0, 0, None, 0)  # v3.0: chunk, file, ParquetWriter, bytes written
        self._video_files: dict[str, tuple[int, int, VideoConcatenator]] = {}
        self._new_episode()

    # validation -------------------------------------------------------------------------------
    def _check_features(self, features: dict) -> dict:
        out = {}
        for key, ft in features.items():
            if "/" in key:
                raise DatasetError(f"feature {key!r}: names must not contain '/'")
            if not isinstance(ft, dict) or "dtype" not in ft or "shape" not in ft:
                raise DatasetError(f"feature {key!r}: expected a dict with 'dtype' and 'shape'")
            shape = [int(s) for s in ft["shape"]]
            if ft["dtype"] in ("video", "image"):
                if len(shape) != 3 or shape[2] != 3:
                    raise DatasetError(f"feature {key!r}: shape {shape}; expected [height, width, 3]")
                if ft["dtype"] == "video" and (shape[0] % 2 or shape[1] % 2):
                    raise DatasetError(f"feature {key!r}: shape {shape}; video needs an even height and width")
            else:
                try:
                    np.dtype(ft["dtype"])
                except TypeError:
                    raise DatasetError(f"feature {key!r}: dtype {ft['dtype']!r} is not a numeric dtype, "
                                       f"'video' or 'image'") from None
                if len(shape) != 1:
                    raise DatasetError(f"feature {key!r}: shape {shape}; expected a 1-D shape such as [7]")
            out[key] = {**ft, "shape": shape, "names": ft.get("names")}
        if "action" not in out:
            raise DatasetError("features: missing 'action'")
        for key, ft in DEFAULT_FEATURES.items():
            out[key] = dict(ft)
        return out

    def _check_image(self, key: str, value) -> np.ndarray:
        h, w, _ = self.features[key]["shape"]
        image = np.asarray(value)
        if image.ndim == 3 and image.shape == (3, h, w):
            image = image.transpose(1, 2, 0)  # channel-first -> (H, W, 3)
        if image.shape != (h, w, 3):
            raise DatasetError(f"frame[{key!r}]: shape {image.shape}; expected ({h}, {w}, 3) uint8")
        if image.dtype != np.uint8:
            if not np.issubdtype(image.dtype, np.floating) or image.min() < 0 or image.max() > 1:
                raise DatasetError(f"frame[{key!r}]: dtype {image.dtype}; expected uint8 (or float in [0, 1])")
            image = (image * 255.0 + 0.5).astype(np.uint8)
        return image

    # recording --------------------------------------------------------------------------------
    def _new_episode(self) -> None:
        self._buffer = {k: [] for k in self.vector_keys + self.image_keys}
        self._buffer_tasks: list[str] = []
        self._buffer_timestamps: list[float] = []
        self._encoders: dict[str, VideoEncoder] = {}
        self._image_stats: dict[str, _ChannelStats] = {}
        scratch = self._tmp / ".episode"
        if scratch.exists():
            shutil.rmtree(scratch)

    @property
    def num_episodes(self) -> int:
        return len(self._episodes)

    @property
    def num_frames(self) -> int:
        return self._total_frames

    def add_frame(self, frame: dict, task: str | None = None) -> None:
        """Buffer one frame: every non-default feature (images (H, W, 3) uint8, vectors numpy)."""
        task = task if task is not None else frame.get("task")
        if not isinstance(task, str) or not task:
            raise DatasetError("add_frame: expected a task string (task='...' or frame['task'])")
        expected = set(self.vector_keys + self.image_keys + self.video_keys)
        given = set(frame) - {"task", "timestamp"}
        if given != expected:
            raise DatasetError(f"add_frame: missing features {sorted(expected - given)}, "
                               f"unexpected {sorted(given - expected)}")
        vectors = {}
        for key in self.vector_keys:
            ft = self.features[key]
            value = np.asarray(frame[key]).reshape(-1) if np.ndim(frame[key]) <= 1 else np.asarray(frame[key])
            if value.shape != tuple(ft["shape"]):
                raise DatasetError(f"frame[{key!r}]: shape {value.shape}; expected {tuple(ft['shape'])}")
            vectors[key] = value.astype(ft["dtype"])
        images = {key: self._check_image(key, frame[key]) for key in self.image_keys + self.video_keys}
        for key, image in images.items():  # validated: now change state
            if key not in self._image_stats:
                self._image_stats[key] = _ChannelStats(*image.shape[:2])
            self._image_stats[key].add(image)
            if key in self.video_keys:
                if key not in self._encoders:
                    path = self._tmp / ".episode" / f"{key}.mp4"
                    path.parent.mkdir(parents=True, exist_ok=True)
                    self._encoders[key] = VideoEncoder(path, self.fps, image.shape[1], image.shape[0],
                                                       self.vcodec, self.crf, self.gop)
                self._encoders[key].add(image)
            else:
                png = io.BytesIO()
                Image.fromarray(image).save(png, format="PNG", compress_level=1)
                self._buffer[key].append(png.getvalue())
        for key, value in vectors.items():
            self._buffer[key].append(value)
        n = len(self._buffer_tasks)
        self._buffer_timestamps.append(float(frame.get("timestamp", n / self.fps)))
        self._buffer_tasks.append(task)

    def clear_episode(self) -> None:
        """Drop the frames added since the last save_episode()."""
        for encoder in self._encoders.values():
            encoder.close()
        self._new_episode()

    def save_episode(self) -> int:
        """Write the buffered frames as the next episode; returns its episode_index."""
        n = len(self._buffer_tasks)
        if n == 0:
            raise DatasetError("save_episode: no frames added since the last save_episode()")
        episode = len(self._episodes)
        for task in self._buffer_tasks:
            self._tasks.setdefault(task, len(self._tasks))
        columns = {key: np.stack(self._buffer[key]) for key in self.vector_keys}  # (n, D) each
        columns["timestamp"] = np.asarray(self._buffer_timestamps, dtype=np.float32)
        columns["frame_index"] = np.arange(n, dtype=np.int64)
        columns["episode_index"] = np.full(n, episode, dtype=np.int64)
        columns["index"] = np.arange(self._total_frames, self._total_frames + n, dtype=np.int64)
        columns["task_index"] = np.array([self._tasks[t] for t in self._buffer_tasks], dtype=np.int64)
        stats = {key: array_stats(columns[key].reshape(n, -1)) for key in columns}
        stats.update({key: s.result() for key, s in self._image_stats.items()})

        row = {"episode_index": episode, "tasks": list(dict.fromkeys(self._buffer_tasks)), "length": n}
        row.update(self._write_data(episode, self._table(columns)))
        for key in self.video_keys:
            self._encoders[key].close()
            row.update(self._write_video(key, episode, self._encoders[key].path))
        row.update({f"stats/{key}/{name}": _nested(value) for key, fs in stats.items() for name, value in fs.items()})
        row.update({"meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0})
        self._episodes.append(row)
        self._episode_stats.append(stats)
        for key in self.vector_keys:
            self._columns[key].append(columns[key])
        self._total_frames += n
        self._new_episode()
        return episode

    def _table(self, columns: dict[str, np.ndarray]) -> pa.Table:
        """The episode as an arrow table, columns in features order (videos live in mp4 files)."""
        arrays, names = [], []
        for key, ft in self.features.items():
            if ft["dtype"] == "video":
                continue
            if ft["dtype"] == "image":
                data = self._buffer[key]
                paths = [f"frame_{i:06d}.png" for i in range(len(data))]
                arrays.append(pa.StructArray.from_arrays([pa.array(data, pa.binary()), pa.array(paths)],
                                                         names=["bytes", "path"]))
            elif key in DEFAULT_FEATURES or ft["shape"] == [1]:
                arrays.append(pa.array(columns[key].reshape(-1), type=pa.from_numpy_dtype(np.dtype(ft["dtype"]))))
            else:
                values = columns[key]
                arrays.append(pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), values.shape[1]))
            names.append(key)
        return pa.Table.from_arrays(arrays, names=names)

    def _write_data(self, episode: int, table: pa.Table) -> dict:
        if self.version == "v2.1":
            path = self._tmp / V2_DATA_PATH.format(episode_chunk=episode // self.chunks_size, episode_index=episode)
            path.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(table, path)
            return {}
        chunk, file, writer, written = self._data_file
        if writer is not None and written + table.nbytes >= self.data_limit:
            writer.close()
            chunk, file, writer, written = *self._next_file(chunk, file), None, 0
        if writer is None:
            path = self._tmp / V3_DATA_PATH.format(chunk_index=chunk, file_index=file)
            path.parent.mkdir(parents=True, exist_ok=True)
            writer = pq.ParquetWriter(path, table.schema, compression="snappy")
        writer.write_table(table)
        self._data_file = (chunk, file, writer, written + table.nbytes)
        return {"data/chunk_index": chunk, "data/file_index": file,
                "dataset_from_index": self._total_frames, "dataset_to_index": self._total_frames + table.num_rows}

    def _next_file(self, chunk: int, file: int) -> tuple[int, int]:
        return (chunk + 1, 0) if file + 1 >= self.chunks_size else (chunk, file + 1)

    def _write_video(self, key: str, episode: int, source: Path) -> dict:
        if self.version == "v2.1":
            path = self._tmp / V2_VIDEO_PATH.format(episode_chunk=episode // self.chunks_size, video_key=key,
                                                    episode_index=episode)
            path.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(source), str(path))
            return {}
        chunk, file, concat = self._video_files.get(key, (0, 0, None))
        if concat is not None and concat.path.stat().st_size + source.stat().st_size >= self.video_limit:
            concat.close()
            chunk, file, concat = *self._next_file(chunk, file), None
        if concat is None:
            path = self._tmp / V3_VIDEO_PATH.format(video_key=key, chunk_index=chunk, file_index=file)
            path.parent.mkdir(parents=True, exist_ok=True)
            concat = VideoConcatenator(path)
        start = concat.duration
        end = start + concat.append(source)
        self._video_files[key] = (chunk, file, concat)
        return {f"videos/{key}/chunk_index": chunk, f"videos/{key}/file_index": file,
                f"videos/{key}/from_timestamp": start, f"videos/{key}/to_timestamp": end}

    # finishing --------------------------------------------------------------------------------
    def finalize(self) -> Path:
        """Write meta/ and move the dataset into `root`. Returns root."""
        if self._buffer_tasks:
            raise DatasetError("finalize: frames were added after the last save_episode(); "
                               "call save_episode() or clear_episode() first")
        if not self._episodes:
            raise DatasetError("finalize: no episode saved; expected at least one save_episode()")
        if self._data_file[2] is not None:
            self._data_file[2].close()
        for _, _, concat in self._video_files.values():
            concat.close()
        meta = self._tmp / "meta"
        meta.mkdir(exist_ok=True)
        self._write_json(meta / "info.json", self._info())
        self._write_json(meta / "stats.json", {k: {n: _nested(v) for n, v in fs.items()}
                                               for k, fs in self._dataset_stats().items()})
        tasks = sorted(self._tasks, key=self._tasks.get)
        if self.version == "v3.0":
            self._write_tasks_parquet(meta / "tasks.parquet", tasks)
            path = meta / "episodes" / "chunk-000" / "file-000.parquet"
            path.parent.mkdir(parents=True)
            pq.write_table(pa.Table.from_pylist(self._episodes), path)
        else:
            lines = [{"task_index": self._tasks[t], "task": t} for t in tasks]
            (meta / "tasks.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
            episodes = [{k: row[k] for k in ("episode_index", "tasks", "length")} for row in self._episodes]
            (meta / "episodes.jsonl").write_text("".join(json.dumps(x) + "\n" for x in episodes))
            stats_lines = [{"episode_index": i, "stats": {k: {n: _nested(v) for n, v in fs.items()}
                                                          for k, fs in stats.items()}}
                           for i, stats in enumerate(self._episode_stats)]
            (meta / "episodes_stats.jsonl").write_text("".join(json.dumps(x) + "\n" for x in stats_lines))
        shutil.rmtree(self._tmp / ".episode", ignore_errors=True)
        if self.root.exists():
            self.root.rmdir()  # checked empty in __init__; rmdir fails loudly if that changed
        self._tmp.rename(self.root)
        self._cleanup.detach()
        return self.root

    def _dataset_stats(self) -> dict:
        """Exact stats of every numeric column; images merged from the episodes' channel stats."""
        stats = aggregate_stats([{k: s[k] for k in self.image_keys + self.video_keys} for s in self._episode_stats])
        for key in self.vector_keys:
            stats[key] = array_stats(np.concatenate(self._columns[key]).reshape(self._total_frames, -1))
        defaults = aggregate_stats([{k: s[k] for k in DEFAULT_FEATURES} for s in self._episode_stats])
        return {key: (defaults | stats)[key] for key in self.features}

    def _info(self) -> dict:
        features = {}
        for key, ft in self.features.items():
            ft = dict(ft)
            if ft["dtype"] == "video":
                h, w, c = ft["shape"]
                ft["info"] = {"video.height": h, "video.width": w,
                              "video.codec": codec_label(self.vcodec),
                              "video.pix_fmt": "yuv420p", "video.is_depth_map": False, "video.fps": self.fps,
                              "video.channels": c, "has_audio": False}
            features[key] = ft
        n = len(self._episodes)
        info = {"codebase_version": self.version, "robot_type": self.robot_type, "total_episodes": n,
                "total_frames": self._total_frames, "total_tasks": len(self._tasks)}
        if self.version == "v3.0":
            sizes = [limit / 2**20 for limit in (self.data_limit, self.video_limit)]
            data_mb, video_mb = (int(x) if float(x).is_integer() else x for x in sizes)
            info.update({"chunks_size": self.chunks_size, "data_files_size_in_mb": data_mb,
                         "video_files_size_in_mb": video_mb, "fps": self.fps,
                         "splits": {"train": f"0:{n}"}, "data_path": V3_DATA_PATH,
                         "video_path": V3_VIDEO_PATH if self.video_keys else None})
        else:
            info.update({"total_videos": n * len(self.video_keys), "total_chunks": (n - 1) // self.chunks_size + 1,
                         "chunks_size": self.chunks_size, "fps": self.fps, "splits": {"train": f"0:{n}"},
                         "data_path": V2_DATA_PATH, "video_path": V2_VIDEO_PATH if self.video_keys else None})
        info["features"] = features
        return info

    @staticmethod
    def _write_json(path: Path, data: dict) -> None:
        path.write_text(json.dumps(data, indent=4) + "\n")

    @staticmethod
    def _write_tasks_parquet(path: Path, tasks: list[str]) -> None:
        """meta/tasks.parquet as LeRobot writes it with pandas: the task strings are the index
        (named "task") and `task_index` the one column; pandas reads the index back from the
        schema's pandas metadata."""
        pandas_meta = {
            "index_columns": ["task"],
            "column_indexes": [{"name": None, "field_name": None, "pandas_type": "unicode",
                                "numpy_type": "object", "metadata": {"encoding": "UTF-8"}}],
            "columns": [{"name": "task_index", "field_name": "task_index", "pandas_type": "int64",
                         "numpy_type": "int64", "metadata": None},
                        {"name": "task", "field_name": "task", "pandas_type": "unicode",
                         "numpy_type": "object", "metadata": None}],
            "creator": {"library": "pyarrow", "version": pa.__version__}, "pandas_version": "2.2.3"}
        table = pa.table({"task_index": pa.array(range(len(tasks)), pa.int64()), "task": pa.array(tasks, pa.string())})
        pq.write_table(table.replace_schema_metadata({b"pandas": json.dumps(pandas_meta).encode()}), path)

    def abort(self) -> None:
        """Stop recording and delete everything written so far."""
        closers = [e.close for e in self._encoders.values()] + [c.close for _, _, c in self._video_files.values()]
        if self._data_file[2] is not None:
            closers.append(self._data_file[2].close)
        for close in closers:
            try:
                close()
            except Exception:  # noqa: BLE001 - best effort: everything is deleted next
                pass
        self._encoders, self._video_files, self._data_file = {}, {}, (0, 0, None, 0)
        self._cleanup()

    def __enter__(self) -> LeRobotWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        """On an exception delete everything; otherwise finalize (if not done already)."""
        if exc_type is not None:
            self.abort()
        elif self._cleanup.alive:
            self.finalize()


# ---------------------------------------------------------------------------------------------
# A small synthetic dataset (tests, benchmarks, examples): content is a function of
# (episode, frame), so a reader's output can be checked value by value.


def demo_image(episode: int, frame: int, camera: int, size: int = 32) -> np.ndarray:
    """(size, size, 3) uint8: smooth gradients that move with the frame (compress well)."""
    y, x = np.mgrid[0:size, 0:size]
    red = (x * 128 // size + frame * 6 + episode * 20) % 256
    green = (y * 128 // size + camera * 60) % 256
    blue = np.full_like(x, (100 + 7 * frame + 30 * camera) % 256)
    return np.stack([red, green, blue], -1).astype(np.uint8)


def demo_state(episode: int, frame: int, dim: int = 4) -> np.ndarray:
    return (np.arange(dim) + 100.0 * episode + frame + 0.25).astype(np.float32)


def demo_action(episode: int, frame: int, dim: int = 3) -> np.ndarray:
    return (np.arange(dim) * 0.5 + 10.0 * episode + frame).astype(np.float32)


def write_demo_dataset(root: str | Path, version: str = "v3.0", episode_lengths=(12, 15, 10),
                       cameras=("top", "wrist"), image_size: int = 32, image_dtype: str = "video",
                       state_dim: int = 4, action_dim: int = 3, fps: int = 10, vcodec: str = "auto",
                       gop: int = 2) -> Path:
    """Write a tiny dataset with `demo_*` content; episode e has task f"task {e % 2}"."""
    features = {f"observation.images.{cam}": {"dtype": image_dtype, "shape": [image_size, image_size, 3],
                                              "names": ["height", "width", "channels"]} for cam in cameras}
    features["observation.state"] = {"dtype": "float32", "shape": [state_dim], "names": None}
    features["action"] = {"dtype": "float32", "shape": [action_dim], "names": None}
    with LeRobotWriter(root, fps, features, version=version, robot_type="demo", vcodec=vcodec,
                       gop=gop) as writer:
        for episode, length in enumerate(episode_lengths):
            for i in range(length):
                frame = {f"observation.images.{cam}": demo_image(episode, i, c, image_size)
                         for c, cam in enumerate(cameras)}
                frame["observation.state"] = demo_state(episode, i, state_dim)
                frame["action"] = demo_action(episode, i, action_dim)
                writer.add_frame(frame, task=f"task {episode % 2}")
            writer.save_episode()
    return Path(root)
