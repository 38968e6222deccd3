"""The learning-rate schedule: LeRobot's `cosine_decay_with_warmup`, auto-scaled to short runs.

    W, D = num_warmup_steps, num_decay_steps; when the run has fewer steps S than D:
        W = int(W * S / D), D = S                        (LeRobot logs this as "Auto-scaling LR scheduler")
    factor(s) = 1/(W+1) + (1 - 1/(W+1)) * s / W           for s < W   (linear warm-up)
              = a + (1 - a) * (1 + cos(pi * min(s, D) / D)) / 2   otherwise, a = decay_lr / peak_lr

The cosine counts from step 0, not from the end of the warm-up, as in LeRobot. The optimizer's
learning rate is multiplied by the factor (with the preset, optimizer lr = peak_lr).
"""

from __future__ import annotations

import math
from typing import Callable

from pirecon.configs.train import SchedulerConfig


def scaled_steps(scheduler: SchedulerConfig, steps: int) -> tuple[int, int, str | None]:
    """(warm-up steps, decay steps, the note when they were scaled to a run of `steps`)."""
    warmup, decay = scheduler.num_warmup_steps, scheduler.num_decay_steps
    if steps >= decay:
        return warmup, decay, None
    scale = steps / decay
    scaled = int(warmup * scale)
    return scaled, steps, (f"Auto-scaling LR scheduler: num_training_steps ({steps}) < num_decay_steps ({decay}). "
                           f"Scaling warmup: {warmup} → {scaled}, decay: {decay} → {steps} (scale factor: {scale:.3f})")


def lr_factor(scheduler: SchedulerConfig, steps: int) -> Callable[[int], float]:
    """step -> the factor on the optimizer's learning rate (a LambdaLR lambda)."""
    warmup, decay, _ = scaled_steps(scheduler, steps)
    alpha = scheduler.decay_lr / scheduler.peak_lr

    def factor(step: int) -> float:
        if step < warmup:
            start = 1.0 / (warmup + 1)
            return start + (1.0 - start) * step / warmup
        return alpha + (1.0 - alpha) * 0.5 * (1.0 + math.cos(math.pi * min(step, decay) / decay))
    return factor
