"""Which weights a LoRA fine-tune adapts and which it trains in full: `--peft.preset`.

- `lerobot` (the default, as `lerobot-train`): every base weight frozen; LoRA on
  `--peft.target_modules` (default LeRobot's: q_proj and v_proj of the action expert, and the
  projections around it); `--peft.full_training_modules` (PEFT's modules_to_save) trained in full;
  alpha PEFT's default 8 unless `--peft.lora_alpha`.
- `openpi` (openpi's `pi0_libero_low_mem_finetune` practice): LoRA on the attention and MLP
  projections of both Gemma stacks, rank 16 on the VLM and 32 on the action expert (openpi's
  gemma_2b_lora / gemma_300m_lora), alpha = rank; SigLIP, the projector (unless
  --policy.freeze_vision_encoder / --policy.train_expert_only) and the projections around the
  expert trained in full.

Targets and modules are matched as PEFT matches them (a string: `re.fullmatch`; a list: the name
or a `.`-suffix of it; modules_to_save: a suffix), against pirecon's module names and against the
names LeRobot's model gives the same modules, so LeRobot's regexes and lists work unchanged. An
auxiliary head (reconstruction) always trains in full.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

from torch import nn

from pirecon.configs.train import PeftConfig
from pirecon.errors import ConfigError
from pirecon.checkpoint.keys import lerobot_module_name
from pirecon.model.lora import add_lora

# LeRobot's default LoRA targets for pi0 and pi05 (PI0Policy / PI05Policy._get_default_peft_targets).
LEROBOT_TARGETS = (r"(.*\.gemma_expert\..*\.self_attn\.(q|v)_proj|model\.(state_proj|action_in_proj|action_out_proj"
                   r"|action_time_mlp_in|action_time_mlp_out))")
OPENPI_LAYER_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
OPENPI_RANKS = {"vlm": 16, "expert": 32}  # openpi's gemma_2b_lora and gemma_300m_lora
# Trained in full under openpi's LoRA: the projections around the action expert and the time MLPs.
OPENPI_FULL = ("action_in_proj", "action_out_proj", "state_proj", "action_time_mlp_in", "action_time_mlp_out",
               "time_mlp_in", "time_mlp_out")
LEROBOT_DEFAULT_ALPHA = 8  # PEFT's LoraConfig default, which LeRobot keeps when --peft.lora_alpha is unset
AUXILIARY = ("recon_head",)


@dataclass(frozen=True)
class LoraPlan:
    targets: tuple[str, ...]  # pirecon module names that get adapters
    ranks: dict[str, int]  # target -> rank
    alphas: dict[str, int]  # target -> alpha
    full: tuple[str, ...]  # module names trained in full (besides auxiliary heads)
    description: str  # one line for the start-up summary


def lora_plan(policy: nn.Module, cfg: PeftConfig, foreign_name: Callable[[str], str | None]) -> LoraPlan:
    """The plan for `policy` (a Pi0Policy); `foreign_name(module name) -> LeRobot's name or None`."""
    linear = {name: m for name, m in policy.named_modules()
              if isinstance(m, nn.Linear) and not name.startswith(AUXILIARY)}
    names = {name: foreign_name(name) for name in linear}  # ours -> LeRobot's (None: it has none)
    if cfg.target_modules is not None:
        targets = _match_targets(cfg.target_modules, names, policy, foreign_name)
    elif cfg.preset == "openpi":
        targets = [n for n in linear if re.fullmatch(
            rf"backbone\.(vlm|expert)\.layers\.\d+\.({'|'.join(map(re.escape, OPENPI_LAYER_TARGETS))})", n)]
    else:
        targets = _match_targets(LEROBOT_TARGETS, names, policy, foreign_name)
    if not targets:
        raise ConfigError(f"--peft.target_modules={cfg.target_modules!r} matches no linear layer of the model")
    ranks = {t: cfg.r if cfg.r is not None else
             (OPENPI_RANKS["expert" if t.startswith("backbone.expert.") else "vlm"] if cfg.preset == "openpi" else 16)
             for t in targets}
    alphas = {t: cfg.lora_alpha if cfg.lora_alpha is not None else
              (ranks[t] if cfg.preset == "openpi" else LEROBOT_DEFAULT_ALPHA) for t in targets}
    full = _full_modules(policy, cfg, foreign_name)
    overlap = sorted(set(targets) & set(full))
    if overlap:
        raise ConfigError(f"--peft.full_training_modules and --peft.target_modules both name {overlap[:3]}: a "
                          f"module gets adapters or trains in full, not both")
    return LoraPlan(tuple(targets), ranks, alphas, tuple(full), _describe(cfg, targets, ranks, alphas, full))


def _match_targets(target, names: dict[str, str | None], policy: nn.Module,
                   foreign_name: Callable[[str], str | None]) -> list[str]:
    """PEFT's rule: a string is a regex that must match a whole name; a list entry matches the
    name itself or a `.`-separated suffix of it. 'all-linear' is every linear layer."""
    if target == "all-linear":
        return list(names)
    if isinstance(target, str):
        try:
            pattern = re.compile(target)
        except re.error as exc:
            raise ConfigError(f"--peft.target_modules={target!r}: not a regular expression ({exc})") from None
        hit = lambda name: pattern.fullmatch(name) is not None  # noqa: E731
        wrong = [n for n, _ in policy.named_modules() if n and n not in names and not n.startswith(AUXILIARY)
                 and (hit(n) or hit(foreign_name(n) or n))]
    else:
        hit = lambda name: any(name == t or name.endswith("." + t) for t in target)  # noqa: E731
        wrong = []
    found = [ours for ours, theirs in names.items() if hit(ours) or (theirs is not None and hit(theirs))]
    if isinstance(target, str) and not found and wrong:
        raise ConfigError(f"--peft.target_modules={target!r} matches {wrong[:3]}, which are not linear layers; "
                          f"LoRA adapts linear layers")
    return found


def _full_modules(policy: nn.Module, cfg: PeftConfig, foreign_name: Callable[[str], str | None]) -> list[str]:
    """Modules trained in full next to the adapters (PEFT's modules_to_save: a name suffix)."""
    if cfg.full_training_modules is not None:
        modules = [n for n, _ in policy.named_modules() if n and not n.startswith(AUXILIARY)]
        found = []
        for entry in cfg.full_training_modules:
            hits = [n for n in modules if n.endswith(entry) or (foreign_name(n) or "").endswith(entry)]
            if not hits:
                raise ConfigError(f"--peft.full_training_modules: {entry!r} names no module of the model "
                                  f"(e.g. action_in_proj, backbone.vision)")
            found += [n for n in hits if not any(n.startswith(h + ".") for h in hits)]
        return sorted(set(found))
    if cfg.preset != "openpi":
        return []
    config = policy.config
    full = [name for name in OPENPI_FULL if getattr(policy, name, None) is not None]
    if not (config.freeze_vision_encoder or config.train_expert_only):
        full.append("backbone.vision")
    if not config.train_expert_only:
        full.append("backbone.projector")
    return full


def _describe(cfg: PeftConfig, targets: list[str], ranks: dict, alphas: dict, full: list[str]) -> str:
    kinds = sorted({re.sub(r"\.layers\.\d+\.", ".*.", t) for t in targets})
    shown = ", ".join(kinds[:6]) + (f", ... ({len(kinds)} kinds)" if len(kinds) > 6 else "")
    rank_text = "/".join(str(r) for r in sorted(set(ranks.values())))
    alpha_text = "/".join(str(a) for a in sorted(set(alphas.values())))
    trained = ", ".join(full) if full else "nothing else"
    return (f"LoRA ({cfg.preset} preset) r={rank_text} alpha={alpha_text} on {len(targets)} layers ({shown}); "
            f"in full: {trained}")


def reaches_image_tokens(plan: LoraPlan) -> bool:
    """Whether anything that shapes the VLM's image tokens trains (the reconstruction loss needs it)."""
    shaping = ("backbone.vlm.", "backbone.vision", "backbone.projector")
    return any(name.startswith(shaping) for name in (*plan.targets, *plan.full))


def apply_lora(policy: nn.Module, cfg: PeftConfig):
    """`policy` wrapped with fresh adapters as `cfg` plans them (a PeftModel)."""
    return add_lora(policy, lora_plan(policy, cfg, lerobot_module_name), cfg)
