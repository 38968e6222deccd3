"""Checkpoint I/O — the ONE place that knows foreign checkpoint key names.

Layouts read from a local folder:
- pirecon: `config.json` {"format": "pirecon", "policy": {...}} + `model.safetensors` (our keys);
- openpi PyTorch: `config.json` {action_dim, action_horizon, paligemma_variant,
  action_expert_variant, precision} + `model.safetensors` under `paligemma_with_expert.*` keys;
- LeRobot: `config.json` {"type": "pi0"|"pi05", ...} + `model.safetensors` with the openpi keys
  under a `model.` prefix.

The model is built on the `meta` device and materialised from the checkpoint tensors, so a
full-size checkpoint is ready in seconds. `save_foreign_weights` writes the openpi / LeRobot
tensor names back (`pirecon export --format=...`); the JSON and statistics files around foreign
weights are read by `pirecon.model.foreign` and written by `pirecon.model.foreign_write`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from pirecon.configs.policy import PolicyConfig
from pirecon.configs.parse import from_dict, load_json, to_dict
from pirecon.errors import CheckpointError, ConfigError
from pirecon.model import foreign
from pirecon.model.adapt import ADAPTABLE, adapt_policy, needs_adapting
from pirecon.model.pi0 import Pi0Policy
from pirecon.model.placement import place
from pirecon.configs.variants import GEMMA_VARIANTS, VISION_VARIANTS

log = logging.getLogger(__name__)

WEIGHTS_FILE = "model.safetensors"
RECON_PREFIX = "recon_head."
CONFIG_FILE = "config.json"
FORMAT_NAME = "pirecon"

# ---------------------------------------------------------------------------------------------
# Key names: ours <-> openpi (LeRobot = "model." + openpi)

_PALI = "paligemma_with_expert.paligemma.model."
_EXPERT = "paligemma_with_expert.gemma_expert.model."

_VISION_RULES = [
    (r"^patch_embed\.", "embeddings.patch_embedding."),
    (r"^pos_embed\.", "embeddings.position_embedding."),
    (r"^post_norm\.", "post_layernorm."),
    (r"^layers\.(\d+)\.([qkv])_proj\.", r"encoder.layers.\1.self_attn.\2_proj."),
    (r"^layers\.(\d+)\.o_proj\.", r"encoder.layers.\1.self_attn.out_proj."),
    (r"^layers\.(\d+)\.(fc[12])\.", r"encoder.layers.\1.mlp.\2."),
    (r"^layers\.(\d+)\.(layer_norm[12])\.", r"encoder.layers.\1.\2."),
]
_GEMMA_RULES = [
    (r"^layers\.(\d+)\.([qkvo])_proj\.", r"layers.\1.self_attn.\2_proj."),
    (r"^layers\.(\d+)\.input_norm\.", r"layers.\1.input_layernorm."),
    (r"^layers\.(\d+)\.post_attn_norm\.", r"layers.\1.post_attention_layernorm."),
    (r"^layers\.(\d+)\.mlp\.", r"layers.\1.mlp."),
    (r"^embed_tokens\.", "embed_tokens."),
    (r"^norm\.", "norm."),
]
_FAMILIES = [
    ("backbone.vision.", _PALI + "vision_tower.vision_model.", _VISION_RULES),
    ("backbone.projector.", _PALI + "multi_modal_projector.linear.", [(r"^", "")]),
    ("backbone.vlm.", _PALI + "language_model.", _GEMMA_RULES),
    ("backbone.expert.", _EXPERT, _GEMMA_RULES),
]
_HEAD_KEYS = re.compile(r"^(action_in_proj|action_out_proj|state_proj|action_time_mlp_in|action_time_mlp_out|"
                        r"time_mlp_in|time_mlp_out)\.")

# Keys older transformers versions used inside openpi/LeRobot checkpoints.
_ALIASES = [
    ("paligemma_with_expert.paligemma.language_model.model.", _PALI + "language_model."),
    ("paligemma_with_expert.paligemma.language_model.", _PALI + "language_model."),
    ("paligemma_with_expert.paligemma.vision_tower.", _PALI + "vision_tower."),
    ("paligemma_with_expert.paligemma.multi_modal_projector.", _PALI + "multi_modal_projector."),
]
# Present in released checkpoints, unused by the policy.
_UNUSED = {
    "paligemma_with_expert.gemma_expert.lm_head.weight": "the action expert's lm_head is never used",
    "paligemma_with_expert.gemma_expert.model.embed_tokens.weight": "the action expert takes no tokens",
}
_TIED_LM_HEAD = "paligemma_with_expert.paligemma.lm_head.weight"
_EXPERT_LM_HEAD = "paligemma_with_expert.gemma_expert.lm_head.weight"
FOREIGN_LAYOUTS = ("openpi", "lerobot")


def openpi_key(our_key: str) -> str:
    """Our state-dict key -> the openpi PyTorch checkpoint key."""
    if _HEAD_KEYS.match(our_key):
        return our_key
    for ours, theirs, rules in _FAMILIES:
        if our_key.startswith(ours):
            rest = our_key[len(ours):]
            for pattern, repl in rules:
                new, count = re.subn(pattern, repl, rest, count=1)
                if count:
                    return theirs + new
    raise KeyError(f"no openpi name for {our_key!r}")


def lerobot_module_name(name: str) -> str | None:
    """Our module name -> the name LeRobot's model gives the same module (None: it has none)."""
    try:
        return "model." + openpi_key(name + ".weight")[:-len(".weight")]
    except KeyError:
        return None


def foreign_state_dict(policy: Pi0Policy, layout: str) -> dict[str, torch.Tensor]:
    """The policy's tensors under openpi (or LeRobot: "model." + openpi) names, as released
    checkpoints hold them: with the unused expert lm_head (zeros), which strict loaders expect;
    the PaliGemma lm_head stays tied to embed_tokens and is not written."""
    if layout not in FOREIGN_LAYOUTS:
        raise ValueError(f"layout {layout!r}: expected one of {FOREIGN_LAYOUTS}")
    state = {openpi_key(k): v.detach().contiguous().cpu() for k, v in policy.state_dict().items()
             if not k.startswith(RECON_PREFIX)}
    expert = policy.config.expert
    like = policy.backbone.expert.layers[0].mlp.up_proj.weight
    state[_EXPERT_LM_HEAD] = torch.zeros(expert.vocab_size, expert.width, dtype=like.dtype)
    prefix = "model." if layout == "lerobot" else ""
    return {prefix + k: v for k, v in state.items()}


def save_foreign_weights(policy: Pi0Policy, path: str | Path, layout: str) -> Path:
    """Write `model.safetensors` in the openpi or LeRobot layout (config files: `foreign_write`)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    save_file(foreign_state_dict(policy, layout), str(path / WEIGHTS_FILE), metadata={"format": "pt"})
    return path / WEIGHTS_FILE


def _canonical_openpi(key: str) -> str:
    for old, new in _ALIASES:
        if key.startswith(old):
            return new + key[len(old):]
    return key


# ---------------------------------------------------------------------------------------------
# Save / load


def save_policy(policy: Pi0Policy, path: str | Path, extra_config: dict | None = None) -> Path:
    """Write `config.json` + `model.safetensors` (our key names, tensors as they are)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in policy.state_dict().items()}
    save_file(state, str(path / WEIGHTS_FILE), metadata={"format": FORMAT_NAME})
    config = {"format": FORMAT_NAME, "policy": to_dict(policy.config), **(extra_config or {})}
    if policy.recon_head is not None:
        config["recon"] = to_dict(policy.recon_config)
    (path / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    return path


def load_policy(path_or_config: str | Path | PolicyConfig, dtype: str | None = None,
                device: str | torch.device = "cpu", **overrides) -> Pi0Policy:
    """A policy from a PolicyConfig (random weights) or from a local checkpoint folder, placed on
    `device` (`pirecon.model.placement.place`: a bfloat16 policy on a CPU without bfloat16
    arithmetic multiplies in float32).

    `dtype` ("float32" | "bfloat16") overrides the stored precision; other keyword arguments
    override PolicyConfig fields that do not change weight shapes (e.g. num_inference_steps).
    """
    policy = _load(path_or_config, dtype, device, overrides)
    place(policy, device, policy.config.torch_dtype)
    return policy


def _load(path_or_config: str | Path | PolicyConfig, dtype: str | None, device, overrides: dict) -> Pi0Policy:
    if isinstance(path_or_config, PolicyConfig):
        config = dataclasses.replace(path_or_config, **overrides)
        if dtype:
            config = dataclasses.replace(config, dtype=dtype)
        return Pi0Policy(config)
    folder = Path(path_or_config)
    if (folder / "adapter").is_dir() and (folder / CONFIG_FILE).is_file():
        # A LoRA training checkpoint: base + adapter, merged for inference.
        from pirecon.train.checkpoint import load_checkpoint_model
        return load_checkpoint_model(folder, merge_lora=True, dtype=dtype)
    config, weights, mapping, layout = _inspect(folder)
    target = dataclasses.replace(config, **overrides)
    if dtype:
        target = dataclasses.replace(target, dtype=dtype)
    # Load at the folder's shapes, then adapt (interpolated positions, wider action/state padding).
    as_stored = dataclasses.replace(target, **{k: getattr(config, k) for k in ADAPTABLE})
    # Our own checkpoints keep their tensors bit for bit unless another dtype is asked for.
    convert = layout != FORMAT_NAME or target.dtype != config.dtype
    recon = _read_recon_config(folder) if layout == FORMAT_NAME else None
    policy = _materialise(as_stored, weights, mapping, layout, device, convert, recon)
    return adapt_policy(policy, target) if needs_adapting(as_stored, target) else policy


def overrides_for(config: PolicyConfig) -> dict:
    """`load_policy` keyword arguments that give a folder's model exactly `config` (a resolved
    config of a run on that folder: every field but the fixed sizes)."""
    fixed = ("type", "variant", "vision_variant", "paligemma_variant", "action_expert_variant", "device")
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.name not in fixed}


def _read_recon_config(folder: Path):
    data = _read_config(folder).get("recon")
    if not data or not data.get("enable"):
        return None
    from pirecon.configs.recon import ReconConfig
    return from_dict(ReconConfig, data, where=f"{folder / CONFIG_FILE}:recon")


def peek_config(folder: str | Path) -> PolicyConfig:
    """The PolicyConfig of a checkpoint folder, without reading any weights."""
    return _inspect(Path(folder))[0]


def _inspect(folder: Path) -> tuple[PolicyConfig, Path, dict[str, str], str]:
    """(config, weights file, canonical key -> key in file, layout) of a checkpoint folder."""
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: checkpoint folder not found (expected a folder with {WEIGHTS_FILE} "
                              f"and {CONFIG_FILE})")
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        found = sorted(p.name for p in folder.iterdir())[:10]
        raise CheckpointError(f"{folder}: no {WEIGHTS_FILE} (found {found or 'nothing'}); expected a pirecon, "
                              f"openpi or LeRobot checkpoint folder")
    config_json = _read_config(folder)
    with safe_open(str(weights), framework="pt") as f:
        keys = list(f.keys())
        metadata = f.metadata() or {}
    layout = _detect_layout(config_json, keys, metadata)
    if layout == FORMAT_NAME:
        config = from_dict(PolicyConfig, config_json["policy"], where=f"{folder / CONFIG_FILE}:policy")
        mapping = {k: k for k in keys}
    else:
        prefix = "model." if layout == "lerobot" else ""
        config = _config_from_foreign(config_json, weights, keys, prefix, layout, folder)
        mapping = {_canonical_openpi(k[len(prefix):]) if k.startswith(prefix) else k: k for k in keys}
    return config, weights, mapping, layout


def folder_layout(folder: str | Path) -> str:
    """"pirecon", "openpi" or "lerobot", from config.json and the tensor names (no tensor is read)."""
    folder = Path(folder)
    config_json = _read_config(folder)
    if config_json.get("format") == FORMAT_NAME:
        return FORMAT_NAME  # also LoRA checkpoints, which hold no model.safetensors
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"{folder}: no {WEIGHTS_FILE}; expected a pirecon, openpi or LeRobot checkpoint folder")
    with safe_open(str(weights), framework="pt") as f:
        return _detect_layout(config_json, list(f.keys()), f.metadata() or {})


def _read_config(folder: Path) -> dict:
    return load_json(folder / CONFIG_FILE, CheckpointError,
                     missing=f"no {CONFIG_FILE}; expected the config written beside {WEIGHTS_FILE}")


def _detect_layout(config_json: dict, keys: list[str], metadata: dict) -> str:
    if config_json.get("format") == FORMAT_NAME or metadata.get("format") == FORMAT_NAME:
        return FORMAT_NAME
    if any(k.startswith("model.paligemma_with_expert.") for k in keys):
        return "lerobot"
    if any(k.startswith("paligemma_with_expert.") for k in keys):
        return "openpi"
    raise CheckpointError(f"cannot tell the checkpoint layout: keys such as {keys[:3]} are neither pirecon, openpi "
                          f"(paligemma_with_expert.*) nor LeRobot (model.paligemma_with_expert.*)")


def _config_from_foreign(cfg: dict, weights: Path, keys: list[str], prefix: str, layout: str,
                         folder: Path) -> PolicyConfig:
    """A PolicyConfig from an openpi / LeRobot config.json (fields: `foreign.policy_fields`) checked
    against the tensor shapes, which decide type, vision tower, resolution and padded widths."""
    where = folder / CONFIG_FILE
    with safe_open(str(weights), framework="pt") as f:
        def shape(key: str) -> list[int]:
            for candidate in (prefix + key, *[prefix + old + key[len(new):] for old, new in _ALIASES
                                              if key.startswith(new)]):
                if candidate in keys:
                    return list(f.get_slice(candidate).get_shape())
            raise CheckpointError(f"{weights}: missing tensor {prefix + key}")
        is_pi05 = any(k.endswith("time_mlp_in.weight") and "action_time" not in k for k in keys)
        pos = shape(_PALI + "vision_tower.vision_model.embeddings.position_embedding.weight")
        patch = shape(_PALI + "vision_tower.vision_model.embeddings.patch_embedding.weight")
        vision_variant = _match_vision(patch[0], patch[-1], folder)
        action_width = shape("action_in_proj.weight")[1]  # (width, max_action_dim)
        state_width = None if is_pi05 else shape("state_proj.weight")[1]
    fields = foreign.policy_fields(cfg, layout, where)
    kind = "pi05" if is_pi05 else "pi0"
    if fields.setdefault("type", kind) != kind:
        raise CheckpointError(f"{where}: type={fields['type']} but {weights} holds a {kind} model "
                              f"({'time_mlp_in' if is_pi05 else 'state_proj and action_time_mlp_in'} tensors)")
    fields["vision_variant"] = vision_variant
    fields["image_resolution"] = round(pos[0] ** 0.5) * patch[-1]
    if cfg.get("image_resolution") is not None and layout == "lerobot":
        res = cfg["image_resolution"]
        res = res[0] if isinstance(res, (list, tuple)) else res
        if res != fields["image_resolution"]:
            raise CheckpointError(f"{where}: image_resolution {res} disagrees with the position "
                                  f"embeddings ({fields['image_resolution']})")
    if state_width is None:
        state_width = fields.get("max_state_dim", action_width)
    for name, width, tensor in (("max_action_dim", action_width, "action_in_proj.weight"),
                                ("max_state_dim", state_width, "state_proj.weight")):
        if fields.get(name, width) != width:
            raise CheckpointError(f"{where}: {name}={fields[name]} but {prefix + tensor} in {weights.name} takes "
                                  f"{width} dims")
        fields[name] = width
    fields.setdefault("paligemma_variant", "gemma_2b")
    fields.setdefault("action_expert_variant", "gemma_300m")
    for name in ("paligemma_variant", "action_expert_variant"):
        if fields[name] not in GEMMA_VARIANTS:
            raise CheckpointError(f"{where}: {name}={fields[name]!r} is not a known variant "
                                  f"({sorted(GEMMA_VARIANTS)})")
    fields.setdefault("chunk_size", 50)
    fields["n_action_steps"] = min(fields.get("n_action_steps", fields["chunk_size"]), fields["chunk_size"])
    if fields.get("dtype") not in ("float32", "bfloat16"):
        fields.pop("dtype", None)
    try:
        return PolicyConfig(**fields)
    except ConfigError as exc:
        raise CheckpointError(f"{where}: {exc}") from None


def _match_vision(width: int, patch: int, folder: Path) -> str:
    for name, spec in VISION_VARIANTS.items():
        if spec.width == width and spec.patch_size == patch:
            return name
    raise CheckpointError(f"{folder}: vision tower width {width} / patch {patch} matches no known variant")


def _materialise(config: PolicyConfig, weights: Path, mapping: dict[str, str], layout: str,
                 device, convert: bool, recon=None) -> Pi0Policy:
    """Build on `meta`, then assign the checkpoint tensors. Strict about missing/unexpected keys.

    A reconstruction head (our format only) is built for real after the backbone, then loaded."""
    with torch.device("meta"):
        policy = Pi0Policy(config)
    if recon is not None:
        head_keys = [k for k in mapping if k.startswith(RECON_PREFIX)]
        mapping = {k: v for k, v in mapping.items() if not k.startswith(RECON_PREFIX)}
    ours = list(policy.state_dict().keys())
    to_file = {k: k for k in ours} if layout == FORMAT_NAME else {k: openpi_key(k) for k in ours}
    file_keys = set(mapping)  # canonical names -> names in the file
    missing = [k for k, name in to_file.items() if name not in file_keys]
    # Tied embeddings: a checkpoint may store lm_head in place of embed_tokens.
    embed = "backbone.vlm.embed_tokens.weight"
    if embed in missing and layout != FORMAT_NAME and _TIED_LM_HEAD in file_keys:
        to_file[embed] = _TIED_LM_HEAD
        missing.remove(embed)
        log.info("using %s for the tied token embeddings", _TIED_LM_HEAD)
    used = set(to_file.values())
    unexpected = []
    for name in sorted(file_keys - used):
        reason = _UNUSED.get(name) or ("tied to embed_tokens" if name == _TIED_LM_HEAD else None)
        if reason and layout != FORMAT_NAME:
            log.info("dropping %s (%s)", mapping[name], reason)
        else:
            unexpected.append(mapping[name])
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
    expected_shapes = {k: v.shape for k, v in policy.state_dict().items()}
    with safe_open(str(weights), framework="pt", device=str(device)) as f:
        for key in ours:
            tensor = f.get_tensor(mapping[to_file[key]])
            if tuple(tensor.shape) != tuple(expected_shapes[key]):
                raise CheckpointError(f"{weights}: {mapping[to_file[key]]} has shape {tuple(tensor.shape)}; the "
                                      f"model expects {tuple(expected_shapes[key])}")
            state[key] = tensor
    policy.load_state_dict(state, strict=True, assign=True)
    if recon is not None:
        policy.add_recon_head(recon)
        expected = set(policy.recon_head.state_dict())
        found = {k[len(RECON_PREFIX):] for k in head_keys}
        if expected != found:
            raise CheckpointError(f"{weights}: reconstruction head keys differ from the config's head: missing "
                                  f"{sorted(expected - found)[:10]}, unexpected {sorted(found - expected)[:10]}")
        with safe_open(str(weights), framework="pt") as f:
            policy.recon_head.load_state_dict({k: f.get_tensor(RECON_PREFIX + k) for k in expected})
    if convert:
        policy.apply_dtype(config.torch_dtype)
    policy.apply_freeze()
    return policy
