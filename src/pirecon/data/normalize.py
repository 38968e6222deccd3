"""Normalisation statistics for state and actions, in openpi's naming.

Stats are a dict ``{"state": {"mean", "std", "q01", "q99", ...}, "actions": {...}}`` of 1-D float
arrays (one value per feature dim), the layout of openpi's ``norm_stats.json``. Two modes
(REFERENCE.md §2):

- ``"mean_std"`` (Pi0 default):  ``(x - mean) / (std + 1e-6)``
- ``"quantile"`` (Pi0.5 default): ``(x - q01) / (q99 - q01 + 1e-6) * 2 - 1``

Unlike openpi, which silently cuts or passes through dims when the stats and the data differ in
width, a width mismatch is an error here: it almost always means the stats belong to another
dataset or the action/state dim selection was not applied to them.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from pirecon.configs.parse import load_json
from pirecon.errors import ConfigError, DatasetError, InputError

EPS = 1e-6
MODES = ("mean_std", "quantile")
# Which statistics each mode reads.
_MODE_FIELDS = {"mean_std": ("mean", "std"), "quantile": ("q01", "q99")}
# LeRobot feature names -> openpi names.
LEROBOT_KEYS = {"observation.state": "state", "action": "actions"}
_STATS_FEATURES = {v: k for k, v in LEROBOT_KEYS.items()}

Stats = dict[str, dict[str, np.ndarray]]
log = logging.getLogger(__name__)


def default_norm_mode(policy_type: str) -> str:
    """The reference default: mean/std for Pi0, quantiles for Pi0.5."""
    return "quantile" if policy_type == "pi05" else "mean_std"


class Normalizer:
    """Normalise state / actions and map model actions back to robot units.

    Works on numpy arrays and torch tensors alike (last axis = feature dims) and returns the
    same type it was given. `stats` follows openpi naming (see the module docstring).
    """

    def __init__(self, stats: Mapping[str, Mapping[str, Any]], mode: str = "mean_std"):
        if mode == "quantiles":
            mode = "quantile"
        if mode not in MODES:
            raise ConfigError(f"normalisation mode {mode!r}: expected one of {list(MODES)}")
        self.mode = mode
        self.stats: Stats = {}
        for key, fields in stats.items():
            if not isinstance(fields, Mapping):
                continue  # e.g. a "count" entry next to the features
            self.stats[key] = {name: np.asarray(value, dtype=np.float32).reshape(-1)
                               for name, value in fields.items()
                               if isinstance(value, (list, tuple, np.ndarray, torch.Tensor))}
        for key, fields in self.stats.items():
            missing = [name for name in _MODE_FIELDS[mode] if name not in fields]
            if missing:
                hint = ("compute them with `pirecon stats` or use mean_std normalisation"
                        if mode == "quantile" else "recompute the stats with `pirecon stats`")
                raise ConfigError(
                    f"norm stats {key!r} have no {'/'.join(missing)} (found {sorted(fields)}), which "
                    f"{mode} normalisation needs: {hint}")
            sizes = {name: fields[name].shape[0] for name in _MODE_FIELDS[mode]}
            if len(set(sizes.values())) > 1:
                raise ConfigError(f"norm stats {key!r} have arrays of different lengths: {sizes}")

    # Queries ---------------------------------------------------------------------------------
    def dim(self, key: str) -> int | None:
        """Number of feature dims the stats of `key` describe (None if there are none)."""
        if key not in self.stats:
            return None
        return int(self.stats[key][_MODE_FIELDS[self.mode][0]].shape[0])

    def select(self, key: str, dims: Sequence[int]) -> "Normalizer":
        """A copy whose stats for `key` keep only `dims` (to match a dim selection of the data)."""
        width = self.dim(key)
        if width is None:
            raise ConfigError(f"norm stats have no {key!r} entry to select dims {list(dims)} from")
        bad = [d for d in dims if not -width <= d < width]
        if bad:
            raise ConfigError(
                f"norm stats {key!r} have {width} dims; selected dims {bad} are out of range 0..{width - 1}")
        stats = {k: dict(v) for k, v in self.stats.items()}
        stats[key] = {name: value[list(dims)] if value.shape[0] == width else value
                      for name, value in stats[key].items()}
        return Normalizer(stats, self.mode)

    # Transforms ------------------------------------------------------------------------------
    def normalize(self, key: str, x):
        """x: (..., D) in data units -> (..., D) normalised with the stats of `key`."""
        a, b = self._fields(key, x)
        if self.mode == "quantile":
            return (x - a) / (b - a + EPS) * 2.0 - 1.0
        return (x - a) / (b + EPS)

    def unnormalize(self, key: str, x):
        """Inverse of `normalize`: (..., D) normalised -> (..., D) in data units."""
        a, b = self._fields(key, x)
        if self.mode == "quantile":
            return (x + 1.0) / 2.0 * (b - a + EPS) + a
        return x * (b + EPS) + a

    def normalize_state(self, x):
        return self.normalize("state", x)

    def normalize_actions(self, x):
        return self.normalize("actions", x)

    def unnormalize_actions(self, x):
        return self.unnormalize("actions", x)

    def _fields(self, key: str, x):
        if key not in self.stats:
            raise ConfigError(
                f"norm stats have no {key!r} entry (found {sorted(self.stats)}); compute them with "
                f"`pirecon stats` or pass a norm_stats.json that has it")
        first, second = _MODE_FIELDS[self.mode]
        a, b = self.stats[key][first], self.stats[key][second]
        width = x.shape[-1] if x.ndim else 1
        if a.shape[0] != width:
            raise InputError(
                f"norm stats {key!r} have {a.shape[0]} dims ({first}) but the data has {width}; the stats "
                f"belong to other data, or a --dataset.action_dims / --dataset.state_dims selection was "
                f"not applied to them")
        if isinstance(x, torch.Tensor):
            dtype = x.dtype if x.is_floating_point() else torch.float32
            return (torch.as_tensor(a, dtype=dtype, device=x.device),
                    torch.as_tensor(b, dtype=dtype, device=x.device))
        return a, b

    def __repr__(self) -> str:
        dims = {key: self.dim(key) for key in self.stats}
        return f"Normalizer(mode={self.mode!r}, dims={dims})"


# ---------------------------------------------------------------------------------------------
# Conversions and files


def stats_from_lerobot(dataset_stats: Mapping[str, Mapping[str, Any]],
                       state_key: str = "observation.state", action_key: str = "action") -> Stats:
    """LeRobot dataset stats (`observation.state` / `action`) -> openpi naming (`state` / `actions`).

    Every array-valued field is kept (mean, std, min, max, q01, q99, ...); features other than the
    two named ones are dropped. A missing feature is simply absent from the result.
    """
    out: Stats = {}
    for source, target in ((state_key, "state"), (action_key, "actions")):
        fields = dataset_stats.get(source)
        if fields is None:
            continue
        out[target] = {name: np.asarray(value, dtype=np.float32).reshape(-1)
                       for name, value in fields.items()
                       if name != "count" and np.asarray(value).size > 0}
    return out


def normalizer_from_dataset(dataset, policy_type: str = "pi0", mode: str | None = None) -> Normalizer:
    """A Normalizer from a dataset object's `.stats` (LeRobot naming); mode defaults per policy."""
    stats = getattr(dataset, "stats", None)
    if not stats:
        raise DatasetError(
            f"{getattr(dataset, 'root', 'the dataset')}: has no normalisation stats (meta/stats.json); "
            f"compute them with `pirecon stats` or pass a norm_stats.json")
    converted = stats_from_lerobot(stats)
    if "actions" not in converted:
        raise DatasetError(f"dataset stats have no 'action' entry (found {sorted(stats)}); run `pirecon stats`")
    return Normalizer(converted, mode or default_norm_mode(policy_type))


def dataset_widths(dataset) -> dict[str, int | None]:
    """{"state": d_s, "actions": d_a} of a dataset, from its features (else its statistics)."""
    features = getattr(dataset, "features", None) or {}
    stats = getattr(dataset, "stats", None) or {}
    out = {}
    for key, name in _STATS_FEATURES.items():
        feature = features.get(name)
        shape = feature.get("shape") if isinstance(feature, dict) else None
        if shape:
            out[key] = int(np.prod(shape))
        elif name in stats and "mean" in stats[name]:
            out[key] = int(np.asarray(stats[name]["mean"]).size)
        else:
            out[key] = None
    return out


def fit_to_dataset(normalizer: Normalizer, dataset, padded: Mapping[str, int], source: str,
                   owner: str) -> Normalizer:
    """Statistics from elsewhere (`source`, e.g. a pretrained folder's files; `owner` names the flag
    that brought them) checked against a dataset: same keys and widths, or one clear error.

    Statistics as wide as the model's padded width whose extra dims are all zero (openpi pads with
    zeros before computing them) are cut to the data's width.
    `padded`: {"state": max_state_dim, "actions": max_action_dim}."""
    widths = dataset_widths(dataset)
    root = getattr(dataset, "root", "the dataset")
    problems = []
    for key, data_width in widths.items():
        if data_width is None:
            continue
        width = normalizer.dim(key)
        if width is None:
            problems.append(f"no {_STATS_FEATURES[key]!r} statistics, but the dataset has {_STATS_FEATURES[key]} "
                            f"({data_width} dims)")
        elif width != data_width:
            if width == padded[key] and data_width < width and _zero_beyond(normalizer.stats[key], data_width):
                log.info("%s: %s statistics are padded to %d dims; using the first %d for the data",
                         source, key, width, data_width)
                normalizer = normalizer.select(key, list(range(data_width)))
            else:
                problems.append(f"{_STATS_FEATURES[key]} statistics of {width} dims, but the dataset's "
                                f"{_STATS_FEATURES[key]} has {data_width}")
    if problems:
        raise ConfigError(
            f"{owner}: its statistics ({source}) do not fit the dataset {root}: " + "; ".join(problems)
            + ". Pass --policy.use_dataset_stats=true to normalise with the dataset's own statistics "
              "(meta/stats.json) instead")
    return normalizer


def _zero_beyond(fields: dict[str, np.ndarray], width: int) -> bool:
    return all(not np.any(value[width:]) for value in fields.values())


def load_norm_stats_json(path: str | Path) -> Stats:
    """Read openpi's `norm_stats.json` -> {"state": {...}, "actions": {...}} of float32 arrays.

    The file is `{"norm_stats": {"state": {"mean", "std", "q01", "q99"}, "actions": {...}}}`; a
    file without the outer `norm_stats` key is accepted too.
    """
    path = Path(path)
    data = load_json(path, ConfigError, missing="norm stats file not found")
    if "norm_stats" in data:
        data = data["norm_stats"]
    if not isinstance(data, dict) or not any(isinstance(v, dict) for v in data.values()):
        raise ConfigError(f"{path}: expected {{\"norm_stats\": {{\"state\": {{...}}, \"actions\": {{...}}}}}}")
    out: Stats = {}
    for key, fields in data.items():
        if not isinstance(fields, dict):
            continue
        try:
            out[key] = {name: np.asarray(value, dtype=np.float32).reshape(-1)
                        for name, value in fields.items() if value is not None}
        except (TypeError, ValueError):
            raise ConfigError(f"{path}: norm_stats.{key} holds values that are not lists of numbers") from None
    return out


def save_norm_stats_json(stats: Mapping[str, Mapping[str, Any]] | Normalizer, path: str | Path) -> Path:
    """Write stats (or a Normalizer's stats) as openpi's `norm_stats.json`; returns the path."""
    if isinstance(stats, Normalizer):
        stats = stats.stats
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {key: {name: np.asarray(value, dtype=np.float64).reshape(-1).tolist()
                  for name, value in fields.items()}
            for key, fields in stats.items()}
    path.write_text(json.dumps({"norm_stats": body}, indent=2))
    return path
