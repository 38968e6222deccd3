"""Dataset statistics: LeRobot's stats files, streaming norm stats, and `pirecon stats`.

- `load_dataset_stats(layout)`: LeRobot stats of a dataset folder, from meta/stats.json (v2.0,
  v3.0) or aggregated from meta/episodes_stats.jsonl (v2.1), as numpy arrays.
- `compute_stats(root)`: mean, std, min, max, q01, q99 of `observation.state` and `action`,
  streamed over the parquet files in three passes (moments and range; per-dimension
  histograms; the exact values of the few histogram bins that hold the quantiles), so memory
  stays bounded and the quantiles equal numpy's `np.quantile` (linear interpolation).
- `pirecon stats --dataset.root=DIR [--output=FILE]` writes openpi's norm_stats.json format,
  `{"norm_stats": {"state": {"mean": [...], ...}, "actions": {...}}}`, over the selected
  episodes minus the held-out ones (`--dataset.episodes`, `--dataset.val_episodes`). It only
  reads the dataset.
- `load_norm_stats(path)`: such a file as {"state": {name: array}, "actions": {...}}.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pirecon.configs.parse import format_help, parse_flags, wants_help
from pirecon.configs.data import StatsConfig
from pirecon.data.layout import (Layout, column_vectors, dataset_root, parquet_columns, read_json, read_jsonl,
                                 select_episodes)
from pirecon.errors import DatasetError

QUANTILES = {"q01": 0.01, "q99": 0.99}
NORM_KEYS = {"observation.state": "state", "action": "actions"}  # LeRobot name -> openpi name
HISTOGRAM_BINS = 4096
EXACT_VALUES_CAP = 4_000_000  # values kept in pass 3; bins beyond it are interpolated


# ---------------------------------------------------------------------------------------------
# LeRobot stats files


def aggregate_stats(per_episode: list[dict]) -> dict:
    """Merge LeRobot per-episode stats {feature: {mean, std, min, max, count, q..}} into one.

    Means and variances are combined exactly (weighted by count); quantiles, like LeRobot does,
    as the count-weighted mean of the episodes' quantiles.
    """
    merged: dict = {}
    features = {key for stats in per_episode for key in stats}
    for key in sorted(features):
        parts = [stats[key] for stats in per_episode if key in stats]
        counts = np.array([float(np.asarray(p.get("count", [1])).reshape(-1)[0]) for p in parts])
        weights = counts.reshape((-1,) + (1,) * np.asarray(parts[0]["mean"]).ndim) / counts.sum()
        means = np.stack([np.asarray(p["mean"], dtype=np.float64) for p in parts])
        mean = (weights * means).sum(0)
        out = {"mean": mean, "count": np.array([int(counts.sum())])}
        if all("std" in p for p in parts):
            variances = np.stack([np.asarray(p["std"], dtype=np.float64) ** 2 for p in parts])
            out["std"] = np.sqrt((weights * (variances + (means - mean) ** 2)).sum(0))
        if all("min" in p for p in parts):
            out["min"] = np.stack([np.asarray(p["min"]) for p in parts]).min(0)
        if all("max" in p for p in parts):
            out["max"] = np.stack([np.asarray(p["max"]) for p in parts]).max(0)
        for q in {name for p in parts for name in p if name.startswith("q")}:
            if all(q in p for p in parts):
                out[q] = (weights * np.stack([np.asarray(p[q], dtype=np.float64) for p in parts])).sum(0)
        merged[key] = out
    return merged


def load_dataset_stats(layout: Layout) -> dict | None:
    """{feature: {mean, std, min, max, q01?, q99?, count}} as numpy arrays, or None if absent."""
    meta = layout.root / "meta"
    if (meta / "stats.json").is_file():
        raw = read_json(meta / "stats.json")
        total = int(layout.info.get("total_frames") or 0)
        stats = {}
        for key, fields in raw.items():
            if not isinstance(fields, dict):
                raise DatasetError(f"{meta / 'stats.json'}: entry {key!r} should map stat names to values")
            stats[key] = {name: np.asarray(value) for name, value in fields.items()}
            stats[key].setdefault("count", np.array([total]))
        return stats
    if (meta / "episodes_stats.jsonl").is_file():
        rows = read_jsonl(meta / "episodes_stats.jsonl")
        return aggregate_stats([row.get("stats", {}) for row in rows]) if rows else None
    return None


# ---------------------------------------------------------------------------------------------
# Streaming norm stats


def _batches(layout: Layout, episodes: list[int]):
    """Yield (path, {column: (rows, D) float64}) for the selected episodes, one record batch at a time."""
    wanted = set(episodes)
    files: dict[Path, None] = dict.fromkeys(layout.episodes[e].data_file for e in episodes)
    for path in files:
        names = parquet_columns(path)
        columns = [c for c in NORM_KEYS if c in names]
        if "action" not in columns:
            raise DatasetError(f"{path}: missing column 'action'")
        filter_rows = layout.version == "v3.0" and "episode_index" in names
        try:
            reader = pq.ParquetFile(path).iter_batches(
                batch_size=65536, columns=columns + (["episode_index"] if filter_rows else []))
            for batch in reader:
                table = pa.Table.from_batches([batch])
                keep = None
                if filter_rows:
                    keep = np.isin(table.column("episode_index").to_numpy(), list(wanted))
                out = {}
                for column in columns:
                    values = column_vectors(table, column, path).astype(np.float64)
                    values = values[keep] if keep is not None else values
                    if not np.isfinite(values).all():
                        raise DatasetError(f"{path}: column {column!r} holds NaN or inf; expected finite numbers")
                    out[column] = values
                yield path, out
        except (pa.ArrowException, OSError) as exc:
            raise DatasetError(f"{path}: cannot read parquet file ({exc})") from None


class _Moments:
    """Count, mean, M2 (Chan et al. merge), min and max per dimension."""

    def __init__(self):
        self.n, self.mean, self.m2, self.min, self.max = 0, None, None, None, None

    def add(self, x: np.ndarray) -> None:  # x: (rows, D)
        if len(x) == 0:
            return
        n, mean = len(x), x.mean(0)
        m2 = ((x - mean) ** 2).sum(0)
        if self.mean is None:
            self.n, self.mean, self.m2, self.min, self.max = n, mean, m2, x.min(0), x.max(0)
            return
        total = self.n + n
        delta = mean - self.mean
        self.m2 = self.m2 + m2 + delta**2 * self.n * n / total
        self.mean = self.mean + delta * n / total
        self.n = total
        self.min, self.max = np.minimum(self.min, x.min(0)), np.maximum(self.max, x.max(0))


def _bins(x: np.ndarray, low: np.ndarray, width: np.ndarray) -> np.ndarray:
    """Histogram bin of every value: (rows, D) -> (rows, D) ints in [0, HISTOGRAM_BINS)."""
    return np.clip(((x - low) / np.where(width > 0, width, 1.0)).astype(np.int64), 0, HISTOGRAM_BINS - 1)


def compute_stats(root: str | Path, episodes: list[int] | None = None) -> dict:
    """{"state": {...}, "actions": {...}} with mean, std, min, max, q01, q99 as (D,) float arrays."""
    layout = Layout(root)
    chosen = select_episodes(layout, episodes)
    if not chosen:
        raise DatasetError(f"{layout.root}: no episodes to compute statistics over")

    moments: dict[str, _Moments] = {}
    for _, batch in _batches(layout, chosen):  # pass 1: moments and range
        for column, x in batch.items():
            moments.setdefault(column, _Moments()).add(x)
    low = {c: m.min for c, m in moments.items()}
    width = {c: (m.max - m.min) / HISTOGRAM_BINS for c, m in moments.items()}  # 0 for constant dims

    hist = {c: np.zeros((len(m.mean), HISTOGRAM_BINS), dtype=np.int64) for c, m in moments.items()}
    for _, batch in _batches(layout, chosen):  # pass 2: per-dimension histograms
        for column, x in batch.items():
            dims = x.shape[1]
            flat = _bins(x, low[column], width[column]) + np.arange(dims) * HISTOGRAM_BINS
            hist[column] += np.bincount(flat.ravel(), minlength=dims * HISTOGRAM_BINS).reshape(dims, -1)

    # Pass 3: the exact values inside the few bins that hold the ranks numpy interpolates between
    # (constant dims need none; the smallest bins first while under EXACT_VALUES_CAP values).
    candidates = sorted((int(hist[c][d, b]), c, d, b) for c in moments
                        for d, b in _rank_bins(hist[c], moments[c].n) if width[c][d] > 0)
    exact: dict[str, dict[tuple[int, int], list]] = {c: {} for c in moments}
    budget = EXACT_VALUES_CAP
    for count, c, d, b in candidates:
        if count <= budget:
            exact[c][(d, b)] = []
            budget -= count
    if any(exact.values()):
        for _, batch in _batches(layout, chosen):
            for column, x in batch.items():
                bins = _bins(x, low[column], width[column])
                for d, b in exact[column]:
                    exact[column][(d, b)].append(x[bins[:, d] == b, d])

    out = {}
    for column, m in moments.items():
        stats = {"mean": m.mean, "std": np.sqrt(m.m2 / m.n), "min": m.min, "max": m.max}
        for name, p in QUANTILES.items():
            stats[name] = _quantile(p, m.n, hist[column], low[column], width[column], exact[column])
        out[NORM_KEYS[column]] = stats
    return out


def _ranks(p: float, n: int) -> tuple[int, int, float]:
    """numpy's linear quantile: the value at rank lo plus frac times the step to rank hi."""
    rank = p * (n - 1)
    lo = int(np.floor(rank))
    return lo, min(lo + 1, n - 1), rank - lo


def _bin_of_rank(cum: np.ndarray, r: int) -> int:
    """Histogram bin (of one dim's cumulative counts) that holds the r-th smallest value."""
    return int((cum <= r).sum())


def _rank_bins(hist: np.ndarray, n: int) -> set[tuple[int, int]]:
    """(dim, bin) pairs holding the ranks every quantile needs. hist: (D, B)."""
    cum = np.cumsum(hist, axis=1)
    return {(d, _bin_of_rank(cum[d], r)) for p in QUANTILES.values() for r in _ranks(p, n)[:2]
            for d in range(hist.shape[0])}


def _quantile(p: float, n: int, hist: np.ndarray, low: np.ndarray, width: np.ndarray, exact: dict) -> np.ndarray:
    """(D,) quantile per dimension: exact from the kept bin values, else interpolated in the bin."""
    cum = np.cumsum(hist, axis=1)
    lo, hi, frac = _ranks(p, n)
    result = np.empty(hist.shape[0])
    for d in range(hist.shape[0]):
        def value_at(r: int) -> float:
            b = _bin_of_rank(cum[d], r)
            before = int(cum[d, b - 1]) if b else 0
            if (d, b) in exact:
                return float(np.sort(np.concatenate(exact[(d, b)]))[r - before])
            inside = (r - before + 0.5) / max(int(hist[d, b]), 1)  # values spread evenly in the bin
            return float(low[d] + (b + inside) * width[d])
        a = value_at(lo)
        result[d] = a + frac * (value_at(hi) - a) if frac else a
    return result


def norm_stats_json(stats: dict) -> dict:
    """openpi's norm_stats.json content from `compute_stats` output."""
    return {"norm_stats": {key: {name: np.asarray(value, dtype=np.float64).tolist() for name, value in fields.items()}
                           for key, fields in stats.items()}}


def load_norm_stats(path: str | Path) -> dict:
    """Read an openpi norm_stats.json: {"state": {name: array}, "actions": {...}}."""
    path = Path(path)
    data = read_json(path)
    data = data.get("norm_stats", data) if isinstance(data, dict) else data
    if not isinstance(data, dict) or not data:
        raise DatasetError(f"{path}: expected {{\"norm_stats\": {{\"state\": {{...}}, \"actions\": {{...}}}}}}")
    out = {}
    for key, fields in data.items():
        if not isinstance(fields, dict):
            raise DatasetError(f"{path}: norm_stats.{key} should map stat names (mean, std, q01, q99) to lists")
        out[key] = {name: np.asarray(value, dtype=np.float64) for name, value in fields.items()}
    return out


# ---------------------------------------------------------------------------------------------
# Command line


def run(argv: list[str]) -> int:
    if wants_help(argv):
        print(format_help("stats", "Normalisation statistics of a LeRobot dataset, as openpi's norm_stats.json.",
                          StatsConfig), end="")
        return 0
    cfg = parse_flags(argv, StatsConfig)
    root = dataset_root(cfg.dataset)
    # Held-out episodes (--dataset.val_episodes) stay out of the statistics, as out of training.
    episodes = select_episodes(Layout(root), cfg.dataset.episodes, "train", cfg.dataset.val_episodes)
    stats = compute_stats(root, episodes)
    text = json.dumps(norm_stats_json(stats), indent=2)
    if cfg.output:
        output = Path(cfg.output)
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text + "\n")
        print(f"wrote {output}", file=sys.stderr)
    else:
        print(text)
    return 0
