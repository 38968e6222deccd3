"""A trained policy ready to act: checkpoint -> model + preprocessing -> robot-unit action chunks.

Used by closed-loop evaluation and by the policy server.

    runner = PolicyRunner.from_checkpoint("outputs/run/checkpoints/last")
    chunk = runner.predict_chunk(obs)   # (chunk_size, action_dim) in robot units
    actions = runner(obs)               # the first n_action_steps of a fresh chunk
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from pirecon.checkpoint.load import Loaded, load
from pirecon.data.tokenizer import load_tokenizer
from pirecon.data.transforms import Preprocessor
from pirecon.model import rtc as rtc_module
from pirecon.model.pi0 import Pi0Policy
from pirecon.model.placement import resolve_device


class PolicyRunner:
    def __init__(self, policy: Pi0Policy, preprocessor: Preprocessor, n_action_steps: int | None = None,
                 num_steps: int | None = None, seed: int = 0, rtc: bool = False,
                 max_guidance_weight: float = rtc_module.DEFAULT_MAX_GUIDANCE, rtc_mode: str = "guided"):
        self.policy = policy.eval()
        self.rtc = rtc  # the closed loop passes the previous chunk's remaining actions
        self.rtc_mode = rtc_mode  # guided | trained (Pi0Policy.sample_actions)
        self.max_guidance_weight = max_guidance_weight
        self.preprocessor = preprocessor
        self.n_action_steps = n_action_steps or policy.config.n_action_steps
        self.num_steps = num_steps
        self.generator = torch.Generator().manual_seed(seed)
        self.device = next(policy.parameters()).device

    @classmethod
    def from_checkpoint(cls, path: str | Path, use_ema: bool = False, device: str | torch.device = "cpu",
                        n_action_steps: int | None = None, num_steps: int | None = None, seed: int = 0,
                        tokenizer_path: str | None = None) -> "PolicyRunner":
        """`device`: auto | cpu | cuda | cuda:N, as --policy.device (a ConfigError when absent)."""
        loaded = load(path, use_ema=use_ema, device=resolve_device(device), tokenizer_path=tokenizer_path)
        return cls(loaded.policy, preprocessor_from(loaded), n_action_steps=n_action_steps,
                   num_steps=num_steps, seed=seed)

    def reset(self) -> None:
        """Called at the start of every episode (the runner keeps no state between calls)."""

    @torch.no_grad()
    def predict_chunk(self, obs: dict, prefix_actions: np.ndarray | None = None, inference_delay: int = 0,
                      execution_horizon: int | None = None) -> np.ndarray:
        """One observation (dataset keys + `task`) -> (chunk_size, action_dim) in robot units.

        Real-time chunking: `prefix_actions` (P, action_dim), robot units, are the previous chunk's
        actions still to run from this observation on; the first `inference_delay` of them run
        while this chunk is computed (see Pi0Policy.sample_actions). In `rtc_mode` "trained" only
        those first `inference_delay` actions condition the chunk (they come back as given, up to
        float rounding of the normalisation); `execution_horizon`, guidance's, plays no part."""
        batch = self.preprocessor.from_observation(obs).to(self.device)
        cfg = self.policy.config
        noise = torch.randn(1, cfg.chunk_size, cfg.max_action_dim, generator=self.generator).to(self.device)
        guide = {}
        if prefix_actions is not None and len(prefix_actions):
            prefix = torch.tensor(np.asarray(prefix_actions, dtype=np.float32))  # a copy: msgpack arrays are read-only
            if self.preprocessor.normalizer is not None:
                prefix = self.preprocessor.normalizer.normalize_actions(prefix)
            guide = {"prefix_actions": prefix[None].to(self.device), "inference_delay": inference_delay}
            if self.rtc_mode == "trained":
                guide["rtc_mode"] = "trained"
            else:
                guide.update(execution_horizon=execution_horizon, max_guidance_weight=self.max_guidance_weight)
        actions = self.policy.sample_actions(batch, noise=noise, num_steps=self.num_steps, **guide)
        return self.preprocessor.postprocess_actions(actions)[0]

    def __call__(self, obs: dict) -> np.ndarray:
        """The first `n_action_steps` actions of a fresh chunk, (n, action_dim)."""
        return self.predict_chunk(obs)[:self.n_action_steps]


def preprocessor_from(loaded: Loaded) -> Preprocessor:
    """The preprocessing a checkpoint was trained with: a pirecon one (norm_stats.json,
    data_info.json, tokenizer copy), a LeRobot one (processor pipelines and their statistics, rename
    map, tokenizer name) or an openpi one (assets/<asset_id>/norm_stats.json)."""
    info = loaded.info
    return Preprocessor(loaded.config, load_tokenizer(loaded.tokenizer()), loaded.normalizer,
                        camera_map=info.camera_map, action_dims=info.action_dims, state_dims=info.state_dims,
                        camera_keys=info.camera_keys, action_dim=info.action_dim)


def preprocessor_from_checkpoint(folder: Path, policy_config, tokenizer_path: str | None = None) -> Preprocessor:
    """`preprocessor_from` for a folder, without reading its weights; `policy_config` is the model's
    (its asset_id chooses among an openpi folder's statistics); `tokenizer_path`
    (--policy.tokenizer_path) replaces the tokenizer the folder names."""
    loaded = load(folder, with_weights=False, asset_id=policy_config.asset_id, tokenizer_path=tokenizer_path)
    return preprocessor_from(dataclasses.replace(loaded, config=policy_config))
