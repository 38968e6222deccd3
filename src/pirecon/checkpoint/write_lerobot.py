"""Write a LeRobot folder: weights under `model.paligemma_with_expert.*`, config.json, both
processor pipelines and their statistics files.

Files are shaped like the ones LeRobot's `PolicyProcessorPipeline.save_pretrained` writes, so that
LeRobot (and `pirecon.checkpoint.folder_info`) read them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from pirecon.checkpoint import keys
from pirecon.checkpoint.folder_config import (ACTION_FEATURE, DEFAULT_TOKENIZER_NAME, FIXED_LEROBOT_FIELDS,
                                               IMAGE_PREFIX, LEROBOT_MODES, STATE_FEATURE, STATS_FEATURES)
from pirecon.checkpoint.layout import CONFIG_FILE, POSTPROCESSOR_FILE, PREPROCESSOR_FILE, WEIGHTS_FILE
from pirecon.checkpoint.write_pirecon import write_json
from pirecon.configs.policy import EMPTY_CAMERA, PolicyConfig
from pirecon.data.normalize import EPS, Stats
from pirecon.model.pi0 import Pi0Policy

PRE_NAME, POST_NAME = "policy_preprocessor", "policy_postprocessor"


def _features(cfg: PolicyConfig, state_dim: int | None, action_dim: int | None) -> tuple[dict, dict]:
    res = cfg.image_resolution
    inputs = {IMAGE_PREFIX + view: {"type": "VISUAL", "shape": [3, res, res]} for view in cfg.camera_names
              if not view.startswith(EMPTY_CAMERA)}  # LeRobot counts those in empty_cameras
    inputs[STATE_FEATURE] = {"type": "STATE", "shape": [state_dim or cfg.max_state_dim]}
    outputs = {ACTION_FEATURE: {"type": "ACTION", "shape": [action_dim or cfg.max_action_dim]}}
    return inputs, outputs


def _norm_map(mode: str) -> dict[str, str]:
    return {"VISUAL": "IDENTITY", "STATE": LEROBOT_MODES[mode], "ACTION": LEROBOT_MODES[mode]}


def lerobot_config(cfg: PolicyConfig, mode: str, state_dim: int | None = None,
                   action_dim: int | None = None) -> dict:
    """LeRobot's config.json for a PI0Config / PI05Config (fields both know, LeRobot's names)."""
    inputs, outputs = _features(cfg, state_dim, action_dim)
    body = {
        "type": cfg.type, "n_obs_steps": FIXED_LEROBOT_FIELDS["n_obs_steps"],
        "input_features": inputs, "output_features": outputs,
        "device": None, "use_amp": False, "push_to_hub": False, "repo_id": None, "private": None, "tags": None,
        "license": None, "pretrained_path": None,
        "paligemma_variant": cfg.paligemma_variant, "action_expert_variant": cfg.action_expert_variant,
        "dtype": cfg.dtype, "chunk_size": cfg.chunk_size, "n_action_steps": cfg.n_action_steps,
        "max_state_dim": cfg.max_state_dim, "max_action_dim": cfg.max_action_dim,
        "num_inference_steps": cfg.num_inference_steps,
        "time_sampling_beta_alpha": cfg.time_beta_alpha, "time_sampling_beta_beta": cfg.time_beta_beta,
        **{k: v for k, v in FIXED_LEROBOT_FIELDS.items() if k != "n_obs_steps"},
        "image_resolution": [cfg.image_resolution, cfg.image_resolution], "empty_cameras": cfg.empty_cameras,
        "tokenizer_max_length": cfg.max_token_len, "normalization_mapping": _norm_map(mode),
        "gradient_checkpointing": cfg.gradient_checkpointing, "compile_model": cfg.compile_model,
        "compile_mode": cfg.compile_mode,
    }
    if cfg.type == "pi0":  # PI05Config has no such fields in every LeRobot release
        body.update(freeze_vision_encoder=cfg.freeze_vision_encoder, train_expert_only=cfg.train_expert_only)
    if cfg.type == "pi05" and cfg.rtc_training_max_delay:  # PI05Config's since LeRobot 0.6.x main; absent before
        body["rtc_training_max_delay"] = cfg.rtc_training_max_delay
    return body


def rename_map(cfg: PolicyConfig, camera_map: dict[str, str] | None, camera_keys: list[str] | None) -> dict:
    """LeRobot's rename map (dataset key -> policy feature key) from our camera map (dataset key -> view),
    or from the dataset's camera keys taken in order onto the views."""
    if camera_map:
        pairs = camera_map.items()
    else:
        pairs = zip(camera_keys or (), cfg.camera_names)
    out = {}
    for key, view in pairs:
        full = key if key.startswith("observation") else IMAGE_PREFIX + key
        if full != IMAGE_PREFIX + view:
            out[full] = IMAGE_PREFIX + view
    return out


def _flat_stats(stats: Stats, keys: tuple[str, ...]) -> dict[str, torch.Tensor]:
    return {f"{STATS_FEATURES[key]}.{name}": torch.as_tensor(np.asarray(value, dtype=np.float32).reshape(-1))
            for key in keys if key in stats for name, value in stats[key].items()}


def _step(name: str, config: dict) -> dict:
    return {"registry_name": name, "config": config}


def lerobot_processors(cfg: PolicyConfig, stats: Stats | None, mode: str, tokenizer_name: str,
                       rename: dict[str, str], state_dim: int | None = None, action_dim: int | None = None
                       ) -> tuple[dict, dict, dict[str, dict[str, torch.Tensor]]]:
    """(policy_preprocessor.json, policy_postprocessor.json, {state file name: flat statistics}),
    with LeRobot's step order for the policy type and its `<pipeline>_step_<i>_<name>` file names."""
    inputs, outputs = _features(cfg, state_dim, action_dim)
    norm = {"eps": EPS, "features": {**inputs, **outputs}, "norm_map": _norm_map(mode)}
    tokenizer = _step("tokenizer_processor", {
        "max_length": cfg.max_token_len, "task_key": "task", "padding_side": "right", "padding": "max_length",
        "truncation": True, "tokenizer_name": tokenizer_name})
    device = _step("device_processor", {"device": "cpu", "float_dtype": None})
    normalizer = _step("normalizer_processor", norm)
    head = [_step("rename_observations_processor", {"rename_map": rename}), _step("to_batch_processor", {})]
    if cfg.type == "pi05":  # normalise first: the state is discretised into the prompt
        pre_steps = head + [normalizer, _step("pi05_prepare_state_tokenizer_processor_step",
                                              {"max_state_dim": cfg.max_state_dim, "task_key": "task"}),
                            tokenizer, device]
    else:
        pre_steps = head + [_step("pi0_new_line_processor", {}), tokenizer, device, normalizer]
    unnormalizer = _step("unnormalizer_processor", {"eps": EPS, "features": outputs, "norm_map": _norm_map(mode)})
    post_steps = [unnormalizer, _step("device_processor", {"device": "cpu", "float_dtype": None})]
    state_files = {}
    if stats:
        for pipeline, steps, step, features in ((PRE_NAME, pre_steps, normalizer, ("state", "actions")),
                                                (POST_NAME, post_steps, unnormalizer, ("actions",))):
            name = f"{pipeline}_step_{steps.index(step)}_{step['registry_name']}.safetensors"
            step["state_file"] = name
            state_files[name] = _flat_stats(stats, features)
    return ({"name": PRE_NAME, "steps": pre_steps}, {"name": POST_NAME, "steps": post_steps}, state_files)


def write_lerobot(policy: Pi0Policy, folder: Path, stats: Stats | None, mode: str,
                  tokenizer_name: str | None = None, camera_map: dict[str, str] | None = None,
                  camera_keys: list[str] | None = None, state_dim: int | None = None,
                  action_dim: int | None = None) -> list[Path]:
    """model.safetensors (LeRobot's tensor names) + config.json + both processor pipelines + their
    statistics files."""
    folder, cfg = Path(folder), policy.config
    folder.mkdir(parents=True, exist_ok=True)
    save_file(keys.foreign_state_dict(policy, "lerobot"), str(folder / WEIGHTS_FILE), metadata={"format": "pt"})
    written = [folder / WEIGHTS_FILE, folder / CONFIG_FILE, folder / PREPROCESSOR_FILE, folder / POSTPROCESSOR_FILE]
    write_json(written[1], lerobot_config(cfg, mode, state_dim, action_dim))
    pre, post, state_files = lerobot_processors(cfg, stats, mode, tokenizer_name or DEFAULT_TOKENIZER_NAME,
                                                rename_map(cfg, camera_map, camera_keys), state_dim, action_dim)
    write_json(written[2], pre)
    write_json(written[3], post)
    for name, tensors in state_files.items():
        save_file(tensors, str(folder / name))
        written.append(folder / name)
    return written
