"""Real-time chunking in sample_actions: off is the plain sampler bit for bit; on, the delayed
actions follow the previous chunk; the soft mask and guidance weight are the paper's."""

from __future__ import annotations

import math

import pytest
import torch

from pirecon.batch import synthetic_batch
from pirecon.configs.policy import PolicyConfig
from pirecon.errors import InputError
from pirecon.model import rtc
from pirecon.model.pi0 import Pi0Policy, trimmed


def tiny(kind: str) -> Pi0Policy:
    torch.manual_seed(0)
    return Pi0Policy(PolicyConfig(type=kind, variant="tiny", chunk_size=10, n_action_steps=5, max_action_dim=8,
                                  num_inference_steps=10)).eval()


@pytest.mark.parametrize("kind", ["pi0", "pi05"])
def test_without_rtc_arguments_sampling_is_the_plain_euler_loop(kind):
    policy = tiny(kind)
    batch = synthetic_batch(policy.config, 2, action_dim=8)
    noise = torch.randn(2, 10, 8)
    with torch.no_grad():  # the loop written out: 10 Euler steps from t = 1 with the cached prefix
        prefix = policy.embed_prefix(trimmed(batch))
        kv = policy.prefix_cache(prefix)
        x = noise.clone()
        for step in range(10):
            x = x - 0.1 * policy.velocity_cached(prefix, kv, batch.state.float(), x, torch.full((2,), 1.0 - step * 0.1))
    assert torch.equal(policy.sample_actions(batch, noise=noise), x)


@pytest.mark.parametrize("kind", ["pi0", "pi05"])
def test_the_delayed_actions_follow_the_previous_chunk(kind):
    policy = tiny(kind)
    batch = synthetic_batch(policy.config, 2, action_dim=8)
    noise, previous = torch.randn(2, 10, 8), torch.randn(2, 6, 8)
    plain = policy.sample_actions(batch, noise=noise)
    guided = policy.sample_actions(batch, noise=noise, prefix_actions=previous, inference_delay=3)
    assert (plain[:, :3] - previous[:, :3]).abs().mean() > 0.5  # far apart without guidance
    assert (guided[:, :3] - previous[:, :3]).abs().max() < 0.05
    assert torch.isfinite(guided).all()


def test_soft_mask_and_guidance_weight_are_the_papers():
    e = math.e
    w = rtc.soft_mask(horizon=10, delay=2, execution_horizon=3, prefix_length=8)  # overlap ends at 10 - 3 = 7
    expected = [1.0, 1.0] + [c * (math.exp(c) - 1) / (e - 1) for c in (5 / 6, 4 / 6, 3 / 6, 2 / 6, 1 / 6)] + [0, 0, 0]
    assert torch.allclose(w, torch.tensor(expected))
    assert rtc.soft_mask(10, 2, 0, 4).tolist()[4:] == [0.0] * 6  # never past the previous actions given
    assert rtc.guidance_weight(1.0, 10.0) == 10.0  # pure noise: the clip
    assert rtc.guidance_weight(0.5, 10.0) == pytest.approx(2.0)  # (1/1) * (1/4 + 1/4) / (1/4)
    assert rtc.guidance_weight(0.9, 1.0) == 1.0


def test_bad_rtc_arguments_are_named():
    policy = tiny("pi0")
    batch = synthetic_batch(policy.config, 1, action_dim=8)
    with pytest.raises(InputError, match=r"prefix_actions has shape \(1, 12, 8\); expected \(batch 1, 1..10 steps"):
        policy.sample_actions(batch, prefix_actions=torch.zeros(1, 12, 8))
    with pytest.raises(InputError, match="inference_delay=5, execution_horizon=6: expected 0 <= delay <= 4"):
        policy.sample_actions(batch, prefix_actions=torch.zeros(1, 4, 8), inference_delay=5)
