"""Normalizer: formulas, round trips, stats files and the errors users see."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from pirecon.data.normalize import (
    Normalizer,
    default_norm_mode,
    load_norm_stats_json,
    normalizer_from_dataset,
    save_norm_stats_json,
    stats_from_lerobot,
)
from pirecon.errors import ConfigError, DatasetError, InputError


def _stats(dim_state=3, dim_action=2):
    rng = np.random.default_rng(0)

    def feature(d):
        mean = rng.normal(size=d).astype(np.float32)
        return {"mean": mean, "std": rng.uniform(0.5, 2.0, size=d).astype(np.float32),
                "q01": mean - 2.0, "q99": mean + 3.0, "min": mean - 4.0, "max": mean + 4.0}

    return {"state": feature(dim_state), "actions": feature(dim_action)}


@pytest.mark.parametrize("mode", ["mean_std", "quantile"])
def test_round_trip_numpy_and_torch(mode):
    norm = Normalizer(_stats(), mode)
    x = np.random.default_rng(1).normal(size=(5, 7, 2)).astype(np.float32)  # (B, H, D)
    back = norm.unnormalize_actions(norm.normalize_actions(x))
    np.testing.assert_allclose(back, x, atol=1e-5)
    xt = torch.from_numpy(x)
    yt = norm.normalize_actions(xt)
    assert isinstance(yt, torch.Tensor) and yt.dtype == torch.float32
    torch.testing.assert_close(norm.unnormalize_actions(yt), xt, atol=1e-5, rtol=0)


def test_formulas_match_the_reference():
    stats = {"state": {"mean": [1.0, 2.0], "std": [2.0, 0.0], "q01": [0.0, -1.0], "q99": [4.0, 1.0]}}
    x = np.array([3.0, 0.0], dtype=np.float32)
    np.testing.assert_allclose(Normalizer(stats, "mean_std").normalize_state(x),
                               [(3 - 1) / (2 + 1e-6), (0 - 2) / 1e-6], rtol=1e-6)
    np.testing.assert_allclose(Normalizer(stats, "quantile").normalize_state(x),
                               [(3 - 0) / (4 + 1e-6) * 2 - 1, (0 + 1) / (2 + 1e-6) * 2 - 1], rtol=1e-6, atol=1e-6)
    # q01 -> -1 and q99 -> +1 (up to the epsilon).
    q = Normalizer(stats, "quantile").normalize_state(np.array([0.0, 1.0], dtype=np.float32))
    np.testing.assert_allclose(q, [-1.0, 1.0], atol=1e-5)


def test_width_mismatch_names_key_and_both_sizes():
    norm = Normalizer(_stats(dim_action=2), "mean_std")
    with pytest.raises(InputError, match=r"'actions' have 2 dims .* data has 5"):
        norm.normalize_actions(np.zeros((4, 5), dtype=np.float32))
    with pytest.raises(InputError, match=r"'state' have 3 dims .* data has 1"):
        norm.normalize_state(torch.zeros(1))


def test_quantile_mode_without_quantiles_suggests_stats_command():
    stats = {"state": {"mean": [0.0], "std": [1.0]}, "actions": {"mean": [0.0], "std": [1.0]}}
    Normalizer(stats, "mean_std")  # fine
    with pytest.raises(ConfigError, match=r"q01/q99.*pirecon stats.*mean_std"):
        Normalizer(stats, "quantile")


def test_unknown_mode_and_missing_key():
    with pytest.raises(ConfigError, match="mean_std"):
        Normalizer(_stats(), "minmax")
    norm = Normalizer({"actions": _stats()["actions"]})
    with pytest.raises(ConfigError, match=r"no 'state' entry"):
        norm.normalize_state(np.zeros(3))


def test_select_keeps_chosen_dims():
    stats = _stats(dim_action=4)
    norm = Normalizer(stats, "quantile").select("actions", [3, 1])
    assert norm.dim("actions") == 2
    np.testing.assert_array_equal(norm.stats["actions"]["q01"], stats["actions"]["q01"][[3, 1]])
    with pytest.raises(ConfigError, match=r"4 dims.*\[7\]"):
        Normalizer(stats).select("actions", [0, 7])


def test_json_round_trip_in_openpi_layout(tmp_path):
    stats = _stats()
    path = save_norm_stats_json(stats, tmp_path / "assets" / "robot" / "norm_stats.json")
    raw = json.loads(path.read_text())
    assert set(raw) == {"norm_stats"} and set(raw["norm_stats"]) == {"state", "actions"}
    loaded = load_norm_stats_json(path)
    for key in stats:
        for name in stats[key]:
            np.testing.assert_allclose(loaded[key][name], stats[key][name])
            assert loaded[key][name].dtype == np.float32
    # A Normalizer can be saved directly.
    save_norm_stats_json(Normalizer(stats), tmp_path / "n.json")
    assert load_norm_stats_json(tmp_path / "n.json").keys() == stats.keys()


def test_json_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="missing.json: norm stats file not found"):
        load_norm_stats_json(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="bad.json: not valid JSON"):
        load_norm_stats_json(bad)
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"norm_stats": [1, 2]}))
    with pytest.raises(ConfigError, match="wrong.json"):
        load_norm_stats_json(wrong)


def test_lerobot_stats_conversion_and_dataset_helper():
    lerobot = {
        "observation.state": {"mean": np.zeros(3), "std": np.ones(3), "q01": -np.ones(3), "q99": np.ones(3),
                              "count": np.array([10])},
        "action": {"mean": np.zeros(2), "std": np.ones(2), "min": -np.ones(2), "max": np.ones(2)},
        "observation.images.top": {"mean": np.zeros((3, 1, 1))},
    }
    out = stats_from_lerobot(lerobot)
    assert set(out) == {"state", "actions"}
    assert set(out["state"]) == {"mean", "std", "q01", "q99"}
    assert set(out["actions"]) == {"mean", "std", "min", "max"}

    norm = normalizer_from_dataset(SimpleNamespace(stats=lerobot), "pi0")
    assert norm.mode == "mean_std" and norm.dim("state") == 3
    with pytest.raises(ConfigError, match="pirecon stats"):  # pi05 default is quantile; actions lack q01
        normalizer_from_dataset(SimpleNamespace(stats=lerobot), "pi05")
    with pytest.raises(DatasetError, match="pirecon stats"):
        normalizer_from_dataset(SimpleNamespace(stats=None, root="/data/ds"), "pi0")


def test_default_modes():
    assert default_norm_mode("pi0") == "mean_std"
    assert default_norm_mode("pi05") == "quantile"
