"""The environments `pirecon eval` can roll a policy out in, behind one small interface.

Every environment is gym-like and speaks in the *dataset's* keys, so a checkpoint trained on a
dataset recorded from that environment sees the same observation layout at evaluation time:

    env = make_env("sim", task=None, image_size=64)
    obs = env.reset(seed)                  # {"observation.images.<cam>": (H, W, 3) uint8,
                                           #  "observation.state": (S,) float32, "task": str}
    obs, reward, done, info = env.step(a)  # a: (action_dim,) in robot units; info["success"]
    env.success, env.steps, env.max_steps, env.fps, env.task
    frame = env.render()                   # (H, W, 3) uint8 for rollout videos
    env.close()

`EvalEnv` below is the contract; the built-in simulator's `SimEnv` meets it as it is, and
`pirecon.eval.libero.LiberoEnv` adapts the LIBERO suites (an optional extra).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from pirecon.errors import ConfigError
from pirecon.sim.env import TASK_KINDS, SimConfig, SimEnv

ENV_TYPES = ("sim", "libero")


@runtime_checkable
class EvalEnv(Protocol):
    """What closed-loop evaluation needs from an environment."""

    fps: int
    max_steps: int
    action_dim: int

    @property
    def task(self) -> str:  # the language instruction of the current episode
        ...

    @property
    def success(self) -> bool:
        ...

    @property
    def steps(self) -> int:
        ...

    def reset(self, seed: int) -> dict:
        ...

    def step(self, action: np.ndarray) -> tuple[dict, float, bool, dict]:
        ...

    def render(self) -> np.ndarray:
        ...

    def close(self) -> None:
        ...


def make_env(env_type: str, task: str | None = None, **options) -> EvalEnv:
    """Build the environment `--env.type` names. `options` are the type's own settings."""
    if env_type == "sim":  # task: one task kind (the prompt's verb), or None for all of them
        if task:
            if task not in TASK_KINDS:
                raise ConfigError(f"--env.task={task!r}: the sim's tasks are {list(TASK_KINDS)} (or empty for both)")
            options = {**options, "tasks": (task,)}
        return SimEnv(SimConfig(**options))
    if env_type == "libero":
        from pirecon.eval.libero import LiberoEnv  # lazy: LIBERO is an optional extra
        return LiberoEnv.from_task(task, **options)
    raise ConfigError(f"--env.type={env_type!r}: expected one of {list(ENV_TYPES)}")
