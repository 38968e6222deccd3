"""Closed-loop evaluation during training (`pirecon train --env.type=sim|libero --env_eval_freq=N`,
LeRobot's --env_eval_freq, --eval_freq before LeRobot 0.6): every N steps the policy being trained
runs `--eval.n_episodes` episodes in the environment and the success rate goes to the log.

The environment is built once at start-up (bad `--env.*` flags fail before training). The built-in
simulator takes the settings the training dataset was recorded with (`pirecon sim record` stores
them), else the dataset's camera size; typed `--env.*` settings win.
"""

from __future__ import annotations

import dataclasses
import json
import random
import time
import typing
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pirecon.configs.parse import from_dict
from pirecon.configs.train import TrainEnvFlags, TrainEvalFlags
from pirecon.errors import ConfigError
from pirecon.eval.envs import make_env
from pirecon.eval.metrics import summarize
from pirecon.eval.rollout import evaluate
from pirecon.inference import PolicyRunner


def env_options_for_dataset(env_type: str, options: dict[str, Any], root: Path | None) -> tuple[dict, str | None]:
    """Typed `--env.*` strings -> the environment's settings, on top of the training data's (sim).
    Returns (settings, a note on where the defaults came from)."""
    if env_type != "sim":
        return dict(options), None  # LiberoEnv.from_task converts and checks its own --env.* settings
    from pirecon.sim.env import CAMERA_KEYS, SimConfig
    from pirecon.sim.record import recorded_sim_config

    names = [f.name for f in dataclasses.fields(SimConfig)]
    unknown = [key for key in options if key not in names]
    if unknown:
        raise ConfigError(f"unknown flag --env.{unknown[0]} for --env.type=sim (the sim's settings: {', '.join(names)})")
    hints = typing.get_type_hints(SimConfig)
    settings = {key: getattr(from_dict(dataclasses.make_dataclass("EnvOption", [(key, hints[key])]), {key: value},
                                       where="--env"), key) for key, value in options.items()}
    recorded = recorded_sim_config(root) if root is not None else None
    if recorded is not None:
        return {**dataclasses.asdict(recorded), **settings}, "the simulator settings the training data was recorded with"
    if "image_size" not in settings and root is not None:
        try:
            features = json.loads((root / "meta" / "info.json").read_text()).get("features") or {}
        except (OSError, json.JSONDecodeError):
            features = {}
        sizes = {tuple(features[k].get("shape", [])[:2]) for k in CAMERA_KEYS if k in features}
        if len(sizes) == 1 and len(set(*sizes)) == 1:
            settings["image_size"] = int(next(iter(sizes))[0])
            return settings, f"image_size={settings['image_size']} (the training dataset's cameras)"
    return settings, None


class TrainingEvaluator:
    """Runs the closed loop for the trainer; `__call__(policy, preprocessor, autocast)` -> log record."""

    def __init__(self, env_flags: TrainEnvFlags, eval_flags: TrainEvalFlags, n_action_steps: int,
                 dataset_root: Path | None):
        settings, self.note = env_options_for_dataset(env_flags.type, env_flags.options, dataset_root)
        try:
            self.env = make_env(env_flags.type, env_flags.task, **settings)
        except ConfigError as exc:
            message = str(exc)
            raise ConfigError(message if message.startswith("--") else f"--env.{message}") from None
        self.flags, self.eval = env_flags, eval_flags
        self.n_action_steps = n_action_steps
        self.seeds = list(range(eval_flags.seed, eval_flags.seed + eval_flags.n_episodes))

    def describe(self) -> str:
        where = self.flags.type + (f" / {self.flags.task}" if self.flags.task else "")
        return (f"{where}, {len(self.seeds)} episodes (seeds {self.seeds[0]}..{self.seeds[-1]}), one at a time"
                + (f"; {self.note}" if self.note else ""))

    def __call__(self, policy, preprocessor, autocast) -> dict:
        """Roll `policy` (the Pi0Policy being trained, adapters active) out; training's random
        state is left as it was, so a run with evaluation trains exactly as one without."""
        states = (torch.get_rng_state(), np.random.get_state(), random.getstate())
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
        was_training = policy.training
        started = time.perf_counter()
        try:
            runner = PolicyRunner(policy, preprocessor, n_action_steps=self.n_action_steps, seed=self.eval.seed)
            with autocast:
                results = evaluate(self.env, runner, self.seeds, self.n_action_steps, video_dir=None, progress=False)
        finally:
            policy.train(was_training)
            torch.set_rng_state(states[0])
            np.random.set_state(states[1])
            random.setstate(states[2])
            if cuda is not None:
                torch.cuda.set_rng_state_all(cuda)
        summary = summarize(r.to_json() for r in results)
        return {"eval/success_rate": summary["success_rate"], "eval/ci95_low": summary["ci95"][0],
                "eval/ci95_high": summary["ci95"][1], "eval/mean_steps": summary["mean_steps"],
                "eval/episodes": summary["episodes"], "eval/seconds": time.perf_counter() - started}

    def close(self) -> None:
        self.env.close()
