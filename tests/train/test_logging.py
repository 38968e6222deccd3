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
                                             "--wandb.project=pirecon-test")))
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))


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
