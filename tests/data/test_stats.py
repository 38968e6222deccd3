"""Streaming norm stats against numpy, the `pirecon stats` command, LeRobot stats files."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from pirecon.cli import main
from pirecon.data import stats as stats_module
from pirecon.data.layout import Layout, column_vectors, read_table
from pirecon.data.stats import aggregate_stats, compute_stats, load_dataset_stats, load_norm_stats
from pirecon.data.writer import array_stats, demo_action, demo_state, write_demo_dataset
from pirecon.errors import DatasetError


def all_rows(root, column: str) -> np.ndarray:
    layout = Layout(root)
    files = dict.fromkeys(ep.data_file for ep in layout.episodes.values())
    return np.concatenate([column_vectors(read_table(f), column, f) for f in files]).astype(np.float64)


def folder_hash(root) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode() + path.read_bytes())
    return digest.hexdigest()


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("exact", [True, False], ids=["exact-bins", "histogram-only"])
def test_stats_match_numpy_on_fixture(gr00t_fixture, monkeypatch, exact):
    if not exact:  # force the interpolate-within-bin fallback: still well within 1 % of the range
        monkeypatch.setattr(stats_module, "EXACT_VALUES_CAP", 0)
    stats = compute_stats(gr00t_fixture)
    for column, key in (("observation.state", "state"), ("action", "actions")):
        x = all_rows(gr00t_fixture, column)
        span = np.maximum(x.max(0) - x.min(0), 1e-12)
        np.testing.assert_allclose(stats[key]["mean"], x.mean(0), rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(stats[key]["std"], x.std(0), rtol=1e-9, atol=1e-12)
        np.testing.assert_array_equal(stats[key]["min"], x.min(0))
        np.testing.assert_array_equal(stats[key]["max"], x.max(0))
        for name, q in (("q01", 0.01), ("q99", 0.99)):
            error = np.abs(stats[key][name] - np.quantile(x, q, axis=0)) / span
            assert error.max() < (1e-12 if exact else 1e-3), (column, name, error.max())


def test_episode_subset_of_a_v3_file(tmp_path):
    root = write_demo_dataset(tmp_path / "ds", "v3.0", (12, 15, 10), cameras=())
    stats = compute_stats(root, episodes=[1])
    actions = np.stack([demo_action(1, i) for i in range(15)]).astype(np.float64)
    np.testing.assert_allclose(stats["actions"]["mean"], actions.mean(0))
    np.testing.assert_allclose(stats["actions"]["q01"], np.quantile(actions, 0.01, axis=0))
    np.testing.assert_allclose(stats["state"]["max"], demo_state(1, 14))
    with pytest.raises(DatasetError, match=r"episode\(s\) \[9\]"):
        compute_stats(root, episodes=[9])


@pytest.mark.filterwarnings("ignore")
def test_stats_command_writes_openpi_format_and_leaves_dataset_untouched(gr00t_fixture, tmp_path, capsys):
    before = folder_hash(gr00t_fixture)
    output = tmp_path / "assets" / "norm_stats.json"
    assert main(["stats", f"--dataset.root={gr00t_fixture}", "--output", str(output)]) == 0
    assert folder_hash(gr00t_fixture) == before
    data = json.loads(output.read_text())
    assert set(data) == {"norm_stats"} and set(data["norm_stats"]) == {"state", "actions"}
    for fields in data["norm_stats"].values():
        assert set(fields) == {"mean", "std", "q01", "q99", "min", "max"}
        assert all(isinstance(v, list) and len(v) == 44 for v in fields.values())
    loaded = load_norm_stats(output)
    assert loaded["actions"]["q99"].shape == (44,) and loaded["state"]["mean"].dtype == np.float64

    capsys.readouterr()
    assert main(["stats", f"--dataset.root={gr00t_fixture}", "--dataset.episodes=[0,1]",
                 "--dataset.val_episodes=1"]) == 0  # the held-out episode 1 is left out
    printed = json.loads(capsys.readouterr().out)
    x = all_rows(gr00t_fixture, "action")[:416]  # episode 0
    np.testing.assert_allclose(printed["norm_stats"]["actions"]["mean"], x.mean(0), rtol=1e-9, atol=1e-12)


def test_stats_command_help_and_errors(tmp_path, capsys):
    assert main(["stats", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--dataset.root" in out and "--output" in out
    assert main(["stats", f"--dataset.root={tmp_path}"]) == 2
    assert "meta/info.json: missing" in capsys.readouterr().err
    bad = tmp_path / "norm.json"
    bad.write_text(json.dumps({"norm_stats": {"state": [1, 2]}}))
    with pytest.raises(DatasetError, match="norm_stats.state should map stat names"):
        load_norm_stats(bad)


def test_aggregated_episode_stats_equal_exact_moments():
    rng = np.random.default_rng(0)
    parts = [rng.normal(i, i + 1, size=(n, 3)) for i, n in enumerate((50, 80, 20))]
    merged = aggregate_stats([{"x": array_stats(p)} for p in parts])["x"]
    x = np.concatenate(parts)
    np.testing.assert_allclose(merged["mean"], x.mean(0))
    np.testing.assert_allclose(merged["std"], x.std(0))
    np.testing.assert_array_equal(merged["min"], x.min(0))
    assert merged["count"].tolist() == [150]


def test_v21_stats_come_from_episodes_stats(tmp_path):
    root = write_demo_dataset(tmp_path / "ds", "v2.1", (5, 9), cameras=("top",))
    (root / "meta" / "stats.json").unlink()  # LeRobot v2.1 keeps only meta/episodes_stats.jsonl
    stats = load_dataset_stats(Layout(root))
    states = np.stack([demo_state(e, i) for e, n in enumerate((5, 9)) for i in range(n)]).astype(np.float64)
    np.testing.assert_allclose(stats["observation.state"]["mean"], states.mean(0))
    np.testing.assert_allclose(stats["observation.state"]["std"], states.std(0))
    assert stats["observation.images.top"]["mean"].shape == (3, 1, 1)
