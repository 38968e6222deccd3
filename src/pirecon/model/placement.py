"""Placement: the one decision of where a policy runs and in which precision.

    placement = place(model, device, dtype, train=...)

moves the model to `device`, gives its weights their dtypes when it is about to train, and on a
CPU without bfloat16 arithmetic routes the frozen bfloat16 linear layers through float32 products
(`pirecon.model.cpu_bf16`). It returns the decision as a `Placement`, which `decide_placement`
also computes without a model or hardware (trainable weights: float32 master copies, or with
`full_bf16` bfloat16 like the frozen ones, as openpi's pytorch_training_precision=bfloat16):

    device        dtype      autocast_dtype  float32_products
    cuda          bfloat16   bfloat16        False
    cpu (native)  bfloat16   bfloat16        False   (AVX512-BF16 / AMX: oneDNN's bfloat16 kernels)
    cpu (other)   bfloat16   bfloat16        True    (frozen linears multiply in float32)
    any           float32    None            False

`autocast_dtype` is the autocast of the training forward (accelerate's `mixed_precision`);
inference runs without autocast. Every command that builds or loads a policy for use goes
through `place` (`pirecon.checkpoint.weights.read_policy`, `PolicyRunner.from_checkpoint`, the Trainer);
`resolve_device` turns a `--policy.device` value into a device or a `ConfigError`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from pirecon.configs.policy import check_device_flag
from pirecon.errors import ConfigError
from pirecon.model import cpu_bf16


@dataclass(frozen=True)
class Placement:
    device: torch.device
    dtype: torch.dtype  # the frozen big matrices
    autocast_dtype: torch.dtype | None  # the training forward's autocast; None: no autocast
    float32_products: bool  # frozen bfloat16 linear layers multiply in float32 (CPU without bf16 arithmetic)
    trainable_dtype: torch.dtype = torch.float32  # trained weights (float32 master copies unless full_bf16)


def decide_placement(device: str | torch.device, dtype: torch.dtype, cpu_has_bf16: bool | None = None,
                     full_bf16: bool = False) -> Placement:
    """The decision for a model of `dtype` on `device` ("cpu", "cuda", "cuda:1", ...).
    `cpu_has_bf16`: whether the CPU computes in bfloat16 natively; None asks this CPU (only when
    it matters: a bfloat16 model on the CPU). `full_bf16`: trained weights in bfloat16 too."""
    device = torch.device(device)
    if dtype not in (torch.float32, torch.bfloat16):
        raise ValueError(f"dtype {dtype}: expected torch.float32 or torch.bfloat16")
    if full_bf16 and dtype != torch.bfloat16:
        raise ValueError(f"full_bf16 needs dtype torch.bfloat16, got {dtype}")
    low = dtype == torch.bfloat16
    on_cpu = device.type == "cpu"
    if low and on_cpu and cpu_has_bf16 is None:
        cpu_has_bf16 = cpu_bf16.cpu_has_bf16_arithmetic()
    return Placement(device=device, dtype=dtype, autocast_dtype=dtype if low else None,
                     float32_products=low and on_cpu and not cpu_has_bf16,
                     trainable_dtype=dtype if full_bf16 else torch.float32)


def place(model: nn.Module, device: str | torch.device, dtype: torch.dtype, train: bool = False,
          full_bf16: bool = False) -> Placement:
    """Put `model` (a Pi0Policy, or a PeftModel around one) on `device` as `decide_placement` says.

    `train=True`: the weights that require a gradient are the trained ones; they get float32
    master copies (`full_bf16`: they stay in bfloat16), the other weights go to `dtype` except
    those of the policy's float32 modules.
    `train=False` (inference): the dtypes the model was built or loaded with are kept.
    """
    placement = decide_placement(device, dtype, full_bf16=full_bf16)
    if train:
        _set_training_dtypes(model, dtype, placement.trainable_dtype)
    model.to(placement.device)
    if placement.float32_products:
        cpu_bf16.route_frozen_bf16_linears(model)
        cpu_bf16.keep_large_buffers_off_the_heap()  # float32 products: transient buffers on every layer
    else:
        cpu_bf16.unroute_linears(model)
    return placement


def _set_training_dtypes(model: nn.Module, dtype: torch.dtype, trainable_dtype: torch.dtype = torch.float32) -> None:
    """Trainable weights in `trainable_dtype`, the direct weights of the float32 modules (norms, patch
    and position embeddings, expert projections) in float32 whatever their trainability, the rest in
    `dtype`. Only direct weights: a frozen AdaRMSNorm's `dense` layer goes to `dtype`."""
    policy = model.get_base_model() if hasattr(model, "get_base_model") else model  # PEFT
    keep32 = {id(p) for m in policy.float32_modules() for p in m.parameters(recurse=False)}
    with torch.no_grad():
        for p in model.parameters():
            target = torch.float32 if id(p) in keep32 else trainable_dtype if p.requires_grad else dtype
            if p.dtype != target:
                p.data = p.data.to(target)


def resolve_device(value: str | torch.device, flag: str = "--policy.device") -> torch.device:
    """auto | cpu | cuda | cuda:N -> a device of this machine (auto: cuda when available, else cpu);
    a device this machine lacks is a ConfigError naming `flag`, what was found and what is there."""
    if isinstance(value, torch.device):
        value = str(value)
    check_device_flag(value, flag)
    cuda = torch.cuda.is_available()
    if value == "auto":
        return torch.device("cuda" if cuda else "cpu")
    device = torch.device(value)
    if device.type == "cpu":
        return device
    count = torch.cuda.device_count() if cuda else 0
    if count == 0:
        why = (f"this torch {torch.__version__} is built without CUDA" if torch.version.cuda is None
               else "torch.cuda.is_available() is False (no GPU or no driver)")
        raise ConfigError(f"{flag}={value}: found no CUDA device ({why}); available: auto, cpu")
    if device.index is not None and device.index >= count:
        names = ", ".join(f"cuda:{i}" for i in range(count))
        raise ConfigError(f"{flag}={value}: found {count} CUDA device{'s' if count > 1 else ''}; "
                          f"available: auto, cpu, cuda, {names}")
    return device
