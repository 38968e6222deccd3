"""bfloat16 on CPUs that have no bfloat16 arithmetic.

Most laptop and server CPUs (AVX2, AVX-512 without the BF16 extension; this project's CI) have no
bfloat16 matrix instructions. There PyTorch emulates bfloat16 matrix products and attention, and
pays for it (measured on a 2-core AVX2 machine, one thread):

    product                                          float32     bfloat16
    x @ W.T, 300 x 2048 @ 2048 x 16384 (Gemma MLP)    0.54 s      2.9 s
    g @ W (grad-input of a frozen linear layer)       1.0 s       36 s   (a reference kernel)
    attention fwd+bwd, 8 heads x 850 tokens x 256     0.44 s      3.6 s

A bfloat16 model is still what a user wants there when memory is the limit (a full-size Pi0.5
LoRA step fits in 10 GiB only with a bfloat16 base). So on such CPUs the frozen bfloat16 linear
layers keep their weights in bfloat16 but multiply in float32 (a transient float32 copy of one
weight at a time), and attention over bfloat16 inputs runs in float32; results are returned in
bfloat16, as the layers would have produced. Where the CPU computes in bfloat16 (AVX512-BF16, AMX)
PyTorch's own kernels are fast, the grad-input `g @ W` included (measured with oneDNN limited to
AVX512-BF16, and with AMX: as fast as the forward product), and nothing is rerouted; nor on GPUs.

`route_frozen_bf16_linears(model)` installs the linear-layer routing (idempotent; weights, state
dicts and PEFT wrapping are unchanged) and `unroute_linears(model)` removes it; placement
(`pirecon.model.placement.place`) decides which, once per model. `scaled_dot_product_attention`
is the attention call the model modules use. `assume_bf16_arithmetic(True)` makes it act as on a
CPU with bfloat16 arithmetic (`pirecon plan` counts a GPU's pass on fake CPU tensors).

The float32 products allocate and free large transient buffers layer after layer. glibc's malloc
raises its mmap threshold each time such a buffer is freed, so later buffers of a few MB come from
the heap, which fragments and never shrinks: a full-size 3-view Pi0.5 LoRA step peaked at
11.1 GiB RSS instead of 7.2. `keep_large_buffers_off_the_heap()` fixes the threshold at 1 MiB (as the
environment variable MALLOC_MMAP_THRESHOLD_ would); placement calls it wherever it routes the layers.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import sys
import types

import torch
import torch.nn.functional as F
from torch import nn


@functools.cache
def cpu_has_bf16_arithmetic() -> bool:
    """True when the CPU computes in bfloat16 natively (AVX512-BF16 or AMX tiles)."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # private but long-standing
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


_assumed_arithmetic: bool | None = None  # set by assume_bf16_arithmetic; None: ask the CPU


@contextlib.contextmanager
def assume_bf16_arithmetic(native: bool):
    """Within the block, `emulated_bf16` answers as on a CPU that does (True) or does not (False)
    compute in bfloat16 natively, whatever this CPU does."""
    global _assumed_arithmetic
    before, _assumed_arithmetic = _assumed_arithmetic, native
    try:
        yield
    finally:
        _assumed_arithmetic = before


def emulated_bf16(t: torch.Tensor) -> bool:
    """True for a bfloat16 CPU tensor on a CPU without bfloat16 arithmetic."""
    if t.dtype != torch.bfloat16 or t.device.type != "cpu":
        return False  # before asking the CPU: torch.compile cannot trace the probe, float32 never needs it
    return not (cpu_has_bf16_arithmetic() if _assumed_arithmetic is None else _assumed_arithmetic)


@functools.cache
def keep_large_buffers_off_the_heap(threshold: int = 1 << 20) -> bool:
    """Serve every allocation of `threshold` bytes or more by mmap, so freeing it returns the memory
    (glibc only; a user's MALLOC_MMAP_THRESHOLD_ wins). Returns whether the setting is in force."""
    if not sys.platform.startswith("linux"):
        return False
    if "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return True
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)  # absent outside glibc (e.g. musl)
    M_MMAP_THRESHOLD = -3
    return bool(mallopt is not None and mallopt(M_MMAP_THRESHOLD, threshold) == 1)


def scaled_dot_product_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                 attn_mask: torch.Tensor | None = None) -> torch.Tensor:
    """`F.scaled_dot_product_attention`, computed in float32 for bfloat16 CPU inputs where the CPU
    only emulates bfloat16 (8x faster backward there); the result keeps the inputs' dtype.
    `attn_mask`: boolean (True: may attend) or additive; a boolean mask is passed on as it is."""
    if not emulated_bf16(q):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
    if attn_mask is not None and attn_mask.dtype != torch.bool:
        attn_mask = attn_mask.float()
    with torch.autocast("cpu", enabled=False):
        out = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=attn_mask)
    return out.to(q.dtype)


class _Float32FrozenLinear(torch.autograd.Function):
    """y = x @ W.T + b computed in float32 from a frozen bfloat16 W (and b); y in bfloat16.
    Backward returns the input's gradient only (W and b are frozen)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(weight)
        ctx.input_dtype = x.dtype
        with torch.autocast("cpu", enabled=False):
            y = F.linear(x.float(), weight.float(), None if bias is None else bias.float())
        return y.to(weight.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (weight,) = ctx.saved_tensors
        with torch.autocast("cpu", enabled=False):
            grad_input = grad.float() @ weight.float()
        return grad_input.to(ctx.input_dtype), None, None


def _linear_forward(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    w, b = self.weight, self.bias
    if w.dtype != torch.bfloat16 or w.device.type != "cpu":
        return F.linear(x, w, b)
    # Without grad (inference) nothing trains: every layer counts as frozen.
    if torch.is_grad_enabled() and (w.requires_grad or (b is not None and b.requires_grad)):
        return F.linear(x, w, b)  # a trainable bfloat16 layer: PyTorch's own autograd
    return _Float32FrozenLinear.apply(x, w, b)  # builds no graph without grad


def _routable(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) and type(module).forward is nn.Linear.forward


def route_frozen_bf16_linears(model: nn.Module) -> int:
    """Give every nn.Linear in `model` the float32-products routing above; returns how many layers
    it touched."""
    count = 0
    for module in model.modules():
        if _routable(module):
            if getattr(module.forward, "__func__", None) is not _linear_forward:
                module.forward = types.MethodType(_linear_forward, module)
            count += 1
    return count


def unroute_linears(model: nn.Module) -> int:
    """Give the routed linear layers of `model` back nn.Linear's own forward; returns how many."""
    count = 0
    for module in model.modules():
        if _routable(module) and getattr(module.__dict__.get("forward"), "__func__", None) is _linear_forward:
            del module.forward
            count += 1
    return count
