"""The reconstruction ablation's bookkeeping in miniature: runs, resume, statistics, table."""

from __future__ import annotations

import json

import pytest

import pirecon.train.loop
from pirecon.configs.ablation import AblationConfig
from pirecon.errors import ConfigError
from pirecon.recon_ablation import format_table, run_sweep, summarize_sweep

TINY = dict(arms=("none", "full"), seeds=(0,), steps=2, eval_points=2, eval_episodes=2, episodes=3,
            image_size=32, batch_size=4, lora_r=8, num_blocks=2, viz_frames=1)


def test_a_miniature_sweep_writes_every_run_and_resumes_without_retraining(tmp_path, monkeypatch):
    cfg = AblationConfig(output_dir=str(tmp_path / "sweep"), **TINY)
    summary = run_sweep(cfg)
    out = tmp_path / "sweep"
    results = json.loads((out / "results.json").read_text())
    assert [(r["arm"], r["seed"]) for r in results["runs"]] == [("none", 0), ("full", 0)]
    for run in results["runs"]:
        assert [e["step"] for e in run["evaluations"]] == [1, 2]  # every eval point, the last at --steps
        assert all(e["episodes"] == 2 for e in run["evaluations"])
    table = (out / "table.md").read_text().splitlines()
    assert [row.split("|")[1].strip() for row in table[2:]] == ["none", "full"]
    assert "@1" in table[0] and "@2" in table[0] and "paired vs none" in table[0]
    assert (out / "success_vs_steps.png").stat().st_size > 0
    assert (out / "runs" / "full" / "seed0" / "recon_000002.png").is_file()  # reconstruction arms only
    assert not list((out / "runs" / "none" / "seed0").glob("recon_*.png"))
    assert set(summary) == {"none", "full"}
    train_config = json.loads((out / "runs" / "full" / "seed0" / "train_config.json").read_text())
    assert train_config["recon"]["enable"] and train_config["recon"]["region"] == "full"
    assert not json.loads((out / "runs" / "none" / "seed0" / "train_config.json").read_text())["recon"]["enable"]

    # A second call trains nothing: every run has its result.json.
    def no_training(tc):
        raise AssertionError(f"trained {tc.output_dir} again")
    monkeypatch.setattr(pirecon.train.loop, "train", no_training)
    assert run_sweep(cfg) == summary

    # A run killed after its checkpoints (no result.json, evaluations lost) resumes from them.
    run_dir = out / "runs" / "full" / "seed0"
    (run_dir / "result.json").unlink()
    (run_dir / "eval_000001.json").unlink()
    resumed = []
    monkeypatch.setattr(pirecon.train.loop, "train", lambda tc: resumed.append(tc.resume))
    run_sweep(cfg)
    assert resumed == [True]
    assert (run_dir / "eval_000001.json").is_file() and (run_dir / "result.json").is_file()


def _run(arm: str, seed: int, finals: int, early: int) -> dict:
    return {"arm": arm, "seed": seed, "step_seconds": 0.5,
            "evaluations": [{"step": 5, "successes": early, "episodes": 10},
                            {"step": 10, "successes": finals, "episodes": 10}]}


def test_statistics_match_a_hand_computation():
    runs = [_run("none", 0, 5, 1), _run("none", 1, 6, 2), _run("none", 2, 7, 3),
            _run("full", 0, 7, 4), _run("full", 1, 6, 4), _run("full", 2, 9, 4)]
    summary = summarize_sweep(runs, ("none", "full"))
    none, full = summary["none"], summary["full"]
    # Wilson 95 % of 5/10 is [0.2366, 0.7634].
    assert none["per_seed"][0]["ci95"] == pytest.approx([0.2366, 0.7634], abs=1e-4)
    # Rates 0.5, 0.6, 0.7: mean 0.6, sd 0.1, t(2) = 4.303: 0.6 -+ 4.303 * 0.1 / sqrt(3) = 0.6 -+ 0.24843.
    assert none["mean"] == pytest.approx(0.6)
    assert none["ci95"] == pytest.approx([0.35157, 0.84843], abs=1e-4)
    # Paired differences 0.2, 0.0, 0.2: mean 0.13333, sd 0.11547, half width 4.303 * 0.11547 / sqrt(3) = 0.28687.
    paired = full["paired_vs_none"]
    assert paired["differences"] == pytest.approx([0.2, 0.0, 0.2])
    assert paired["ci95"] == pytest.approx([-0.15354, 0.42020], abs=1e-4)
    assert none["paired_vs_none"] is None
    assert full["by_step"] == pytest.approx({5: 0.4, 10: 22 / 30})
    table = format_table(summary, "none")
    assert "| full | 7/10" in table and "+13.3% [-15.4%, +42.0%]" in table and "| 40% |" in table


def test_bad_settings_name_the_flag():
    with pytest.raises(ConfigError, match="--arms"):
        AblationConfig(arms=("none", "halo"))
    with pytest.raises(ConfigError, match="--vae_path"):
        AblationConfig(arms=("none", "gaze_vae"))
    with pytest.raises(ConfigError, match="--eval_points=5"):
        AblationConfig(steps=4, eval_points=5)
    with pytest.raises(ConfigError, match="--seeds"):
        AblationConfig(seeds=(1, 1))


def test_each_arm_trains_with_its_own_reconstruction_and_the_same_budget(tmp_path):
    from pirecon.recon_ablation import train_config

    cfg = AblationConfig(output_dir=str(tmp_path), arms=("none", "full", "gaze", "gaze_vae"), vae_path="/vae",
                         steps=30, eval_points=3, recon_weight=0.25)
    tok = tmp_path / "tok.model"
    got = {arm: train_config(cfg, arm, 1, tmp_path / "data", tok, tmp_path / arm) for arm in cfg.arms}
    expected = {"none": (False, 0.0, None, None), "full": (True, 0.25, "full", None),
                "gaze": (True, 0.25, "gaze", None), "gaze_vae": (True, 0.25, "gaze", "/vae")}
    for arm, (enabled, weight, region, vae) in expected.items():
        recon = got[arm].recon
        assert recon.enable == enabled and recon.weight == weight, arm
        if enabled:
            assert recon.region == region and recon.vae_path == vae, arm
            assert recon.target == ("vae" if vae else "pixels"), arm
        assert (got[arm].steps, got[arm].seed, got[arm].save_freq) == (30, 1, 10), arm
