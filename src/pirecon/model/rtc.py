"""Real-Time Chunking (Black, Galliker, Levine 2025, arXiv 2506.07339): while the robot executes the
previous chunk, sample the next one guided toward the previous chunk's actions that will still run.

Their time runs from tau = 0 (noise) to 1 (actions); ours from t = 1 (noise) to 0, so tau = 1 - t,
their velocity is minus ours and their denoised estimate A + (1 - tau) v is ours x - t v. A step:

    A1 = x - t v(x)                                   the denoised estimate
    g  = (dA1/dx)^T [W * (Y - A1)]                    a vector-Jacobian product through the velocity
                                                      network (the suffix pass; the prefix's K/V are
                                                      constants)
    v' = v - min(beta, (1 - tau) / tau * (tau^2 + (1 - tau)^2) / (1 - tau)^2) * g

Y is the previous chunk's remaining actions aligned to the new chunk (zero-padded), and the
soft mask W (their eq. 5, H the chunk, d the delay, s the execution horizon):

    W_i = 1                                  i < d          (executed while inferring: frozen)
    W_i = c_i (e^c_i - 1) / (e - 1)          d <= i < H - s, c_i = (H - s - i) / (H - s - d + 1)
    W_i = 0                                  i >= H - s     (beyond what the previous chunk covers)

with H - s clipped to the length of Y. beta (the guidance clip) defaults to LeRobot's 10.

Training-time RTC (Black, Ren, Equi, Levine 2025, arXiv 2512.05964; LeRobot's
`--policy.rtc_training_max_delay=D`): during training every example draws a delay d uniform in
0 .. D (LeRobot's choice), its first d actions are given clean (the ground truth) at time 0, our
data end, while the rest is noised at the example's time t, and the loss covers the rest only.
The time is then per action token. A policy trained so samples with `rtc_mode="trained"`
(LeRobot's `--inference.rtc.mode=trained`): the first d tokens are held at the previous chunk's
actions, at time 0, in every Euler step; no guidance, so no vector-Jacobian product.
"""

from __future__ import annotations

import math

import torch

from pirecon.configs.policy import RTC_MODES

DEFAULT_MAX_GUIDANCE = 10.0  # LeRobot's RTCConfig.max_guidance_weight
MODES = RTC_MODES  # LeRobot's RTCConfig.mode: guidance, or a prefix the policy was trained on


def sample_delays(batch_size: int, max_delay: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Training-time RTC: one delay per example, uniform in 0 .. max_delay, (B,) int64 (CPU)."""
    return torch.randint(0, max_delay + 1, (batch_size,), generator=generator)


def check_delays(delays: torch.Tensor, horizon: int) -> None:
    """Delays given by a caller: one per example in 0 .. horizon - 1 (reads them on the host)."""
    if delays.dim() != 1 or bool((delays < 0).any()) or bool((delays >= horizon).any()):
        raise ValueError(f"delays {delays.tolist()}: expected one per example in 0 .. {horizon - 1}")


def prefix_mask(delays: torch.Tensor, horizon: int) -> torch.Tensor:
    """(B,) delays -> (B, H) bool, True on each example's first `delay` positions (the clean prefix)."""
    return torch.arange(horizon, device=delays.device)[None, :] < delays[:, None]


def per_token_time(time: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    """(B,) time and (B, H) clean prefix -> (B, H): 0 (data) on the prefix, the example's time elsewhere."""
    return torch.where(clean, torch.zeros((), dtype=time.dtype, device=time.device), time[:, None])


def soft_mask(horizon: int, delay: int, execution_horizon: int, prefix_length: int) -> torch.Tensor:
    """The paper's prefix weights W (horizon,) float32 for a delay d and execution horizon s."""
    end = min(horizon - execution_horizon, prefix_length)
    d = min(delay, end)
    weights = torch.zeros(horizon, dtype=torch.float32)
    weights[:d] = 1.0
    for i in range(d, end):
        c = (end - i) / (end - d + 1)
        weights[i] = c * (math.exp(c) - 1.0) / (math.e - 1.0)
    return weights


def guidance_weight(t: float, max_guidance: float) -> float:
    """min(beta, (1 - tau) / tau * 1 / r^2) with tau = 1 - t and r^2 = (1 - tau)^2 / (tau^2 + (1 - tau)^2)."""
    tau = 1.0 - t
    if tau <= 0.0:
        return max_guidance
    return min(max_guidance, (1.0 - tau) / tau * (tau ** 2 + (1.0 - tau) ** 2) / (1.0 - tau) ** 2)


def guided_velocity(velocity, x: torch.Tensor, t: float, target: torch.Tensor, weights: torch.Tensor,
                    max_guidance: float) -> torch.Tensor:
    """v' for one Euler step. velocity(x) -> v (B, H, A); target (B, H, A); weights (H,)."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        v = velocity(x)
        denoised = x - t * v
        error = (target - denoised) * weights.to(x.device)[None, :, None]
        g, = torch.autograd.grad(denoised, x, grad_outputs=error.detach())
    return v.detach() - guidance_weight(t, max_guidance) * g
