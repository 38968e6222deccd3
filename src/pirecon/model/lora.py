"""LoRA through PEFT: first fine-tune from a base model, resume (trainable), merge.

Adapters sit on the attention and MLP projections of both Gemma stacks (openpi's LoRA configs);
SigLIP is never adapted. Under LoRA the Gemma weights are frozen, while the projections around
the action expert, the time MLPs (`PeftConfig.fully_trained`), the vision tower and projector
(unless `freeze_vision_encoder` / `train_expert_only`) and any auxiliary head train in full.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn

from pirecon.errors import CheckpointError
from pirecon.model.pi0 import Pi0Policy
from pirecon.configs.train import DEFAULT_FULLY_TRAINED, PeftConfig

PEFT_PREFIX = "base_model.model."
_MLP = {"gate_proj", "up_proj", "down_proj"}


def target_regex(targets: tuple[str, ...]) -> str:
    """A PEFT `target_modules` regex (full match) covering `targets` in both Gemma stacks only."""
    names = "|".join(f"mlp\\.{t}" if t in _MLP else t for t in targets)
    return rf"backbone\.(vlm|expert)\.layers\.\d+\.({names})"


def lora_config(cfg: PeftConfig) -> LoraConfig:
    return LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=target_regex(cfg.targets), bias="none")


def base_policy(model: nn.Module) -> Pi0Policy:
    """The Pi0Policy inside a PeftModel (or the model itself)."""
    return model.get_base_model() if isinstance(model, PeftModel) else model


def mark_fully_trained(model: nn.Module, cfg: PeftConfig) -> None:
    """Make the non-LoRA trainable parts trainable again after PEFT froze everything."""
    policy = base_policy(model)
    for name in cfg.fully_trained or DEFAULT_FULLY_TRAINED:
        module = getattr(policy, name, None)
        if module is not None:
            module.requires_grad_(True)
    if not (policy.config.freeze_vision_encoder or policy.config.train_expert_only):
        policy.backbone.vision.requires_grad_(True)
    if not policy.config.train_expert_only:
        policy.backbone.projector.requires_grad_(True)
    for head in auxiliary_heads(policy):
        head.requires_grad_(True)


def auxiliary_heads(policy: Pi0Policy) -> list[nn.Module]:
    return [m for m in (getattr(policy, "recon_head", None),) if m is not None]


def add_lora(policy: Pi0Policy, cfg: PeftConfig) -> PeftModel:
    """First fine-tune: fresh adapters on a base model (no adapter_config.json needed)."""
    model = get_peft_model(policy, lora_config(cfg))
    mark_fully_trained(model, cfg)
    return model


def load_lora(policy: Pi0Policy, adapter_dir: Path, cfg: PeftConfig, trainable: bool) -> PeftModel:
    """Saved adapters onto a base model; `trainable=True` for resuming (PEFT's default is frozen)."""
    if not (adapter_dir / "adapter_config.json").is_file():
        raise CheckpointError(f"{adapter_dir}: no adapter_config.json; expected a PEFT adapter folder")
    model = PeftModel.from_pretrained(policy, str(adapter_dir), is_trainable=trainable)
    if trainable:
        mark_fully_trained(model, cfg)
    return model


def is_lora_param(name: str) -> bool:
    return ".lora_" in name


def policy_key(name: str) -> str:
    """A parameter name of the (possibly PEFT-wrapped) model -> our plain state-dict key."""
    if name.startswith(PEFT_PREFIX):
        name = name[len(PEFT_PREFIX):]
    return re.sub(r"\.base_layer\.", ".", name)


def trainable_non_lora_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Trainable weights that live outside the adapter (heads, vision, ...), under our key names."""
    return {policy_key(n): p.detach() for n, p in model.named_parameters()
            if p.requires_grad and not is_lora_param(n)}


def load_trainable_non_lora(model: nn.Module, state: dict[str, torch.Tensor], where: Path) -> None:
    params = {policy_key(n): p for n, p in model.named_parameters() if not is_lora_param(n)}
    unknown = sorted(set(state) - set(params))
    if unknown:
        raise CheckpointError(f"{where}: weights {unknown[:10]} do not exist in the model")
    with torch.no_grad():
        for key, value in state.items():
            if params[key].shape != value.shape:
                raise CheckpointError(f"{where}: {key} has shape {tuple(value.shape)}; the model expects "
                                      f"{tuple(params[key].shape)}")
            params[key].copy_(value.to(params[key].dtype))

