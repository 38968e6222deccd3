"""Tiny checkpoints and servers for the server tests."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch

from pirecon.configs.policy import PolicyConfig
from pirecon.data.normalize import save_norm_stats_json
from pirecon.inference import PolicyRunner
from pirecon.model.pi0 import Pi0Policy
from pirecon.checkpoint.write_pirecon import save_policy
from pirecon.configs.serve import ServeConfig, ServeOptions, ServePolicyFlags
from pirecon.serve.command import build_server

VIEWS = ("base_0_rgb", "left_wrist_0_rgb", "right_wrist_0_rgb", "low_0_rgb")


def make_checkpoint(folder: Path, tokenizer: Path, camera_keys: list[str], state_dim: int, action_dim: int,
                    kind: str = "pi0", seed: int = 0, rtc_training_max_delay: int = 0) -> Path:
    """A random tiny policy saved like `pirecon export` writes one, with stats and data info for the
    given dataset layout (no training: the server only needs a loadable, deterministic model)."""
    torch.manual_seed(seed)
    config = PolicyConfig(type=kind, variant="tiny", image_resolution=28, chunk_size=4, n_action_steps=2,
                          max_state_dim=16, max_action_dim=16, camera_names=VIEWS[:len(camera_keys)],
                          num_inference_steps=3, rtc_training_max_delay=rtc_training_max_delay)
    save_policy(Pi0Policy(config), folder, extra_config={"tokenizer": "tokenizer.model"})
    shutil.copyfile(tokenizer, folder / "tokenizer.model")
    rng = np.random.default_rng(seed)

    def stats(dim: int) -> dict:
        mean = rng.standard_normal(dim)
        std = rng.uniform(0.5, 2.0, dim)
        return {"mean": mean, "std": std, "q01": mean - 2 * std, "q99": mean + 2 * std,
                "min": mean - 3 * std, "max": mean + 3 * std}

    save_norm_stats_json({"state": stats(state_dim), "actions": stats(action_dim)}, folder / "norm_stats.json")
    (folder / "data_info.json").write_text(json.dumps({
        "camera_keys": camera_keys, "camera_map": {}, "action_dims": None, "state_dims": None,
        "action_dim": action_dim, "normalization_mode": "mean_std"}))
    return folder


def server_for(checkpoint: Path, preset: str | None = None, obs_map: dict | None = None, seed: int = 0,
               reseed: bool = False, default_prompt: str | None = None, api_key: str | None = None,
               rtc_mode: str = "guided"):
    cfg = ServeConfig(policy=ServePolicyFlags(path=str(checkpoint), rtc_mode=rtc_mode), host="127.0.0.1", port=0,
                      seed=seed,
                      serve=ServeOptions(preset=preset, obs_map=obs_map or {}, reseed_each_request=reseed,
                                         default_prompt=default_prompt, api_key=api_key))
    return build_server(cfg)


def reference_runner(checkpoint: Path, seed: int = 0) -> PolicyRunner:
    return PolicyRunner.from_checkpoint(checkpoint, seed=seed)
