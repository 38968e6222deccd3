"""`pirecon doctor --dataset.root=DIR`: check a LeRobot dataset folder and print the findings.

Checks info.json against the files (missing and extra episode files, phantom cameras, totals),
feature shapes against the parquet columns, NaN/inf in numeric columns, empty and short
episodes, timestamps against fps, and every episode's video (frame rate, size, length against
the episode's timestamps, and that the first and last frames decode).

Severity: ERROR means pirecon's reader fails on the data or would feed wrong data; WARN means
a quirk the reader works around (the detail says how, and whether LeRobot itself would fail);
OK rows list the checks that found nothing. Exit code 1 if any ERROR (or any WARN with
--strict=true), else 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from pirecon.data.layout import (DEFAULT_COLUMNS, Layout, column_vectors, dataset_root, parquet_columns,
                                 read_table)
from pirecon.configs.data import DoctorConfig
from pirecon.configs.parse import format_help, parse_flags, wants_help
from pirecon.data.checks import episode_problems
from pirecon.data.video import FrameDecoder, probe_video
from pirecon.errors import DatasetError

LEROBOT_TOLERANCE_S = 1e-4  # LeRobotDataset's default tolerance_s
CHECKS = ("metadata", "files", "columns", "values", "episodes", "timestamps", "videos", "stats")


@dataclass(frozen=True)
class Finding:
    severity: str  # "ERROR" | "WARN" | "OK"
    check: str
    location: str
    detail: str


class Doctor:
    """Runs every check on one dataset folder and collects findings."""

    def __init__(self, root: str | Path, min_length: int = 2):
        self.root = Path(root)
        self.min_length = min_length
        self.findings: list[Finding] = []

    def add(self, severity: str, check: str, location, detail: str) -> None:
        if isinstance(location, Path):
            location = str(location.relative_to(self.root)) if location.is_relative_to(self.root) else str(location)
        self.findings.append(Finding(severity, check, location, detail))

    def run(self) -> list[Finding]:
        try:
            layout = Layout(self.root)
        except DatasetError as exc:
            self.add("ERROR", "metadata", self.root / "meta", str(exc))
            return self.findings
        self._check_metadata(layout)
        self._check_files(layout)
        episodes = self._check_data(layout)
        self._check_videos(layout, episodes)
        self._check_stats(layout)
        for check in CHECKS:  # one OK row for every check that found nothing
            if not any(f.check == check for f in self.findings):
                self.add("OK", check, ".", "no problems found")
        return self.findings

    # metadata ---------------------------------------------------------------------------------
    def _check_metadata(self, layout: Layout) -> None:
        info, meta = layout.info, self.root / "meta" / "info.json"
        for quirk in layout.quirks:
            self.add("WARN", "metadata", meta, quirk)
        n = len(layout.episodes)
        if info.get("total_episodes") != n:
            self.add("WARN", "metadata", meta, f"total_episodes is {info.get('total_episodes')}, the episode "
                                               f"table lists {n}")
        if info.get("total_tasks") not in (None, len(layout.tasks)):
            self.add("WARN", "metadata", meta, f"total_tasks is {info.get('total_tasks')}, the task list has "
                                               f"{len(layout.tasks)}")
        if layout.version != "v3.0":
            chunks = len({ep.data_file.parent for ep in layout.episodes.values()})
            if info.get("total_chunks") != chunks:
                self.add("WARN", "metadata", meta, f"total_chunks is {info.get('total_chunks')}, the data files "
                                                   f"are in {chunks} chunk folder(s)")
        for split, value in (info.get("splits") or {}).items():
            try:
                start, stop = (int(x) for x in str(value).split(":"))
            except ValueError:
                self.add("WARN", "metadata", meta, f"split {split!r} = {value!r}; expected 'start:stop'")
                continue
            if stop > n or start < 0:
                self.add("WARN", "metadata", meta, f"split {split!r} = {value!r} reaches past the {n} episodes; "
                                                   f"pirecon ignores splits (use --dataset.val_episodes)")
        for key, ft in layout.features.items():
            video_fps = (ft.get("info") or ft.get("video_info") or {}).get("video.fps")
            if video_fps is not None and abs(float(video_fps) - layout.fps) > 1e-3:
                self.add("WARN", "metadata", meta, f"feature {key!r} says video.fps {video_fps}, info fps is {layout.fps}")

    def _check_files(self, layout: Layout) -> None:
        for ep in layout.episodes.values():
            if not ep.data_file.is_file():
                self.add("ERROR", "files", ep.data_file, f"data file of episode {ep.index} is missing")
        for path in layout.missing_files:
            self.add("ERROR", "files", path, "video file missing (other episodes of this camera have files)")
        known = {ep.data_file.resolve() for ep in layout.episodes.values()}
        known |= {v[0].resolve() for ep in layout.episodes.values() for v in ep.videos.values()}
        for folder, pattern in (("data", "*.parquet"), ("videos", "*.mp4")):
            for path in sorted((self.root / folder).rglob(pattern)):
                if path.resolve() not in known:
                    self.add("WARN", "files", path, "not referenced by the metadata (ignored)")

    # parquet data -----------------------------------------------------------------------------
    def _check_data(self, layout: Layout) -> dict[int, np.ndarray]:
        """Check every data file; returns each readable episode's timestamps."""
        timestamps: dict[int, np.ndarray] = {}
        by_file: dict[Path, list[int]] = {}
        for ep in layout.episodes.values():
            if ep.data_file.is_file():
                by_file.setdefault(ep.data_file, []).append(ep.index)
        wanted = [k for k, ft in layout.features.items() if ft.get("dtype") not in ("video",)]
        reported_missing: set[str] = set()
        for path, indices in by_file.items():
            try:
                names = parquet_columns(path)
                table = read_table(path, [c for c in names if c in wanted or c in DEFAULT_COLUMNS])
            except DatasetError as exc:
                self.add("ERROR", "files", path, str(exc))
                continue
            for key in wanted:
                if key not in names and key not in reported_missing and key != "frame_index":
                    reported_missing.add(key)
                    severity = "ERROR" if key in ("action", "observation.state", "timestamp") else "WARN"
                    self.add(severity, "columns", path, f"column {key!r} listed in info.json features is missing")
            extra = [c for c in names if c not in layout.features]
            if extra and "extra" not in reported_missing:
                reported_missing.add("extra")
                self.add("WARN", "columns", path, f"columns {extra} are not in info.json features (ignored)")
            if "frame_index" not in names and "frame_index" not in reported_missing:
                reported_missing.add("frame_index")
                self.add("WARN", "columns", path, "no frame_index column; pirecon derives it from row order")
            self._check_columns(layout, path, table)
            file_eps = (table.column("episode_index").to_numpy() if "episode_index" in names
                        else np.full(table.num_rows, indices[0]))
            for index in indices:
                rows = np.flatnonzero(file_eps == index)
                ts = table.column("timestamp").to_numpy()[rows] if "timestamp" in names else None
                frames = table.column("frame_index").to_numpy()[rows] if "frame_index" in names else None
                tasks = table.column("task_index").to_numpy()[rows] if "task_index" in names else None
                self._check_episode(layout, path, index, len(rows), ts, frames, tasks)
                if ts is not None and len(ts):
                    timestamps[index] = ts.astype(np.float64)
        return timestamps

    def _check_columns(self, layout: Layout, path: Path, table: pa.Table) -> None:
        for key in table.column_names:
            ft = layout.features.get(key, {})
            if ft.get("dtype") in ("image", "string", None) or key not in layout.features:
                continue
            try:
                values = column_vectors(table, key, path)
            except DatasetError as exc:
                self.add("ERROR", "columns", path, str(exc))
                continue
            shape = [int(s) for s in ft.get("shape", [])]
            expected = int(np.prod(shape)) if shape else values.shape[1]
            if values.shape[1] != expected:
                self.add("ERROR", "columns", path, f"column {key!r} has {values.shape[1]} values per row; "
                                                   f"info.json shape is {shape}")
            if np.issubdtype(values.dtype, np.floating):
                bad = ~np.isfinite(values)
                if bad.any():
                    row, dim = (int(x) for x in np.argwhere(bad)[0])
                    severity = "ERROR" if key in ("action", "observation.state", "timestamp") else "WARN"
                    self.add(severity, "values", path, f"column {key!r} holds {int(bad.sum())} NaN/inf values "
                                                       f"(first at row {row}, dimension {dim})")

    def _check_episode(self, layout: Layout, path: Path, index: int, rows: int, ts, frames, tasks) -> None:
        for problem in episode_problems(index, rows, layout.episodes[index].length, frames, tasks, layout.tasks):
            self.add("ERROR", "episodes", path, problem)
        if rows == 0:
            return
        if rows < self.min_length:
            self.add("WARN", "episodes", path, f"episode {index} has only {rows} frame(s) (min_length {self.min_length})")
        if ts is None or rows < 2:
            return
        period = 1.0 / layout.fps
        spacing = np.diff(ts.astype(np.float64))
        worst = float(np.abs(spacing - period).max())
        if worst > LEROBOT_TOLERANCE_S:
            severity = "ERROR" if worst > period / 2 else "WARN"
            self.add(severity, "timestamps", path, f"episode {index}: timestamp spacing deviates from 1/fps = "
                                                   f"{period:.4f} s by up to {worst:.4f} s")

    # videos -----------------------------------------------------------------------------------
    def _check_videos(self, layout: Layout, timestamps: dict[int, np.ndarray]) -> None:
        decoder = FrameDecoder(max_open=4, cache_mb=0)
        offsets: list[int] = []
        for key in layout.video_keys:
            shape = layout.features[key].get("shape", [])
            probed: dict[Path, object] = {}
            for ep in layout.episodes.values():
                path, start, end = ep.videos[key]
                ts = timestamps.get(ep.index)
                if not path.is_file() or ts is None:
                    continue
                if path not in probed:
                    try:
                        probed[path] = probe_video(path)
                    except DatasetError as exc:
                        self.add("ERROR", "videos", path, str(exc))
                        probed[path] = None
                    info = probed[path]
                    if info is not None and abs(info.fps - layout.fps) > 1e-3:
                        self.add("WARN", "videos", path, f"video frame rate {info.fps} differs from info fps {layout.fps}")
                    if info is not None and len(shape) == 3 and (info.height, info.width) != tuple(shape[:2]):
                        self.add("WARN", "videos", path, f"video is {info.height}x{info.width}, info.json shape "
                                                         f"{shape}")
                info = probed[path]
                if info is None:
                    continue
                self._check_episode_video(layout, key, ep.index, path, start, end, ts, info, decoder, offsets)
        decoder.close()
        if offsets:
            self.add("WARN", "timestamps", self.root / "data",
                     f"timestamps of {len(offsets)} episode(s) (e.g. {offsets[0]}) start one or more frames after "
                     f"their video; frames are matched by timestamp, and the last row, past the last frame, shows "
                     f"the last frame (LeRobot, with its {LEROBOT_TOLERANCE_S} s tolerance, fails on that row)")

    def _check_episode_video(self, layout, key, index, path, start, end, ts, info, decoder, offsets) -> None:
        period = 1.0 / layout.fps
        first, last = start + float(ts[0]), start + float(ts[-1])
        if end is None:  # one file per episode: its frames are start, start + 1/fps, ...
            frames = info.frames or int(round(info.duration * layout.fps))
            last_frame = info.start + (frames - 1) * period
            if frames != len(ts):
                self.add("WARN", "videos", path, f"{frames} frames for {len(ts)} rows of episode {index}")
            if first - info.start > period / 2 and index not in offsets:
                offsets.append(index)
        else:
            segment = float(end) - start
            last_frame = float(end) - period
            if abs(segment - len(ts) * period) > period / 2:
                self.add("WARN", "videos", path, f"episode {index} spans {segment:.3f} s of video for "
                                                 f"{len(ts)} rows ({len(ts) * period:.3f} s)")
        if last > last_frame + period + 1e-6:
            self.add("ERROR", "videos", path, f"episode {index}: last timestamp {last:.3f} s is past the video's "
                                              f"last frame ({last_frame:.3f} s)")
            return
        for t in (first, last):
            try:
                decoder.frame_at(path, t, period / 2, None if end is None else float(end))
            except DatasetError as exc:
                self.add("ERROR", "videos", path, f"camera {key}, episode {index}: {exc}")
                return

    def _check_stats(self, layout: Layout) -> None:
        meta = self.root / "meta"
        if not (meta / "stats.json").is_file() and not (meta / "episodes_stats.jsonl").is_file():
            self.add("WARN", "stats", meta, "no stats.json or episodes_stats.jsonl; run `pirecon stats` for "
                                            "normalisation statistics")


def format_table(findings: list[Finding]) -> str:
    """Findings as an aligned text table, errors first."""
    order = {"ERROR": 0, "WARN": 1, "OK": 2}
    rows = [("SEVERITY", "CHECK", "LOCATION", "DETAIL")]
    rows += [(f.severity, f.check, f.location, f.detail)
             for f in sorted(findings, key=lambda f: (order[f.severity], CHECKS.index(f.check)))]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join(f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]}" for r in rows)


def run(argv: list[str]) -> int:
    if wants_help(argv):
        print(format_help("doctor", "Check a LeRobot dataset folder and print a table of findings; exit 1 on errors.",
                          DoctorConfig), end="")
        return 0
    cfg = parse_flags(argv, DoctorConfig)
    findings = Doctor(dataset_root(cfg.dataset), cfg.min_length).run()
    print(format_table(findings))
    errors = sum(f.severity == "ERROR" for f in findings)
    warns = sum(f.severity == "WARN" for f in findings)
    print(f"\n{errors} error(s), {warns} warning(s)")
    return 1 if errors or (cfg.strict and warns) else 0
