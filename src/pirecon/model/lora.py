"""LoRA through PEFT: first fine-tune from a base model (`add_lora` with a plan from
`train/peft_plan.py`), resume (trainable), merge. SigLIP's own layers are adapted only when the
targets say so; what else trains in full is the plan's `full` list plus any auxiliary head.
"""

from __future__ import annotations

import re
import sys
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors import SafetensorError
from torch import nn

from pirecon.configs.train import PeftConfig
from pirecon.errors import CheckpointError, ConfigError
from pirecon.model.pi0 import Pi0Policy

if TYPE_CHECKING:
    from peft import LoraConfig, PeftModel  # lazy: peft imports transformers (~3 s); plain loads skip it

# peft (and the transformers it imports, ~3 s) is imported where an adapter is made or loaded, so
# loading a plain policy does not pay for it.

PEFT_PREFIX = "base_model.model."


def lora_config(plan, cfg: PeftConfig) -> LoraConfig:
    """PEFT's config for `plan` (a train.peft_plan.LoraPlan): explicit target names, the most
    common rank and alpha as defaults, the others as per-layer patterns."""
    from peft import LoraConfig  # lazy: peft imports transformers (~3 s); plain loads skip it

    rank = Counter(plan.ranks.values()).most_common(1)[0][0]
    alpha = Counter(plan.alphas.values()).most_common(1)[0][0]
    try:
        return LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=cfg.lora_dropout, target_modules=list(plan.targets),
                          rank_pattern={re.escape(t): r for t, r in plan.ranks.items() if r != rank},
                          alpha_pattern={re.escape(t): a for t, a in plan.alphas.items() if a != alpha},
                          init_lora_weights=True if cfg.init_type is None else cfg.init_type, bias="none")
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"--peft.*: PEFT refuses the LoRA settings ({exc})") from None


def base_policy(model: nn.Module) -> Pi0Policy:
    """The Pi0Policy inside a PeftModel (or the model itself)."""
    peft = sys.modules.get("peft")  # a PeftModel exists only once peft has been imported
    return model.get_base_model() if peft is not None and isinstance(model, peft.PeftModel) else model


def mark_trainable(model: nn.Module, full: tuple[str, ...]) -> None:
    """After PEFT froze every base weight: the modules named in `full` and auxiliary heads train."""
    policy = base_policy(model)
    modules = dict(policy.named_modules())
    for name in full:
        modules[name].requires_grad_(True)
    for head in auxiliary_heads(policy):
        head.requires_grad_(True)


def auxiliary_heads(policy: Pi0Policy) -> list[nn.Module]:
    return [m for m in (getattr(policy, "recon_head", None),) if m is not None]


def add_lora(policy: Pi0Policy, plan, cfg: PeftConfig) -> PeftModel:
    """First fine-tune: fresh adapters on a base model, as `plan` says."""
    from peft import get_peft_model  # lazy: peft imports transformers (~3 s); plain loads skip it

    model = get_peft_model(policy, lora_config(plan, cfg))
    mark_trainable(model, plan.full)
    return model


def load_lora(policy: Pi0Policy, adapter_dir: Path, trainable: bool) -> PeftModel:
    """Saved adapters onto a base model; `trainable=True` for resuming (PEFT's default is frozen;
    the modules trained in full are made trainable by `load_trainable_non_lora`)."""
    if not (adapter_dir / "adapter_config.json").is_file():
        raise CheckpointError(f"{adapter_dir}: no adapter_config.json; expected a PEFT adapter folder")
    from peft import PeftModel  # lazy: peft imports transformers (~3 s); plain loads skip it

    try:
        return PeftModel.from_pretrained(policy, str(adapter_dir), is_trainable=trainable)
    except (ValueError, OSError, KeyError, RuntimeError, SafetensorError) as exc:  # bad JSON, a damaged file
        raise CheckpointError(f"{adapter_dir}: cannot read the PEFT adapter ({str(exc).splitlines()[0]}); it is "
                              f"damaged or truncated") from None


def attach_lora(policy: Pi0Policy, adapter_dir: Path, trainable: bool) -> PeftModel:
    """Fresh adapters onto a base model as a saved adapter_config.json describes them (their
    weights come from elsewhere: `load_trained`)."""
    path = adapter_dir / "adapter_config.json"
    if not path.is_file():
        raise CheckpointError(f"{adapter_dir}: no adapter_config.json; expected a PEFT adapter folder")
    from peft import LoraConfig, PeftModel  # lazy: peft imports transformers (~3 s); plain loads skip it

    try:
        config = LoraConfig.from_pretrained(str(adapter_dir))
    except (ValueError, OSError, TypeError) as exc:
        raise CheckpointError(f"{path}: cannot read the adapter config ({str(exc).splitlines()[0]})") from None
    config.inference_mode = not trainable
    return PeftModel(policy, config)


def load_trained(model: PeftModel, state: dict[str, torch.Tensor], where: Path, trainable: bool) -> None:
    """A LoRA run's trained weights under the PeftModel's own parameter names (adapters and the
    weights trained in full, as a sharded checkpoint holds them) into `model`; `trainable`: they
    train on (resume)."""
    params = dict(model.named_parameters())
    adapters = {n for n in params if is_lora_param(n)}
    unknown, missing = sorted(set(state) - set(params)), sorted(adapters - set(state))
    if unknown or missing:
        raise CheckpointError(f"{where}: does not fit the adapter config: unknown weights {unknown[:10]}, adapter "
                              f"weights missing {missing[:10]}")
    _copy_into(params, state, where, trainable)


def is_lora_param(name: str) -> bool:
    return ".lora_" in name


def policy_key(name: str) -> str:
    """A parameter name of the (possibly PEFT-wrapped) model -> our plain state-dict key."""
    if name.startswith(PEFT_PREFIX):
        name = name[len(PEFT_PREFIX):]
    return re.sub(r"\.base_layer\.", ".", name)


def trainable_non_lora_state(model: nn.Module, state: dict | None = None) -> dict[str, torch.Tensor]:
    """Trainable weights that live outside the adapter (heads, vision, ...), under our key names;
    from `state` (the model's state dict, gathered from a sharded model) when given."""
    return {policy_key(n): (p.detach() if state is None else state[n]) for n, p in model.named_parameters()
            if p.requires_grad and not is_lora_param(n)}


def load_trainable_non_lora(model: nn.Module, state: dict[str, torch.Tensor], where: Path,
                            trainable: bool = False) -> None:
    """The weights trained in full next to the adapters; `trainable`: they train on (resume)."""
    params = {policy_key(n): p for n, p in model.named_parameters() if not is_lora_param(n)}
    unknown = sorted(set(state) - set(params))
    if unknown:
        raise CheckpointError(f"{where}: weights {unknown[:10]} do not exist in the model")
    _copy_into(params, state, where, trainable)


def _copy_into(params: dict[str, nn.Parameter], state: dict[str, torch.Tensor], where: Path, trainable: bool) -> None:
    """Each state tensor into the parameter of its name (shapes must agree), training on or not."""
    with torch.no_grad():
        for name, value in state.items():
            if params[name].shape != value.shape:
                raise CheckpointError(f"{where}: {name} has shape {tuple(value.shape)}; the model expects "
                                      f"{tuple(params[name].shape)}")
            params[name].copy_(value.to(params[name].dtype))
            params[name].requires_grad_(trainable)

