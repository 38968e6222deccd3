"""`pirecon demo` in miniature: the README's main command must keep working end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pirecon.demo import run
from pirecon.errors import ConfigError

SMALL = ["--episodes=3", "--steps=2", "--batch_size=4", "--eval_episodes=2", "--image_size=32",
         "--chunk_size=4", "--n_action_steps=2"]


def test_demo_compares_recon_and_plain_side_by_side(tmp_path, capsys):
    out = tmp_path / "demo"
    assert run(SMALL + [f"--output_dir={out}", "--recon.compare=true"]) == 0
    results = json.loads((out / "results.json").read_text())
    names = ["Pi0 + recon (lambda=0.5)", "Pi0 (no recon)", "scripted expert", "random policy"]
    assert [n for n in results if n != "total_seconds"] == names
    assert results["scripted expert"]["success_rate"] == 1.0
    assert all(results[n]["episodes"] == 2 for n in names)
    recon, plain = results[names[0]], results[names[1]]
    assert recon["recon_weight"] == 0.5 and plain["recon_weight"] == 0.0
    # The reconstruction run logged a recon loss; the plain one has no head at all.
    recon_log = [json.loads(line) for line in open(recon["log"])]
    plain_log = [json.loads(line) for line in open(plain["log"])]
    assert all("recon_loss" in row for row in recon_log if "loss" in row)
    assert not any("recon_loss" in row for row in plain_log)
    printed = capsys.readouterr().out
    table = printed[printed.index("[4/4] results"):]
    assert all(name in table for name in names) and "95% interval" in table
    # The data carries the simulator settings, so `pirecon eval` rebuilds the same world.
    sim = json.loads((out / "data" / "meta" / "pirecon_sim.json").read_text())
    assert sim["cells"] == "corners" and sim["image_size"] == 32 and sim["num_blocks"] == 1


def test_demo_weight_zero_trains_plain_pi0_and_reruns_into_its_own_folder(tmp_path):
    out = tmp_path / "demo"
    assert run(SMALL + [f"--output_dir={out}", "--recon.weight=0", "--augment=openpi"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert "Pi0 (no recon)" in results and not any("recon (" in n for n in results)
    run_dir = Path(results["Pi0 (no recon)"]["log"]).parent
    transforms = json.loads((run_dir / "train_config.json").read_text())["dataset"]["image_transforms"]
    assert transforms["enable"] is True and transforms["recipe"] == "openpi"
    assert run(SMALL + [f"--output_dir={out}", "--recon.weight=0"]) == 0  # a previous demo folder is replaced


def test_demo_refuses_a_foreign_non_empty_folder_and_bad_flags(tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="not empty and not a previous demo's folder"):
        run(SMALL + [f"--output_dir={tmp_path}"])
    assert (tmp_path / "mine.txt").read_text() == "keep me"
    with pytest.raises(ConfigError, match="--recon.weight=-1"):
        run(SMALL + [f"--output_dir={tmp_path / 'x'}", "--recon.weight=-1"])
    with pytest.raises(ConfigError, match="num_blocks=4"):
        run(SMALL + [f"--output_dir={tmp_path / 'x'}", "--num_blocks=4"])
    assert not (tmp_path / "x").exists()
    with pytest.raises(ConfigError, match="--augment='crop'"):
        run(SMALL + [f"--output_dir={tmp_path / 'x'}", "--augment=crop"])
    with pytest.raises(ConfigError, match="--steps=0"):
        run(SMALL + [f"--output_dir={tmp_path / 'x'}", "--steps=0"])
