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

import dataclasses
import difflib
import json
import typing
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from pirecon.configs.parse import from_dict
from pirecon.errors import ConfigError
from pirecon.sim.env import CAMERA_KEYS, TASK_KINDS, SimConfig, SimEnv
from pirecon.sim.record import recorded_sim_config

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


def sim_settings(options: dict[str, Any], root: Path | None, from_training: bool = True) -> tuple[dict, str | None]:
    """`--env.*` strings -> typed SimConfig fields, on top of the training data's simulator settings.

    `root`: the training dataset (None: unknown). Defaults come from the settings `pirecon sim
    record` stored there, else (an older or foreign recording) just its cameras' image_size.
    Returns (settings, a note on where the defaults came from; None without training data)."""
    names = [f.name for f in dataclasses.fields(SimConfig)]
    for key in options:
        if key not in names:
            close = difflib.get_close_matches(key, names, n=3)
            hint = f"; did you mean {', '.join('--env.' + c for c in close)}?" if close else ""
            raise ConfigError(f"unknown flag --env.{key} for --env.type=sim{hint} (the sim's settings: "
                              f"{', '.join(names)})")
    hints = typing.get_type_hints(SimConfig)
    settings = {key: getattr(from_dict(dataclasses.make_dataclass("EnvOption", [(key, hints[key])]), {key: value},
                                       where="--env"), key) for key, value in options.items()}
    recorded = recorded_sim_config(root) if root is not None else None
    if recorded is not None:  # recorded by `pirecon sim record`: rebuild the same world, flags override
        return ({**dataclasses.asdict(recorded), **settings},
                "the simulator settings the training data was recorded with (meta/pirecon_sim.json)")
    if "image_size" in settings or not from_training:
        return settings, None
    shapes = (dataset_camera_shapes(root) if root is not None else None) or {}
    sizes = {tuple(shapes[k][:2]) for k in CAMERA_KEYS if len(shapes.get(k, [])) >= 2}  # {(H, W)}
    if len(sizes) == 1 and len(set(*sizes)) == 1:  # both cameras square and of one size
        settings["image_size"] = int(next(iter(sizes))[0])
        return settings, f"image_size={settings['image_size']} (the training dataset's cameras)"
    return settings, (f"image_size={SimConfig.image_size} (the sim default: the training dataset's sim cameras were "
                      f"not found; pass --env.image_size to match them)")


def dataset_camera_shapes(root: Path) -> dict[str, list[int]] | None:
    """{camera key: [H, W, C]} from a dataset's meta/info.json, None when it cannot be read."""
    try:
        info = json.loads((root / "meta" / "info.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return {key: list(ft.get("shape", [])) for key, ft in (info.get("features") or {}).items()
            if ft.get("dtype") in ("video", "image")}
