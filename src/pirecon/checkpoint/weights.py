"""Safetensors <-> Pi0Policy: read a pirecon, openpi or LeRobot folder's weights into a policy.

The model is built on the `meta` device and materialised from the checkpoint tensors, so a
full-size checkpoint is ready in seconds; then adapted (`pirecon.model.adapt`) when the wanted
config differs in a supported way, and placed (`pirecon.model.placement`). Strict about missing
and unexpected keys. Foreign tensor names come from `pirecon.checkpoint.keys`; LoRA training
checkpoints are read by `pirecon.checkpoint.load`, which calls this module for their base.
"""

from __future__ import annotations

import ctypes
import dataclasses
import logging
import sys
from pathlib import Path

import torch

from pirecon.checkpoint import keys
from pirecon.checkpoint.folder_config import inspect, read_recon_config
from pirecon.checkpoint.layout import FORMAT_NAME, open_safetensors
from pirecon.configs.policy import PolicyConfig
from pirecon.errors import CheckpointError
from pirecon.model.adapt import ADAPTABLE, adapt_policy, needs_adapting
from pirecon.model.pi0 import Pi0Policy
from pirecon.model.placement import place

log = logging.getLogger(__name__)

def read_policy(source: str | Path | PolicyConfig, dtype: str | None = None,
                device: str | torch.device = "cpu", **overrides) -> Pi0Policy:
    """A policy from a PolicyConfig (random weights) or from a folder holding model.safetensors
    (pirecon, openpi, LeRobot), placed on `device` (`pirecon.model.placement.place`: a bfloat16
    policy on a CPU without bfloat16 arithmetic multiplies in float32).

    `dtype` ("float32" | "bfloat16") overrides the stored precision; other keyword arguments
    override PolicyConfig fields that do not change weight shapes (e.g. num_inference_steps).
    """
    policy = _read(source, dtype, device, overrides)
    place(policy, device, policy.config.torch_dtype)
    return policy


def _read(source: str | Path | PolicyConfig, dtype: str | None, device, overrides: dict) -> Pi0Policy:
    if isinstance(source, PolicyConfig):
        config = dataclasses.replace(source, **overrides)
        if dtype:
            config = dataclasses.replace(config, dtype=dtype)
        return Pi0Policy(config)
    folder = Path(source)
    config, weights, mapping, layout = inspect(folder)
    target = dataclasses.replace(config, **overrides)
    if dtype:
        target = dataclasses.replace(target, dtype=dtype)
    # Load at the folder's shapes, then adapt (interpolated positions, wider action/state padding).
    as_stored = dataclasses.replace(target, **{k: getattr(config, k) for k in ADAPTABLE})
    # Our own checkpoints keep their tensors bit for bit unless another dtype is asked for.
    convert = layout != FORMAT_NAME or target.dtype != config.dtype
    recon = read_recon_config(folder) if layout == FORMAT_NAME else None
    policy = _materialise(as_stored, weights, mapping, layout, device, convert, recon)
    return adapt_policy(policy, target) if needs_adapting(as_stored, target) else policy


def overrides_for(config: PolicyConfig) -> dict:
    """`read_policy` keyword arguments that give a folder's model exactly `config` (a resolved
    config of a run on that folder: every field but the fixed sizes)."""
    fixed = ("type", "variant", "vision_variant", "paligemma_variant", "action_expert_variant", "device")
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.name not in fixed}


def _materialise(config: PolicyConfig, weights: Path, mapping: dict[str, str], layout: str,
                 device, convert: bool, recon=None) -> Pi0Policy:
    """Build on `meta`, then assign the checkpoint tensors. Strict about missing/unexpected keys.

    A reconstruction head (our format only) is built for real after the backbone, then loaded."""
    with torch.device("meta"):
        policy = Pi0Policy(config)
    if recon is not None:
        head_keys = [k for k in mapping if k.startswith(keys.RECON_PREFIX)]
        mapping = {k: v for k, v in mapping.items() if not k.startswith(keys.RECON_PREFIX)}
    ours = list(policy.state_dict().keys())
    file_keys = set(mapping)  # canonical names -> names in the file
    if layout == FORMAT_NAME:
        to_file, droppable = {k: k for k in ours}, []
    else:
        to_file, droppable = keys.our_to_file(ours, file_keys)
        if to_file.get(keys.EMBED) == keys.TIED_LM_HEAD:
            log.info("using %s for the tied token embeddings", keys.TIED_LM_HEAD)
    missing = [k for k, name in to_file.items() if name not in file_keys]
    for name in droppable:
        log.info("dropping %s (%s)", mapping[name], keys.drop_reason(name))
    unexpected = [mapping[name] for name in sorted(file_keys - set(to_file.values()) - set(droppable))]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys: {[to_file[k] for k in missing][:20]}"
                         + (f" (+{len(missing) - 20} more)" if len(missing) > 20 else ""))
        if unexpected:
            parts.append(f"unexpected keys: {unexpected[:20]}"
                         + (f" (+{len(unexpected) - 20} more)" if len(unexpected) > 20 else ""))
        raise CheckpointError(f"{weights} ({layout} layout) does not match a {config.type} model with "
                              f"{config.paligemma_variant}/{config.action_expert_variant}: " + "; ".join(parts))
    state: dict[str, torch.Tensor] = {}
    expected = policy.state_dict()  # on meta: the shapes, and the dtypes Pi0Policy.apply_dtype gives
    with open_safetensors(weights, device=str(device)) as f:
        for key in ours:  # one tensor at a time, each read into memory it owns, converted at once
            tensor = f.get_tensor(mapping[to_file[key]])
            if tuple(tensor.shape) != tuple(expected[key].shape):
                raise CheckpointError(f"{weights}: {mapping[to_file[key]]} has shape {tuple(tensor.shape)}; the "
                                      f"model expects {tuple(expected[key].shape)}")
            state[key] = _converted(tensor, key, expected[key].dtype, config.torch_dtype) if convert else tensor
    policy.load_state_dict(state, strict=True, assign=True)
    del state
    if convert:
        _return_freed_memory()
    if recon is not None:
        policy.add_recon_head(recon)
        expected = set(policy.recon_head.state_dict())
        found = {k[len(keys.RECON_PREFIX):] for k in head_keys}
        if expected != found:
            raise CheckpointError(f"{weights}: reconstruction head keys differ from the config's head: missing "
                                  f"{sorted(expected - found)[:10]}, unexpected {sorted(found - expected)[:10]}")
        with open_safetensors(weights) as f:
            policy.recon_head.load_state_dict({k: f.get_tensor(keys.RECON_PREFIX + k) for k in expected})
    policy.apply_freeze()
    return policy


def _return_freed_memory() -> None:
    """Give the heap pages the tensors read before conversion occupied back to the system
    (glibc's malloc_trim; a no-op elsewhere): the process keeps them otherwise."""
    if sys.platform.startswith("linux"):
        trim = getattr(ctypes.CDLL(None), "malloc_trim", None)  # absent outside glibc (e.g. musl)
        if trim is not None:
            trim(0)


def _converted(tensor: torch.Tensor, key: str, dtype: torch.dtype, model_dtype: torch.dtype) -> torch.Tensor:
    """A stored tensor as `Pi0Policy.apply_dtype` leaves it: the backbone goes to the model's dtype
    first, then the float32 modules (inside it too) back to float32; so a float32 norm weight read
    for a bfloat16 model holds bfloat16 values, as openpi's loading gives it. Converting each
    tensor as it is read keeps the peak memory at the converted model plus one tensor."""
    if not tensor.is_floating_point():
        return tensor
    if key.startswith("backbone."):
        tensor = tensor.to(model_dtype)
    return tensor.to(dtype)
