"""The learning-rate schedule and the optimizer choice follow LeRobot's (cosine_decay_with_warmup,
auto-scaled to short runs; the policy preset unless --use_policy_training_preset=false)."""

from __future__ import annotations

import math

import pytest
import torch

from pirecon.configs.train import SchedulerConfig, resolve_optimization
from pirecon.errors import ConfigError
from pirecon.train.command import parse_train_command
from pirecon.train.schedule import lr_factor, scaled_steps

PRESET = SchedulerConfig(type="cosine_decay_with_warmup", num_warmup_steps=1000, num_decay_steps=30000,
                         peak_lr=2.5e-5, decay_lr=2.5e-6)


def learning_rates(scheduler: SchedulerConfig, steps: int, at: list[int]) -> dict[int, float]:
    """The lr torch uses for the optimizer step numbered s (0-based) for s in `at`."""
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=scheduler.peak_lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(scheduler, steps))
    seen = {}
    for s in range(max(at) + 1):
        if s in at:
            seen[s] = optimizer.param_groups[0]["lr"]
        optimizer.step()
        schedule.step()
    return seen


def test_a_3000_step_run_is_scaled_as_lerobot_scales_it():
    # W = int(1000 * 0.1) = 100, D = 3000; the cosine counts from step 0.
    lrs = learning_rates(PRESET, 3000, [0, 50, 99, 100, 1500, 3000, 3500])
    assert lrs[0] == pytest.approx(2.5e-5 / 101)
    assert lrs[50] == pytest.approx(2.5e-5 * (1 / 101 + (100 / 101) * 0.5))
    assert lrs[99] == pytest.approx(2.5e-5 * (1 / 101 + (100 / 101) * 0.99))
    assert lrs[100] == pytest.approx(2.5e-6 + 2.25e-5 * 0.5 * (1 + math.cos(math.pi / 30)))
    assert lrs[1500] == pytest.approx(2.5e-6 + 2.25e-5 * 0.5)  # half way: cos(pi/2) = 0
    assert lrs[3000] == pytest.approx(2.5e-6) and lrs[3500] == pytest.approx(2.5e-6)
    assert scaled_steps(PRESET, 3000)[2] == (
        "Auto-scaling LR scheduler: num_training_steps (3000) < num_decay_steps (30000). Scaling warmup: "
        "1000 → 100, decay: 30000 → 3000 (scale factor: 0.100)")


def test_a_long_run_is_not_scaled():
    assert scaled_steps(PRESET, 30000) == (1000, 30000, None)
    lrs = learning_rates(PRESET, 100000, [1000, 30000])
    assert lrs[1000] == pytest.approx(2.5e-6 + 2.25e-5 * 0.5 * (1 + math.cos(math.pi / 30)))
    assert lrs[30000] == pytest.approx(2.5e-6)


def resolved(*flags):
    parsed = parse_train_command(["--output_dir=o", *flags])
    return resolve_optimization(parsed.config, parsed.typed)


def test_the_preset_gives_adamw_with_the_pi0_values_and_follows_policy_flags():
    optimizer, scheduler = resolved()
    assert (optimizer.type, optimizer.lr, optimizer.betas, optimizer.eps, optimizer.weight_decay,
            optimizer.grad_clip_norm) == ("adamw", 2.5e-5, (0.9, 0.95), 1e-8, 0.01, 1.0)
    assert (scheduler.num_warmup_steps, scheduler.num_decay_steps, scheduler.peak_lr, scheduler.decay_lr) == \
        (1000, 30000, 2.5e-5, 2.5e-6)
    optimizer, scheduler = resolved("--policy.optimizer_lr=1e-4", "--policy.scheduler_decay_lr=1e-6")
    assert (optimizer.lr, scheduler.peak_lr, scheduler.decay_lr) == (1e-4, 1e-4, 1e-6)


def test_optimizer_flags_under_the_preset_are_refused_not_dropped():
    with pytest.raises(ConfigError, match=r"--optimizer.lr=0.0001 has no effect while --use_policy_training_preset=true "
                                          r"\(LeRobot ignores it silently\): set the preset with --policy.optimizer_lr"):
        resolved("--optimizer.lr=1e-4")
    with pytest.raises(ConfigError, match=r"--scheduler.num_warmup_steps=5 has no effect .* --policy.scheduler_warmup_steps"):
        resolved("--scheduler.type=cosine_decay_with_warmup", "--scheduler.num_warmup_steps=5",
                 "--scheduler.num_decay_steps=30000", "--scheduler.peak_lr=2.5e-5", "--scheduler.decay_lr=2.5e-6")
    resolved("--optimizer.type=adamw", "--optimizer.lr=2.5e-5")  # what the preset holds anyway: fine


def test_without_the_preset_the_optimizer_and_scheduler_flags_decide():
    optimizer, scheduler = resolved("--use_policy_training_preset=false", "--optimizer.lr=3e-4",
                                    "--scheduler.type=cosine_decay_with_warmup", "--scheduler.num_warmup_steps=10",
                                    "--scheduler.num_decay_steps=100", "--scheduler.peak_lr=3e-4",
                                    "--scheduler.decay_lr=3e-5")
    # LeRobot's default optimizer choice is adam, with adam's defaults.
    assert (optimizer.type, optimizer.lr, optimizer.betas, optimizer.weight_decay, optimizer.grad_clip_norm) == \
        ("adam", 3e-4, (0.9, 0.999), 0.0, 10.0)
    assert resolved("--use_policy_training_preset=false", "--optimizer.type=AdamW", "--scheduler.type=cosine_decay_with_warmup",
                    "--scheduler.num_warmup_steps=1", "--scheduler.num_decay_steps=2", "--scheduler.peak_lr=1",
                    "--scheduler.decay_lr=0")[0].weight_decay == 0.01
    assert scheduler.num_decay_steps == 100
    with pytest.raises(ConfigError, match="--use_policy_training_preset=false needs --scheduler.type=cosine_decay_with_warmup"):
        resolved("--use_policy_training_preset=false")
    with pytest.raises(ConfigError, match="--scheduler.type=cosine_decay_with_warmup needs --scheduler.peak_lr, "
                                          "--scheduler.decay_lr too"):
        resolved("--scheduler.type=cosine_decay_with_warmup", "--scheduler.num_warmup_steps=1",
                 "--scheduler.num_decay_steps=2")
    with pytest.raises(ConfigError, match=r"--optimizer.type='sgd': pirecon supports \['adam', 'adamw'\]"):
        resolved("--optimizer.type=sgd")


def test_the_trainer_builds_what_was_resolved_and_says_so(sim_dataset, sim_tokenizer, tmp_path):
    from pirecon.train.command import parse_train_command
    from pirecon.train.loop import Trainer
    from tests.train.helpers import tiny_train_flags

    flags = [f for f in tiny_train_flags(sim_dataset, sim_tokenizer, tmp_path / "a", "--steps=10",
                                         "--dataset.video_backend=pyav")
             if not f.startswith("--policy.optimizer") and not f.startswith("--policy.scheduler")]
    parsed = parse_train_command(flags)
    trainer = Trainer(parsed.config, parsed.typed)
    assert type(trainer.optimizer.optimizer) is torch.optim.AdamW
    assert trainer.optimizer.param_groups[0]["weight_decay"] == 0.01
    summary = trainer.summary()
    assert "  optimizer   adamw, lr 2.5e-05, betas (0.9, 0.95), weight decay 0.01, clip 1 (the policy's preset)" in summary
    assert "Scaling warmup: 1000 → 0, decay: 30000 → 10" in summary
    parsed = parse_train_command(flags[:-1] + [f"--output_dir={tmp_path / 'b'}", "--use_policy_training_preset=false",
                                               "--scheduler.type=cosine_decay_with_warmup",
                                               "--scheduler.num_warmup_steps=1", "--scheduler.num_decay_steps=10",
                                               "--scheduler.peak_lr=1e-3", "--scheduler.decay_lr=1e-4"])
    trainer = Trainer(parsed.config, parsed.typed)
    assert type(trainer.optimizer.optimizer) is torch.optim.Adam and trainer.optimizer.param_groups[0]["lr"] == 1e-3 / 2
