"""torch.compile of the training step with PEFT LoRA and of the denoising step, at tiny size.

Dynamo must capture each as one graph (fullgraph=True fails on any graph break) and AOTAutograd
must build the backward; the `aot_eager` backend runs exactly those stages without inductor's code
generation (minutes of C++ compilation on a small CPU), so results match eager mode to rounding.
"""

import pytest
import torch

from pirecon import PolicyConfig
from pirecon.batch import synthetic_batch
from pirecon.configs.train import PeftConfig
from pirecon.model.pi0 import Pi0Policy
from pirecon.model.trim import trim_plan, trimmed
from pirecon.train.peft_plan import apply_lora

pytestmark = pytest.mark.slow  # tracing takes 15-30 s per case on a 2-core CPU


def _policy(kind: str) -> Pi0Policy:
    torch.manual_seed(0)
    policy = Pi0Policy(PolicyConfig(type=kind, variant="tiny", image_resolution=28, chunk_size=4, n_action_steps=4,
                                    max_state_dim=8, max_action_dim=8))
    with torch.no_grad():  # open the adaRMS gates so the expert reads the prefix
        for name, p in policy.named_parameters():
            if "dense" in name:
                p.normal_(std=0.2)
    return policy


def test_compiled_training_step_with_lora_matches_eager():
    policy = _policy("pi05")
    model = apply_lora(policy, PeftConfig(r=4, preset="openpi")).train()
    batch = synthetic_batch(policy.config, 2, missing_views=1, text_lengths=[5, 9])
    noise, time = torch.randn_like(batch.actions), torch.tensor([0.3, 0.7])
    plan = trim_plan(batch.image_masks, batch.token_masks)
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]

    def step(forward):
        model.zero_grad()
        loss = forward(batch, noise=noise, time=time, trim=plan)["loss"]
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in trainable if p.grad is not None}

    eager_loss, eager_grads = step(model)
    compiled_loss, compiled_grads = step(torch.compile(model, backend="aot_eager", fullgraph=True))
    assert torch.allclose(compiled_loss, eager_loss, rtol=1e-5)
    assert any(".lora_A." in n for n in eager_grads) and eager_grads.keys() <= compiled_grads.keys()
    for name, grad in compiled_grads.items():
        if name not in eager_grads:  # weights the loss does not read (the VLM's last MLP): eager leaves None
            assert not grad.any(), name
            continue
        assert (grad - eager_grads[name]).abs().max() <= 1e-5 * eager_grads[name].abs().max() + 1e-7, name


def test_compiled_denoising_step_matches_eager():
    policy = _policy("pi0").eval()
    batch = synthetic_batch(policy.config, 2, missing_views=1, text_lengths=[5, 9])
    x = torch.randn(2, policy.config.chunk_size, policy.config.max_action_dim)
    time = torch.full((2,), 0.6)
    with torch.no_grad():
        prefix = policy.embed_prefix(trimmed(batch))
        kv = policy.prefix_cache(prefix)
        eager = policy.velocity_cached(prefix, kv, batch.state, x, time)
        compiled = torch.compile(policy.velocity_cached, backend="aot_eager", fullgraph=True)
        assert torch.allclose(compiled(prefix, kv, batch.state, x, time), eager, atol=1e-5)
