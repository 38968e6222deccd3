import copy

import torch
from torch import nn

from pirecon import PolicyConfig
from pirecon.batch import synthetic_batch
from pirecon.model.pi0 import Pi0Policy
from pirecon.train.config import PeftConfig
from pirecon.train.cpu_bf16 import _linear_forward, use_fast_frozen_bf16_backward
from pirecon.train.lora import add_lora, apply_training_precision


def _input_grad(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = model(x)
    y.float().pow(2).sum().backward()
    return y, x.grad


def test_fast_path_gives_the_reference_gradient_for_frozen_bf16_layers():
    torch.manual_seed(0)
    reference = nn.Sequential(nn.Linear(96, 160), nn.GELU(), nn.Linear(160, 64)).bfloat16().requires_grad_(False)
    fast = copy.deepcopy(reference)
    assert use_fast_frozen_bf16_backward(fast) == 2
    assert use_fast_frozen_bf16_backward(fast) == 2  # idempotent
    x = torch.randn(5, 7, 96)
    y_ref, g_ref = _input_grad(reference, x)
    y_fast, g_fast = _input_grad(fast, x)
    assert y_fast.dtype == y_ref.dtype == torch.bfloat16
    assert torch.equal(y_fast, y_ref)
    assert g_fast.dtype == torch.float32
    assert torch.allclose(g_fast, g_ref, rtol=2e-2, atol=1e-3), (g_fast - g_ref).abs().max()
    assert g_fast.abs().sum() > 0


def test_trainable_or_float32_layers_keep_their_own_backward():
    layer = nn.Linear(8, 4)
    use_fast_frozen_bf16_backward(layer)
    assert layer.forward.__func__ is _linear_forward
    x = torch.randn(3, 8, requires_grad=True)
    layer(x).sum().backward()  # float32, trainable: ordinary autograd, weight gradient present
    assert layer.weight.grad is not None and x.grad is not None
    layer.bfloat16()
    layer.weight.grad = None
    layer(x.bfloat16()).float().sum().backward()  # bf16 but trainable: weight gradient still present
    assert layer.weight.grad is not None


def test_training_precision_routes_the_lora_base_layers_and_lora_still_learns():
    model = add_lora(Pi0Policy(PolicyConfig(variant="tiny")), PeftConfig())
    apply_training_precision(model, torch.bfloat16)
    base_layer = model.get_base_model().backbone.vlm.layers[0].q_proj.base_layer
    assert base_layer.forward.__func__ is _linear_forward
    reference = add_lora(Pi0Policy(PolicyConfig(variant="tiny")), PeftConfig())
    reference.load_state_dict(model.state_dict())
    with torch.no_grad():  # same dtypes as `model`, but ordinary autograd for every layer
        for p, q in zip(reference.parameters(), model.parameters()):
            p.data = q.data.clone()
    batch = synthetic_batch(model.get_base_model().config, 2)
    grads = []
    for m in (model, reference):
        torch.manual_seed(1)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = m(batch)["loss"]
        loss.backward()
        grads.append({n: p.grad for n, p in m.named_parameters() if "lora_B" in n and p.grad is not None})
    # The prefix's LoRA weights get their gradient through the frozen bf16 base layers above them.
    assert grads[0].keys() == grads[1].keys() and any(".vlm.layers.0." in n for n in grads[0])
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], rtol=5e-2, atol=1e-4), name
