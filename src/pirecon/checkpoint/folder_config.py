"""The PolicyConfig of a checkpoint folder, without reading weights (and without torch).

pirecon folders record it in config.json ({"format": "pirecon", "policy": {...}}). For openpi and
LeRobot folders it comes from their config.json, checked against the tensor shapes.

LeRobot's config.json: {"type": "pi0"|"pi05", chunk_size, n_action_steps, max_state_dim,
max_action_dim, input_features, output_features, normalization_mapping, image_resolution,
tokenizer_max_length, num_inference_steps, ...}; openpi's PyTorch config.json: {action_dim,
action_horizon, paligemma_variant, action_expert_variant, precision}. The shapes (read through
`pirecon.checkpoint.keys`) decide type, vision tower, resolution and padded widths.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from pirecon.checkpoint import keys
from pirecon.checkpoint.layout import (CONFIG_FILE, FORMAT_NAME, WEIGHTS_FILE, detect_format, open_safetensors,
                                       read_config)
from pirecon.configs.parse import from_dict
from pirecon.configs.policy import PolicyConfig
from pirecon.configs.recon import ReconConfig
from pirecon.configs.variants import GEMMA_VARIANTS, VISION_VARIANTS
from pirecon.errors import CheckpointError, ConfigError

log = logging.getLogger(__name__)

DEFAULT_TOKENIZER_NAME = "google/paligemma-3b-pt-224"  # LeRobot's default tokenizer_name
IMAGE_PREFIX = "observation.images."
STATE_FEATURE, ACTION_FEATURE = "observation.state", "action"
# Our statistics names (openpi's) <-> LeRobot feature names.
STATS_FEATURES = {"state": STATE_FEATURE, "actions": ACTION_FEATURE}
# Normalisation modes: ours <-> LeRobot's NormalizationMode values.
LEROBOT_MODES = {"mean_std": "MEAN_STD", "quantile": "QUANTILES"}
# Numbers LeRobot keeps in config.json that pirecon hard-wires.
FIXED_LEROBOT_FIELDS = {"time_sampling_scale": 0.999, "time_sampling_offset": 0.001, "min_period": 4e-3,
                        "max_period": 4.0, "n_obs_steps": 1}


def read_recon_config(folder: Path) -> ReconConfig | None:
    """The reconstruction head a pirecon folder's config.json describes (None: no enabled head)."""
    data = read_config(folder).get("recon")
    if not data or not data.get("enable"):
        return None
    return from_dict(ReconConfig, data, where=f"{folder / CONFIG_FILE}:recon")


def policy_config(folder: str | Path) -> PolicyConfig:
    """The PolicyConfig of a checkpoint folder without reading any weights: the one config.json
    records (pirecon folders and training checkpoints, LoRA ones included), else the one an openpi /
    LeRobot config.json and the tensor shapes tell."""
    folder = Path(folder)
    if folder.is_dir() and (folder / CONFIG_FILE).is_file():
        data = read_config(folder)
        if isinstance(data.get("policy"), dict):
            return stored_policy(data, folder)
    return inspect(folder)[0]


def stored_policy(data: dict, folder: Path) -> PolicyConfig:
    """The PolicyConfig a pirecon config.json records, checked against its shape-only "model"
    config (the weights' shapes), when it has one."""
    config = from_dict(PolicyConfig, data["policy"], where=f"{folder / CONFIG_FILE}:policy")
    for name, value in (data.get("model") or {}).items():
        ours = getattr(config, name, None)
        if ours != value:
            raise CheckpointError(f"{folder / CONFIG_FILE}: model.{name}={value} but policy.{name}={ours}; the two "
                                  f"must agree (the weights were saved with model.{name})")
    return config


def inspect(folder: Path) -> tuple[PolicyConfig, Path, dict[str, str], str]:
    """(config, weights file, canonical key -> key in file, layout) of a checkpoint folder."""
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: checkpoint folder not found (expected a folder with {WEIGHTS_FILE} "
                              f"and {CONFIG_FILE})")
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        found = sorted(p.name for p in folder.iterdir())[:10]
        raise CheckpointError(f"{folder}: no {WEIGHTS_FILE} (found {found or 'nothing'}); expected a pirecon, "
                              f"openpi or LeRobot checkpoint folder")
    config_json = read_config(folder)
    with open_safetensors(weights) as f:
        names = list(f.keys())
        metadata = f.metadata() or {}
    layout = detect_format(config_json, names, metadata)
    if layout == FORMAT_NAME:
        return stored_policy(config_json, folder), weights, {k: k for k in names}, layout
    config = config_from_foreign(config_json, weights, names, layout, folder)
    return config, weights, keys.file_names(names, layout), layout


def policy_fields(cfg: dict, layout: str, where: Path) -> dict[str, Any]:
    """PolicyConfig fields named by an openpi / LeRobot config.json (shape-derived ones excluded)."""
    if layout == "openpi":
        fields = {"chunk_size": cfg.get("action_horizon"), "max_action_dim": cfg.get("action_dim"),
                  "max_state_dim": cfg.get("action_dim"),  # openpi pads the state to the action width
                  "tokenizer_max_length": cfg.get("max_token_len"),
                  "paligemma_variant": cfg.get("paligemma_variant"),
                  "action_expert_variant": cfg.get("action_expert_variant"),
                  "dtype": cfg.get("precision") or cfg.get("dtype")}
        if "pi05" in cfg:
            fields["type"] = "pi05" if cfg["pi05"] else "pi0"
        return {k: v for k, v in fields.items() if v is not None}
    typ = cfg.get("type")
    if typ is not None and typ not in ("pi0", "pi05"):
        raise CheckpointError(f"{where}: type={typ!r} is a LeRobot {typ} policy; pirecon reads pi0 and pi05")
    for name, value in FIXED_LEROBOT_FIELDS.items():
        if cfg.get(name) is not None and not np.isclose(cfg[name], value):
            raise CheckpointError(f"{where}: {name}={cfg[name]} but pirecon's Pi0/Pi0.5 use {value}; this folder "
                                  f"is not a standard {typ or 'pi0'} policy")
    names = {"type": "type", "chunk_size": "chunk_size", "n_action_steps": "n_action_steps",
             "max_state_dim": "max_state_dim", "max_action_dim": "max_action_dim",
             "num_inference_steps": "num_inference_steps", "tokenizer_max_length": "tokenizer_max_length",
             "paligemma_variant": "paligemma_variant", "action_expert_variant": "action_expert_variant",
             "dtype": "dtype", "time_sampling_beta_alpha": "time_beta_alpha",
             "time_sampling_beta_beta": "time_beta_beta", "freeze_vision_encoder": "freeze_vision_encoder",
             "train_expert_only": "train_expert_only", "empty_cameras": "empty_cameras",
             "rtc_training_max_delay": "rtc_training_max_delay", "compile_model": "compile_model",
             "compile_mode": "compile_mode", "gradient_checkpointing": "gradient_checkpointing"}
    fields = {ours: cfg[theirs] for theirs, ours in names.items() if cfg.get(theirs) is not None}
    for name in ("freeze_vision_encoder", "train_expert_only", "compile_model", "gradient_checkpointing"):
        if name in fields and not isinstance(fields[name], bool):
            raise CheckpointError(f"{where}: {name}={fields[name]!r}; expected true or false")
    cameras = lerobot_cameras(cfg)
    if cameras:
        fields["camera_names"] = tuple(cameras)
    mode, problem = lerobot_mode(cfg.get("normalization_mapping"), where)
    if mode is not None:
        fields["normalization_mode"] = mode
    elif problem:
        log.warning("%s", problem)
    return fields


def lerobot_cameras(cfg: dict) -> list[str]:
    """Model views of a LeRobot config: its VISUAL input features (prefix dropped), then empty cameras."""
    features = cfg.get("input_features") or {}
    views = [key[len(IMAGE_PREFIX):] if key.startswith(IMAGE_PREFIX) else key
             for key, ft in features.items() if isinstance(ft, dict) and ft.get("type") == "VISUAL"]
    views += [f"empty_camera_{i}" for i in range(int(cfg.get("empty_cameras") or 0))
              if f"empty_camera_{i}" not in views]
    return views


def lerobot_mode(mapping: dict | None, where: Path | str) -> tuple[str | None, str | None]:
    """LeRobot normalization_mapping -> (our mode, None) or (None, why it cannot be reproduced)."""
    if not mapping:
        return None, None
    state, action = mapping.get("STATE"), mapping.get("ACTION")
    theirs = {v: k for k, v in LEROBOT_MODES.items()}
    if state in theirs and (action == state or action is None):
        return theirs[state], None
    if state is None and action in theirs:
        return theirs[action], None
    return None, (f"{where}: normalization_mapping STATE={state} ACTION={action}; pirecon normalises state and "
                  f"actions together with MEAN_STD or QUANTILES: pass --policy.normalization_mode=mean_std|quantile "
                  f"(the folder's statistics must hold mean/std or q01/q99)")


def feature_width(cfg: dict, group: str, key: str) -> int | None:
    ft = (cfg.get(group) or {}).get(key)
    shape = ft.get("shape") if isinstance(ft, dict) else None
    return int(shape[-1]) if shape else None


def config_from_foreign(cfg: dict, weights: Path, tensor_names: list[str], layout: str,
                        folder: Path) -> PolicyConfig:
    """A PolicyConfig from an openpi / LeRobot config.json (fields: `policy_fields`) checked
    against the tensor shapes, which decide type, vision tower, resolution and padded widths."""
    where = folder / CONFIG_FILE
    shapes = keys.foreign_shapes(weights, tensor_names, layout)
    is_pi05, action_width, state_width = shapes["is_pi05"], shapes["action_width"], shapes["state_width"]
    vision_variant = _match_vision(shapes["vision_width"], shapes["patch_size"], folder)
    fields = policy_fields(cfg, layout, where)
    kind = "pi05" if is_pi05 else "pi0"
    if fields.setdefault("type", kind) != kind:
        raise CheckpointError(f"{where}: type={fields['type']} but {weights} holds a {kind} model "
                              f"({shapes['kind_tensors']} tensors)")
    fields["vision_variant"] = vision_variant
    fields["image_resolution"] = round(shapes["positions"] ** 0.5) * shapes["patch_size"]
    if cfg.get("image_resolution") is not None and layout == "lerobot":
        res = cfg["image_resolution"]
        res = res[0] if isinstance(res, (list, tuple)) else res
        if res != fields["image_resolution"]:
            raise CheckpointError(f"{where}: image_resolution {res} disagrees with the position "
                                  f"embeddings ({fields['image_resolution']})")
    if state_width is None:
        state_width = fields.get("max_state_dim", action_width)
    for name, width, tensor in (("max_action_dim", action_width, shapes["action_tensor"]),
                                ("max_state_dim", state_width, shapes["state_tensor"])):
        if fields.get(name, width) != width:
            raise CheckpointError(f"{where}: {name}={fields[name]} but {tensor} in {weights.name} takes "
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
