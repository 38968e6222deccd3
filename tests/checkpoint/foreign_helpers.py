"""Tiny stand-ins for LeRobot and openpi pretrained folders, written by hand in their layouts
(REFERENCE.md §2) so that pirecon's reader is checked against the formats, not against its writer."""

import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from pirecon import PolicyConfig, load_policy
from pirecon.checkpoint.keys import openpi_key

EXPERT_LM_HEAD = "paligemma_with_expert.gemma_expert.lm_head.weight"


def tiny_policy(kind: str, **overrides):
    cfg = dict(type=kind, variant="tiny", chunk_size=4, n_action_steps=4, image_resolution=28, max_state_dim=8,
               max_action_dim=8)
    cfg.update(overrides)
    policy = load_policy(PolicyConfig(**cfg))
    with torch.no_grad():
        for m in policy.modules():
            if hasattr(m, "dense"):  # pi05's adaRMS projections start at zero; make them matter
                m.dense.weight.normal_(std=0.2)
    return policy.eval()


def stats_arrays(state_dim: int, action_dim: int, seed: int = 0) -> dict:
    """openpi-named statistics: {"state"|"actions": {mean, std, min, max, q01, q99}}."""
    rng = np.random.default_rng(seed)
    out = {}
    for key, dim in (("state", state_dim), ("actions", action_dim)):
        mean = rng.normal(size=dim).astype(np.float32)
        std = rng.uniform(0.5, 2.0, size=dim).astype(np.float32)
        out[key] = {"mean": mean, "std": std, "min": mean - 3 * std, "max": mean + 3 * std,
                    "q01": mean - 2 * std, "q99": mean + 2 * std}
    return out


def openpi_state(policy) -> dict:
    state = {openpi_key(k): v.contiguous() for k, v in policy.state_dict().items()}
    expert = policy.config.expert
    state[EXPERT_LM_HEAD] = torch.zeros(expert.vocab_size, expert.width)
    return state


def lerobot_folder(folder: Path, policy, stats: dict | None = None, mode: str = "QUANTILES",
                   tokenizer_name: str = "google/paligemma-3b-pt-224", rename_map: dict | None = None,
                   state_dim: int = 8, action_dim: int = 7, post_stats: dict | None = None,
                   config_overrides: dict | None = None) -> Path:
    """A LeRobot `pi0` / `pi05` policy folder like lerobot/pi05_libero (processor files of LeRobot 0.4)."""
    cfg = policy.config
    folder.mkdir(parents=True)
    save_file({"model." + k: v for k, v in openpi_state(policy).items()}, str(folder / "model.safetensors"))
    res = cfg.image_resolution
    inputs = {f"observation.images.{view}": {"type": "VISUAL", "shape": [3, 256, 256]} for view in cfg.camera_names}
    inputs["observation.state"] = {"type": "STATE", "shape": [state_dim]}
    outputs = {"action": {"type": "ACTION", "shape": [action_dim]}}
    norm_map = {"VISUAL": "IDENTITY", "STATE": mode, "ACTION": mode}
    config = {
        "type": cfg.type, "n_obs_steps": 1, "input_features": inputs, "output_features": outputs,
        "device": "cuda", "use_amp": False, "push_to_hub": True, "repo_id": "lerobot/pi05_libero", "private": None,
        "tags": None, "license": "apache-2.0", "pretrained_path": None,
        "paligemma_variant": cfg.paligemma_variant, "action_expert_variant": cfg.action_expert_variant,
        "dtype": "float32", "chunk_size": cfg.chunk_size, "n_action_steps": 2, "max_state_dim": cfg.max_state_dim,
        "max_action_dim": cfg.max_action_dim, "num_inference_steps": 5, "time_sampling_beta_alpha": 1.5,
        "time_sampling_beta_beta": 1.0, "time_sampling_scale": 0.999, "time_sampling_offset": 0.001,
        "min_period": 0.004, "max_period": 4.0, "rtc_config": None, "image_resolution": [res, res],
        "empty_cameras": 0, "tokenizer_max_length": 120, "normalization_mapping": norm_map,
        "gradient_checkpointing": False, "compile_model": False, "compile_mode": "max-autotune",
        "optimizer_lr": 2.5e-05, "optimizer_betas": [0.9, 0.95], "optimizer_eps": 1e-08,
        "optimizer_weight_decay": 0.01, "optimizer_grad_clip_norm": 1.0, "scheduler_warmup_steps": 1000,
        "scheduler_decay_steps": 30000, "scheduler_decay_lr": 2.5e-06, **(config_overrides or {}),
    }
    (folder / "config.json").write_text(json.dumps(config, indent=4))
    normalizer = {"registry_name": "normalizer_processor",
                  "config": {"eps": 1e-08, "features": {**inputs, **outputs}, "norm_map": norm_map}}
    unnormalizer = {"registry_name": "unnormalizer_processor",
                    "config": {"eps": 1e-08, "features": outputs, "norm_map": norm_map}}
    steps = [{"registry_name": "rename_observations_processor", "config": {"rename_map": rename_map or {}}},
             {"registry_name": "to_batch_processor", "config": {}}, normalizer,
             {"registry_name": "pi05_prepare_state_tokenizer_processor_step", "config": {}},
             {"registry_name": "tokenizer_processor",
              "config": {"max_length": 120, "task_key": "task", "padding_side": "right", "padding": "max_length",
                         "truncation": True, "tokenizer_name": tokenizer_name}},
             {"registry_name": "device_processor", "config": {"device": "cuda", "float_dtype": None}}]
    if stats is not None:
        normalizer["state_file"] = "policy_preprocessor_step_2_normalizer_processor.safetensors"
        unnormalizer["state_file"] = "policy_postprocessor_step_0_unnormalizer_processor.safetensors"
        flat = {f"{name}.{stat}": torch.as_tensor(value) for key, name in (("state", "observation.state"),
                                                                             ("actions", "action"))
                for stat, value in stats[key].items()}
        flat["observation.state.count"] = torch.tensor([1000])
        flat["observation.images.base_0_rgb.mean"] = torch.full((3, 1, 1), 0.5)  # image stats are not ours
        save_file(flat, str(folder / normalizer["state_file"]))
        post = post_stats or stats
        save_file({f"action.{stat}": torch.as_tensor(v) for stat, v in post["actions"].items()},
                  str(folder / unnormalizer["state_file"]))
    (folder / "policy_preprocessor.json").write_text(json.dumps({"name": "policy_preprocessor", "steps": steps},
                                                                indent=2))
    (folder / "policy_postprocessor.json").write_text(json.dumps(
        {"name": "policy_postprocessor",
         "steps": [unnormalizer, {"registry_name": "device_processor", "config": {"device": "cpu",
                                                                                 "float_dtype": None}}]}, indent=2))
    return folder


def openpi_folder(folder: Path, policy, assets: dict[str, dict] | None = None) -> Path:
    """An openpi PyTorch folder: model.safetensors, config.json, assets/<asset_id>/norm_stats.json."""
    cfg = policy.config
    folder.mkdir(parents=True)
    save_file(openpi_state(policy), str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({
        "action_dim": cfg.max_action_dim, "action_horizon": cfg.chunk_size, "paligemma_variant": cfg.paligemma_variant,
        "action_expert_variant": cfg.action_expert_variant, "precision": "float32"}))
    for asset_id, stats in (assets or {}).items():
        path = folder / "assets" / asset_id / "norm_stats.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps({"norm_stats": {key: {stat: np.asarray(v).tolist() for stat, v in fields.items()}
                                                   for key, fields in stats.items()}}))
    return folder
