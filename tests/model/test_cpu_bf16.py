import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pirecon import PolicyConfig
from pirecon.batch import synthetic_batch
from pirecon.model import cpu_bf16
from pirecon.model.cpu_bf16 import _linear_forward, route_frozen_bf16_linears, scaled_dot_product_attention
from pirecon.model.pi0 import Pi0Policy
from pirecon.model.placement import place
from pirecon.checkpoint.load import load_policy
from pirecon.configs.train import PeftConfig
from pirecon.train.peft_plan import apply_lora


@pytest.fixture(params=["emulated", "native"])
def cpu_kind(request, monkeypatch):
    """Run a test as on a CPU without bfloat16 arithmetic and as on one with it (AVX512-BF16 / AMX)."""
    monkeypatch.setattr(cpu_bf16, "cpu_has_bf16_arithmetic", lambda: request.param == "native")
    return request.param


def _routed(layer: nn.Linear) -> bool:
    return getattr(layer.forward, "__func__", None) is _linear_forward


def _input_grad(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = model(x)
    y.float().pow(2).sum().backward()
    return y, x.grad


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(96, 160), nn.GELU(), nn.Linear(160, 64)).bfloat16().requires_grad_(False)


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().float(), b.detach().float()
    return float((a - b).norm() / b.norm())


def test_frozen_bf16_layers_give_the_reference_output_and_input_gradient(cpu_kind):
    routed = _mlp()
    reference = copy.deepcopy(routed).float()  # the same (bfloat16-valued) weights, float32 throughout
    assert place(routed, "cpu", torch.bfloat16).float32_products == (cpu_kind == "emulated")
    assert [_routed(m) for m in routed if isinstance(m, nn.Linear)] == [cpu_kind == "emulated"] * 2
    x = torch.randn(5, 7, 96)
    y, g = _input_grad(routed, x)
    x_ref = x.bfloat16().float().requires_grad_(True)  # autocast rounds the input to bfloat16
    y_ref = reference(x_ref)
    y_ref.pow(2).sum().backward()
    assert y.dtype == torch.bfloat16 and g.dtype == torch.float32
    assert _relative_error(y, y_ref) < 1e-2 and _relative_error(g, x_ref.grad) < 1e-2
    assert g.abs().sum() > 0


def test_on_an_emulating_cpu_the_products_run_in_float32(monkeypatch):
    monkeypatch.setattr(cpu_bf16, "cpu_has_bf16_arithmetic", lambda: False)
    layer = _mlp()[0]
    place(layer, "cpu", torch.bfloat16)
    assert route_frozen_bf16_linears(layer) == 1 and _routed(layer)  # idempotent
    x = torch.randn(4, 96, requires_grad=True)
    grad = torch.randn(4, 160)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    y.backward(grad.bfloat16())
    # Bit-for-bit the float32 products of the stored bfloat16 numbers (a bfloat16 product differs).
    expected = F.linear(x.detach(), layer.weight.float(), layer.bias.float()).bfloat16()
    assert torch.equal(y, expected)
    assert torch.equal(x.grad, grad.bfloat16().float() @ layer.weight.float())
    with torch.no_grad():  # inference, weights not frozen: still float32 products, bfloat16 result
        layer.requires_grad_(True)
        out = layer(x.bfloat16())
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, F.linear(x.detach().bfloat16().float(), layer.weight.float(), layer.bias.float()).bfloat16())


def test_attention_over_bf16_inputs_runs_in_float32_on_an_emulating_cpu(monkeypatch):
    monkeypatch.setattr(cpu_bf16, "cpu_has_bf16_arithmetic", lambda: False)
    q, k, v = (torch.randn(1, 2, 9, 16).bfloat16() for _ in range(3))
    mask = torch.zeros(1, 1, 9, 9).masked_fill(torch.rand(9, 9) < 0.3, -1e30).bfloat16()
    mask[..., 0] = 0  # every query sees a key
    out = scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask.float()).bfloat16())
    allowed = mask == 0  # the model's masks are boolean: passed on as they are, never made 0/1 floats
    out = scaled_dot_product_attention(q, k, v, attn_mask=allowed)
    bias = torch.zeros(allowed.shape).masked_fill(~allowed, float("-inf"))
    assert torch.equal(out, F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=bias).bfloat16())
    q32 = q.float()
    assert torch.equal(scaled_dot_product_attention(q32, k.float(), v.float()),
                       F.scaled_dot_product_attention(q32, k.float(), v.float()))  # float32: untouched


def test_assumed_bf16_arithmetic_decides_within_the_block_only(monkeypatch):
    """pirecon plan counts a GPU's pass on CPU tensors: within the block the CPU's own answer is set aside."""
    monkeypatch.setattr(cpu_bf16, "cpu_has_bf16_arithmetic", lambda: False)
    t = torch.zeros(2, dtype=torch.bfloat16)
    assert cpu_bf16.emulated_bf16(t)
    with cpu_bf16.assume_bf16_arithmetic(True):
        assert not cpu_bf16.emulated_bf16(t)
        with cpu_bf16.assume_bf16_arithmetic(False):
            assert cpu_bf16.emulated_bf16(t)
        assert not cpu_bf16.emulated_bf16(t)
    assert cpu_bf16.emulated_bf16(t) and not cpu_bf16.emulated_bf16(t.float())


def test_trainable_or_float32_layers_keep_their_own_backward():
    layer = nn.Linear(8, 4)
    route_frozen_bf16_linears(layer)
    assert _routed(layer)
    x = torch.randn(3, 8, requires_grad=True)
    layer(x).sum().backward()  # float32, trainable: ordinary autograd, weight gradient present
    assert layer.weight.grad is not None and x.grad is not None
    layer.bfloat16()
    layer.weight.grad = None
    layer(x.bfloat16()).float().sum().backward()  # bf16 but trainable: weight gradient still present
    assert layer.weight.grad is not None


def test_training_placement_routes_the_lora_base_layers_and_lora_still_learns(cpu_kind):
    model = apply_lora(Pi0Policy(PolicyConfig(variant="tiny")), PeftConfig(preset="openpi"))
    place(model, "cpu", torch.bfloat16, train=True)
    base_layer = model.get_base_model().backbone.vlm.layers[0].q_proj.base_layer
    assert base_layer.weight.dtype == torch.bfloat16
    assert _routed(base_layer) == (cpu_kind == "emulated")
    reference = apply_lora(Pi0Policy(PolicyConfig(variant="tiny")), PeftConfig(preset="openpi"))
    reference.load_state_dict(model.state_dict())
    with torch.no_grad():  # same dtypes as `model`, but float32 products and ordinary autograd everywhere
        for p, q in zip(reference.parameters(), model.parameters()):
            p.data = q.data.float()
    batch = synthetic_batch(model.get_base_model().config, 2)
    grads = []
    for m in (model, reference):
        torch.manual_seed(1)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=m is model):
            loss = m(batch)["loss"]
        loss.backward()
        grads.append({n: p.grad for n, p in m.named_parameters() if "lora_B" in n and p.grad is not None})
    # The prefix's LoRA weights get their gradient through the frozen bf16 base layers above them.
    assert grads[0].keys() == grads[1].keys() and any(".vlm.layers.0." in n for n in grads[0])
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], rtol=5e-2, atol=1e-3), name


def test_a_bf16_policy_is_routed_when_loaded_on_an_emulating_cpu(cpu_kind):
    policy = load_policy(PolicyConfig(variant="tiny", dtype="bfloat16"))
    assert _routed(policy.backbone.vlm.layers[0].q_proj) == (cpu_kind == "emulated")
    assert not _routed(load_policy(PolicyConfig(variant="tiny")).backbone.vlm.layers[0].q_proj)
    assert not _routed(Pi0Policy(PolicyConfig(variant="tiny", dtype="bfloat16")).backbone.vlm.layers[0].q_proj)
    with torch.no_grad():
        actions = policy.sample_actions(synthetic_batch(policy.config, 1), num_steps=2)
    assert torch.isfinite(actions).all()


def test_large_buffers_are_kept_off_the_heap_where_malloc_allows(monkeypatch):
    import sys

    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    cpu_bf16.keep_large_buffers_off_the_heap.cache_clear()
    try:
        in_force = cpu_bf16.keep_large_buffers_off_the_heap()
    finally:
        cpu_bf16.keep_large_buffers_off_the_heap.cache_clear()
    libc = __import__("platform").libc_ver()[0]
    assert in_force == (sys.platform.startswith("linux") and libc == "glibc")
