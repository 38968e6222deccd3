import json

import pytest

from pirecon.errors import ConfigError
from pirecon.train.command import parse_train_flags
from pirecon.train.loop import Trainer, train
from tests.train.helpers import tiny_train_flags


def test_wandb_offline_run_is_written_locally(sim_dataset, sim_tokenizer, tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason="wandb is an optional extra: pip install 'pirecon[wandb]'")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "run"
    train(parse_train_flags(tiny_train_flags(sim_dataset, sim_tokenizer, out, "--steps=2", "--wandb.enable=true",
                                             "--wandb.project=pirecon-test", "--job_name=wb_job",
                                             "--wandb.notes=first try", "--save_freq=1")))
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))
    run_id = runs[0].name.rsplit("-", 1)[-1]
    from pirecon.train.logs import previous_wandb_run
    assert previous_wandb_run(out) == run_id
    # A resumed run continues the same W&B run (LeRobot reads it from output_dir/wandb/latest-run).
    import shutil
    shutil.rmtree(out / "checkpoints" / "000002")
    (out / "checkpoints" / "last").unlink()
    (out / "checkpoints" / "last").symlink_to("000001")
    train(parse_train_flags(tiny_train_flags(sim_dataset, sim_tokenizer, out, "--steps=2", "--wandb.enable=true",
                                             "--wandb.project=pirecon-test", "--save_freq=1", "--resume=true")))
    assert previous_wandb_run(out) == run_id


def test_bad_wandb_mode_is_named(sim_dataset, sim_tokenizer, tmp_path):
    pytest.importorskip("wandb")
    with pytest.raises(ConfigError, match="--wandb.mode='sometimes'"):
        Trainer(parse_train_flags(tiny_train_flags(sim_dataset, sim_tokenizer, tmp_path / "r", "--steps=1",
                                                   "--wandb.enable=true", "--wandb.mode=sometimes")))


def test_a_summary_is_printed_and_the_resolved_config_saved(sim_dataset, sim_tokenizer, tmp_path, capsys):
    out = tmp_path / "run"
    train(parse_train_flags(tiny_train_flags(sim_dataset, sim_tokenizer, out, "--steps=1")))
    printed = capsys.readouterr().out
    assert printed.startswith("pirecon train\n  policy      pi0 (siglip_tiny / gemma_tiny / gemma_tiny_expert), chunk 4, 28px")
    assert "  weights     random initialisation" in printed and f"  dataset     {sim_dataset}: 4 episodes" in printed
    assert "  batch       4 per process x 1 process(es) x 1 accumulation step(s) = 4 samples per step" in printed
    assert len([line for line in printed.splitlines() if line.startswith("  ")]) < 30  # a block, not a dump
    saved = json.loads((out / "train_config.json").read_text())
    assert saved["policy"]["tokenizer_path"] and saved["steps"] == 1
    # --config_path loads a saved config; flags override it.
    cfg = parse_train_flags([f"--config_path={out / 'train_config.json'}", "--steps=7",
                             f"--output_dir={tmp_path / 'again'}"])
    assert cfg.steps == 7 and cfg.policy.chunk_size == 4


def test_a_resumed_run_logs_every_step_once_and_skips_a_torn_line(sim_dataset, sim_tokenizer, tmp_path, capsys):
    import os
    import shutil

    out = tmp_path / "run"
    train(parse_train_flags(tiny_train_flags(sim_dataset, sim_tokenizer, out, "--steps=3", "--save_freq=2")))
    # As after a kill during step 4: step 3 was logged but never saved, and a line is half written.
    shutil.rmtree(out / "checkpoints" / "000003")
    os.remove(out / "checkpoints" / "last")
    os.symlink("000002", out / "checkpoints" / "last")
    with open(out / "log.jsonl", "a") as f:
        f.write('{"step": 4, "loss": 0.1')
    capsys.readouterr()
    train(parse_train_flags(tiny_train_flags(sim_dataset, sim_tokenizer, out, "--steps=4", "--save_freq=2",
                                             "--resume=true")))
    lines = (out / "log.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 3, 4]
    assert f"warning: {out / 'log.jsonl'}: skipped 1 line(s) that are not log records (line 4;" in capsys.readouterr().err


def test_the_loss_plot_survives_a_bad_line(tmp_path, capsys):
    from pirecon.train.logs import plot_losses

    log = tmp_path / "log.jsonl"
    log.write_text('{"step": 1, "loss": 1.0}\n{"step": 2, "loss": 0.5}\nnot json\n{"step": 3, "lo')
    assert plot_losses(log, tmp_path / "curves.png") == tmp_path / "curves.png"
    assert (tmp_path / "curves.png").stat().st_size > 1000
    assert "skipped 2 line(s) that are not log records (line 3, 4;" in capsys.readouterr().err


def test_log_freq_logs_the_means_over_the_interval(sim_dataset, sim_tokenizer, tmp_path):
    from tests.train.helpers import logged

    every, pairs = tmp_path / "every", tmp_path / "pairs"
    train(parse_train_flags(tiny_train_flags(sim_dataset, sim_tokenizer, every, "--steps=5")))
    flags = [f for f in tiny_train_flags(sim_dataset, sim_tokenizer, pairs, "--steps=5") if f != "--log_freq=1"]
    train(parse_train_flags(flags + ["--log_freq=2"]))
    one, two = logged(every), logged(pairs)
    assert sorted(two) == [2, 4, 5]  # every 2 steps, and the last step
    assert two[2] == pytest.approx((one[1] + one[2]) / 2, rel=1e-6)
    assert two[4] == pytest.approx((one[3] + one[4]) / 2, rel=1e-6)
    assert two[5] == pytest.approx(one[5], rel=1e-6)
    assert [r["steps_averaged"] for r in map(json.loads, (pairs / "log.jsonl").read_text().splitlines())] == [2, 2, 1]


def test_closed_loop_evaluation_during_training(sim_dataset, sim_tokenizer, tmp_path, capsys):
    """LeRobot's --eval_freq / --env_eval_freq with --env.type: the success rate lands in the log,
    and training itself is unchanged by it (same losses as without)."""
    with_eval, without = tmp_path / "with", tmp_path / "without"
    flags = ("--steps=4", "--policy.n_action_steps=4")
    train(parse_train_flags(tiny_train_flags(sim_dataset, sim_tokenizer, with_eval, *flags, "--env.type=sim",
                                             "--eval_freq=2", "--eval.n_episodes=2", "--env.max_steps=6")))
    printed = capsys.readouterr().out
    train(parse_train_flags(tiny_train_flags(sim_dataset, sim_tokenizer, without, *flags)))
    records = [json.loads(line) for line in (with_eval / "log.jsonl").read_text().splitlines()]
    evals = [r for r in records if "eval/success_rate" in r]
    assert [r["step"] for r in evals] == [2, 4] and all(r["eval/episodes"] == 2 for r in evals)
    assert all(0.0 <= r["eval/success_rate"] <= 1.0 and r["eval/ci95_low"] <= r["eval/ci95_high"] for r in evals)
    losses = {r["step"]: r["loss"] for r in records if "loss" in r}
    plain = {r["step"]: r["loss"] for r in map(json.loads, (without / "log.jsonl").read_text().splitlines())}
    assert losses == plain
    assert "  evaluation  sim, 2 episodes (seeds 100000..100001), one at a time; the simulator settings the " \
           "training data was recorded with (meta/pirecon_sim.json), every 2 steps" in printed
    assert "sim_pi0" in json.loads((with_eval / "train_config.json").read_text())["job_name"]
    with pytest.raises(ConfigError, match="--env.max_steps: environment settings need --env.type=sim|libero"):
        Trainer(parse_train_flags(tiny_train_flags(sim_dataset, sim_tokenizer, tmp_path / "x", "--env.max_steps=6")))
    with pytest.raises(ConfigError, match="unknown flag --env.colour for --env.type=sim"):
        Trainer(parse_train_flags(tiny_train_flags(sim_dataset, sim_tokenizer, tmp_path / "y", "--env.type=sim",
                                                   "--env.colour=red")))
