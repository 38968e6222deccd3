"""torch.compile of the training step with PEFT LoRA and of the denoising step, at tiny size.

Dynamo must capture each as one graph (fullgraph=True fails on any graph break) and AOTAutograd
must build the backward; the `aot_eager` backend runs exactly those stages without inductor's code
generation (minutes of C++ compilation on a small CPU), so results match eager mode to rounding.
`--policy.compile_model` itself (inductor, through sample_actions) is tested once, LoRA-wrapped.
"""

import dataclasses

import pytest
import torch
from torch._dynamo.utils import counters

from pirecon import PolicyConfig
from pirecon.batch import synthetic_batch
from pirecon.configs.train import PeftConfig
from pirecon.model import cpu_bf16, lora
from pirecon.model.pi0 import Pi0Policy
from pirecon.model.placement import place
from pirecon.model.trim import trim_plan, trimmed
from pirecon.train.peft_plan import apply_lora

pytestmark = pytest.mark.slow  # tracing takes 15-30 s per case on a 2-core CPU; inductor minutes


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


def _model(kind: str, peft: bool, dtype: str = "float32"):
    torch.manual_seed(0)
    cfg = PolicyConfig(type=kind, variant="tiny", chunk_size=4, n_action_steps=4, image_resolution=28,
                       camera_names=("base_0_rgb", "left_wrist_0_rgb"), dtype=dtype)
    policy = Pi0Policy(cfg).eval()
    with torch.no_grad():  # open the adaRMS gates so the expert really reads the prefix
        for m in policy.modules():
            if hasattr(m, "dense"):
                m.dense.weight.normal_(std=0.1)
    if not peft:
        return policy
    model = apply_lora(policy, PeftConfig(preset="openpi"))
    with torch.no_grad():  # PEFT starts B at zero: make the adapters change the result
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.05)
    return model


def test_the_denoising_step_of_a_lora_bf16_model_is_one_graph(monkeypatch):
    """No graph breaks LoRA-wrapped, with the bfloat16 layers routed through float32 products."""
    model = _model("pi05", peft=True, dtype="bfloat16")
    monkeypatch.setattr(cpu_bf16, "cpu_has_bf16_arithmetic", lambda: False)
    place(model, "cpu", torch.bfloat16)
    policy = lora.base_policy(model)
    batch = synthetic_batch(policy.config, 2, missing_views=1, text_lengths=[3, 6])
    with torch.no_grad():
        prefix = policy.embed_prefix(batch)
        kv = policy.prefix_cache(prefix)
        explained = torch._dynamo.explain(Pi0Policy.velocity_cached)(
            policy, prefix, kv, batch.state, torch.randn(2, 4, 32), torch.full((2,), 0.5))
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons


def test_compiled_sampling_of_a_lora_model_equals_eager():
    torch._dynamo.reset()
    model = _model("pi05", peft=True)
    policy = lora.base_policy(model)
    batch = synthetic_batch(policy.config, 2, missing_views=1, text_lengths=[3, 6])
    noise = torch.randn(2, 4, 32)
    eager = policy.sample_actions(batch, noise=noise, num_steps=3)
    policy.config = dataclasses.replace(policy.config, compile_model=True, compile_mode="default")
    graphs = counters["stats"]["unique_graphs"]
    compiled = policy.sample_actions(batch, noise=noise, num_steps=3)
    assert counters["stats"]["unique_graphs"] == graphs + 1  # compiled once for the three steps
    torch.testing.assert_close(compiled, eager, rtol=0, atol=1e-5)
    assert not torch.equal(eager, _model("pi05", peft=False).sample_actions(batch, noise=noise, num_steps=3))
    again = policy.sample_actions(batch, noise=noise, num_steps=3)
    assert counters["stats"]["unique_graphs"] == graphs + 1  # reused by the next call
    assert torch.equal(again, compiled)
