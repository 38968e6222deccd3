"""A fast backward pass for frozen bfloat16 linear layers on the CPU.

On CPUs without bfloat16 matrix units (AVX2 laptops and servers, this project's CI), PyTorch sends
a bfloat16 `mm(g, W)` whose second operand is a plain row-major matrix to a reference kernel that is
about 40x slower than float32, while `F.linear` (x @ W.T, the forward) goes through oneDNN. The
grad-input product of a frozen linear layer is exactly that slow `g @ W`; it made a full-size LoRA
step with a bf16 frozen base take hours. Computing it as `F.linear(g, W.t().contiguous())` gives the
same numbers through the fast kernel, at the cost of one transient transposed copy of one weight.

`use_fast_frozen_bf16_backward(model)` routes every nn.Linear of `model` through that path whenever,
at call time, its weight is a frozen bfloat16 CPU tensor and the input needs a gradient; otherwise
the layer behaves exactly as before (GPUs, float32, trainable weights, inference).
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F
from torch import nn


class _FrozenBf16Linear(torch.autograd.Function):
    """y = x @ W.T + b with W (and b) frozen; backward returns the input's gradient only."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(weight)
        ctx.input_dtype = x.dtype
        return F.linear(x.to(weight.dtype), weight, None if bias is None else bias.to(weight.dtype))

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (weight,) = ctx.saved_tensors
        grad_input = F.linear(grad.to(weight.dtype), weight.t().contiguous())
        return grad_input.to(ctx.input_dtype), None, None


def _linear_forward(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    w, b = self.weight, self.bias
    if (w.dtype == torch.bfloat16 and w.device.type == "cpu" and not w.requires_grad
            and (b is None or not b.requires_grad) and x.requires_grad and torch.is_grad_enabled()):
        return _FrozenBf16Linear.apply(x, w, b)
    return F.linear(x, w, b)


def use_fast_frozen_bf16_backward(model: nn.Module) -> int:
    """Give every nn.Linear in `model` the fast frozen-bf16 path; returns how many layers it touched.
    Idempotent; weights, state dicts and PEFT wrapping are unchanged."""
    count = 0
    for module in model.modules():
        if isinstance(module, nn.Linear) and type(module).forward is nn.Linear.forward:
            if getattr(module.forward, "__func__", None) is not _linear_forward:
                module.forward = types.MethodType(_linear_forward, module)
            count += 1
    return count
