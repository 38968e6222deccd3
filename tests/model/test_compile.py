"""--policy.compile_model: sample_actions' denoising step through torch.compile (plain and LoRA)."""

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
from pirecon.train.peft_plan import apply_lora

pytestmark = pytest.mark.slow  # inductor generates and builds C++: tens of seconds


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


@pytest.mark.parametrize("kind,peft,dtype", [("pi0", False, "float32"), ("pi05", True, "bfloat16")])
def test_the_denoising_step_is_one_graph(kind, peft, dtype, monkeypatch):
    """No graph breaks: plain, LoRA-wrapped, and with bfloat16 layers routed through float32 products."""
    model = _model(kind, peft, dtype)
    if dtype == "bfloat16":
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
