"""Closed-loop evaluation during training (`pirecon train --env.type=sim|libero --env_eval_freq=N`,
LeRobot's --env_eval_freq, --eval_freq before LeRobot 0.6): every N steps the policy being trained
runs `--eval.n_episodes` episodes in the environment and the success rate goes to the log.

The environment is built once at start-up (bad `--env.*` flags fail before training). The built-in
simulator takes the settings the training dataset was recorded with (`pirecon sim record` stores
them), else the dataset's camera size; typed `--env.*` settings win.
"""

from __future__ import annotations

import time
from pathlib import Path


from pirecon.checkpoint.training import rng_state, set_rng_state
from pirecon.configs.train import TrainEnvFlags, TrainEvalFlags
from pirecon.errors import ConfigError
from pirecon.eval.envs import make_env, sim_settings
from pirecon.eval.metrics import summarize
from pirecon.eval.rollout import evaluate
from pirecon.inference import PolicyRunner


class TrainingEvaluator:
    """Runs the closed loop for the trainer; `__call__(policy, preprocessor, autocast)` -> log record."""

    def __init__(self, env_flags: TrainEnvFlags, eval_flags: TrainEvalFlags, n_action_steps: int,
                 dataset_root: Path | None):
        settings, self.note = (sim_settings(env_flags.options, dataset_root) if env_flags.type == "sim"
                               else (dict(env_flags.options), None))  # LIBERO converts its own settings
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
        state = rng_state()
        was_training = policy.training
        started = time.perf_counter()
        try:
            runner = PolicyRunner(policy, preprocessor, n_action_steps=self.n_action_steps, seed=self.eval.seed)
            with autocast:
                results = evaluate(self.env, runner, self.seeds, self.n_action_steps, video_dir=None, progress=False)
        finally:
            policy.train(was_training)
            set_rng_state(state)
        summary = summarize(r.to_json() for r in results)
        return {"eval/success_rate": summary["success_rate"], "eval/ci95_low": summary["ci95"][0],
                "eval/ci95_high": summary["ci95"][1], "eval/mean_steps": summary["mean_steps"],
                "eval/episodes": summary["episodes"], "eval/seconds": time.perf_counter() - started}

    def close(self) -> None:
        self.env.close()
