"""The Pi0.5 `lerobot-train` script users run (issue #14), end to end with tiny stand-ins:
`lerobot/pi05_base` is a tiny LeRobot-layout folder in a fake Hugging Face cache,
`HuggingFaceVLA/libero` a LIBERO-layout dataset in a fake $HF_LEROBOT_HOME, 2 steps, W&B offline,
and every non-local socket refused."""

from __future__ import annotations

import json

import pytest

from tests.checkpoint.test_hub import _isolate, fake_cache_entry
from tests.test_examples import LIBERO_TASKS, write_libero_dataset, write_tiny_base

SCRIPT = ("--policy.type=pi05 --dataset.repo_id=HuggingFaceVLA/libero --policy.pretrained_path=lerobot/pi05_base "
          "--policy.device=cuda --policy.compile_model=true --policy.gradient_checkpointing=true "
          "--policy.dtype=bfloat16 --policy.freeze_vision_encoder=false --policy.train_expert_only=false "
          "--steps=3000 --batch_size=32 --output_dir=outputs/x --job_name=pi05_libero "
          "--wandb.enable=true --wandb.project=myproj --policy.repo_id=me/pi05_x --policy.push_to_hub=false "
          "--policy.use_peft=true --peft.method_type=lora --peft.r=16 --peft.target_modules=[q_proj,v_proj]").split()
# What the stand-ins change: no GPU here, compiling even the tiny model takes minutes on this CPU
# (torch.compile has its own test), 2 steps, and the tiny model's own tokenizer.
STAND_INS = {"--policy.device": "cpu", "--policy.compile_model": "false", "--steps": "2"}


def test_the_lerobot_pi05_script_trains_with_lerobots_meanings(tmp_path, monkeypatch, capsys):
    pytest.importorskip("wandb", reason="wandb is an optional extra: pip install 'pirecon[wandb]'")
    from pirecon.data.tokenizer import train_tiny_tokenizer
    from pirecon.train.command import parse_train_command
    from pirecon.train.loop import train

    attempts = _isolate(monkeypatch, tmp_path)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.chdir(tmp_path)
    write_libero_dataset(tmp_path / "lerobot-home" / "HuggingFaceVLA" / "libero", episodes=4, frames=10)
    base = write_tiny_base(tmp_path / "pi05_base", "pi05", "lerobot")
    fake_cache_entry(tmp_path / "hf-cache", "model", "lerobot/pi05_base", base)
    tokenizer = train_tiny_tokenizer(list(LIBERO_TASKS), tmp_path / "tokenizer.model")
    argv = [f"{name}={STAND_INS[name]}" if name in STAND_INS else f"{name}={value}"
            for name, _, value in (arg.partition("=") for arg in SCRIPT)]
    argv += [f"--policy.tokenizer_path={tokenizer}"]
    parsed = parse_train_command(argv)
    cfg = parsed.config
    # Each flag's value reaches the field that uses it.
    p = cfg.policy
    assert (p.type, p.pretrained_path, p.device, p.gradient_checkpointing, p.dtype) == \
        ("pi05", "lerobot/pi05_base", "cpu", True, "bfloat16")
    assert (p.freeze_vision_encoder, p.train_expert_only, p.repo_id, p.push_to_hub, p.use_peft) == \
        (False, False, "me/pi05_x", False, True)
    assert (cfg.batch_size, cfg.output_dir, cfg.job_name, cfg.wandb.enable, cfg.wandb.project) == \
        (32, "outputs/x", "pi05_libero", True, "myproj")
    assert (cfg.peft.method_type, cfg.peft.r, cfg.peft.target_modules) == ("lora", 16, ["q_proj", "v_proj"])
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)  # bf16 autocast: one Accelerator setting per process
    try:
        result = train(cfg, typed=parsed.typed)
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    printed = capsys.readouterr().out
    out = tmp_path / "outputs" / "x"
    assert result.steps == 2 and (result.checkpoint / "adapter" / "adapter_config.json").is_file()
    assert "  dataset     " + str(tmp_path / "lerobot-home" / "HuggingFaceVLA" / "libero") in printed
    assert "LoRA (lerobot preset) r=16 alpha=8" in printed  # PEFT's alpha, as LeRobot keeps it
    assert "Auto-scaling LR scheduler: num_training_steps (2) < num_decay_steps (30000)" in printed
    saved = json.loads((out / "checkpoints" / "last" / "pretrained_model" / "train_config.json").read_text())
    assert saved["job_name"] == "pi05_libero" and saved["policy"]["repo_id"] == "me/pi05_x"
    assert list((out / "wandb").glob("offline-run-*"))
    assert attempts == []  # nothing left this machine
