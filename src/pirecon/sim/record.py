"""Record scripted-expert demonstrations of the built-in simulator as a LeRobot dataset.

Each frame stores the observation the expert acted on and the action it took:
    observation.images.top / .wrist  (H, W, 3) uint8 (encoded to video by the writer)
    observation.state                (3,) float32   gripper x, y, closed
    action                           (3,) float32   vx, vy, gripper
    observation.gaze_bbox            (4,) float32   the named block's box in the top image
Only successful episodes are written; a failed seed is skipped and the next seed is tried.

With `action_noise` > 0 the simulator executes the expert's velocity plus Gaussian noise (std
`action_noise` times the expert's speed, per axis, so it fades as the expert comes to a stop; from
a generator seeded by the episode's seed) while the frame keeps the expert's own action: the data
then also shows states slightly off the expert's path and the action that corrects them (noise
injection, as in DART), which a cloned policy needs to recover from its own small errors. The
gripper command is never perturbed.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from pirecon.configs.parse import load_json
from pirecon.errors import ConfigError, DatasetError
from pirecon.sim.env import SimConfig, SimEnv
from pirecon.sim.expert import ScriptedExpert, run_episode

VERSIONS = ("v3.0", "v2.1")
SIM_CONFIG_FILE = "meta/pirecon_sim.json"


@dataclass(frozen=True)
class RecordSummary:
    """What `record` wrote."""

    path: Path
    episodes: int
    frames: int
    seeds_tried: int  # successful + skipped seeds
    skipped_seeds: tuple[int, ...]  # seeds whose expert episode failed (not written)
    tasks: dict  # prompt -> number of episodes
    seconds: float

    def describe(self) -> str:
        lines = [
            f"wrote {self.episodes} episodes ({self.frames} frames, "
            f"{self.frames / max(self.episodes, 1):.1f} per episode) to {self.path} in {self.seconds:.1f}s",
            f"seeds tried: {self.seeds_tried}, skipped (expert failed): {len(self.skipped_seeds)}",
            "tasks:",
        ]
        width = max((len(t) for t in self.tasks), default=0)
        lines += [f"  {task:<{width}}  {n}" for task, n in self.tasks.items()]
        return "\n".join(lines)


def record(output: str | Path, episodes: int, seed: int = 0, image_size: int = 96, version: str = "v3.0",
           config: SimConfig | None = None, overwrite: bool = False, action_noise: float = 0.0,
           progress: Callable[[int, int], None] | None = None) -> RecordSummary:
    """Write `episodes` successful expert episodes, trying seeds seed, seed + 1, ...

    `config` overrides the simulator settings (its image_size is replaced by `image_size`).
    `action_noise`: std of the noise added to the executed velocities (see the module docstring).
    `progress(done, total)` is called after each written episode.
    """
    from pirecon.data.writer import LeRobotWriter  # lazy: pulls in torch, the simulator does not

    if episodes <= 0:
        raise ConfigError(f"--episodes={episodes}: expected a positive integer")
    if not 0.0 <= action_noise <= 1.0:
        raise ConfigError(f"--action_noise={action_noise}: expected a standard deviation in [0, 1] (0: none)")
    if version not in VERSIONS:
        raise ConfigError(f"--version={version!r}: expected one of {list(VERSIONS)}")
    root = Path(output)
    # With --overwrite an old dataset is replaced only after the new one is complete.
    write_root = _check_output(root, overwrite)
    env = SimEnv(dataclasses.replace(config or SimConfig(), image_size=image_size))
    expert = ScriptedExpert(env)

    start = time.perf_counter()
    written, frames, skipped, tasks = 0, 0, [], Counter()
    s = seed
    max_seed = seed + 2 * episodes + 100  # the expert essentially never fails; this bounds a broken config
    # The writer deletes its partial output if anything below raises.
    with LeRobotWriter(write_root, fps=env.fps, features=env.features(), version=version,
                       robot_type="pirecon_sim") as writer:
        while written < episodes:
            if s >= max_seed:
                raise DatasetError(f"{root}: the expert failed on {len(skipped)} of {s - seed} seeds; "
                                   f"check the simulator settings")
            buffer: list[dict] = []

            def keep(obs: dict, executed: np.ndarray) -> None:
                buffer.append({
                    "observation.images.top": obs["observation.images.top"],
                    "observation.images.wrist": obs["observation.images.wrist"],
                    "observation.state": obs["observation.state"],
                    "action": expert(),  # the expert's own action (reactive: a function of the scene)
                    "observation.gaze_bbox": env.gaze_bbox(),
                })

            actor = expert if action_noise == 0 else _NoisyExecution(expert, action_noise, s)
            result = run_episode(env, actor, s, on_step=keep)
            if result["success"]:
                for frame in buffer:
                    writer.add_frame(frame, task=result["task"])
                writer.save_episode()
                written += 1
                frames += len(buffer)
                tasks[result["task"]] += 1
                if progress is not None:
                    progress(written, episodes)
            else:
                skipped.append(s)
            s += 1
        writer.finalize()
    # The simulator settings travel with the data, so evaluation can rebuild the same world.
    (write_root / SIM_CONFIG_FILE).parent.mkdir(parents=True, exist_ok=True)
    (write_root / SIM_CONFIG_FILE).write_text(json.dumps(dataclasses.asdict(env.config), indent=2) + "\n")
    if write_root != root:
        shutil.rmtree(root)
        write_root.rename(root)
    return RecordSummary(root, written, frames, s - seed, tuple(skipped), dict(sorted(tasks.items())),
                         time.perf_counter() - start)


class _NoisyExecution:
    """The expert's action with Gaussian noise on its velocity (std proportional to its speed),
    clipped to the action range."""

    def __init__(self, expert: ScriptedExpert, std: float, seed: int):
        self.expert, self.std = expert, std
        self.rng = np.random.default_rng([seed, 1])  # its own stream: the layout's draws are unchanged

    def __call__(self, obs: dict | None = None) -> np.ndarray:
        action = self.expert().copy()
        speed = float(np.linalg.norm(action[:2]))
        action[:2] = np.clip(action[:2] + self.rng.normal(0.0, self.std * speed, size=2), -1.0, 1.0)
        return action


def record_dataset(output: str | Path, episodes: int, seed: int = 0, image_size: int = 96,
                   version: str = "v3.0", config: SimConfig | None = None, action_noise: float = 0.0) -> Path:
    """Record `episodes` expert demonstrations to `output` (LeRobot `version`); returns the folder."""
    return record(output, episodes, seed=seed, image_size=image_size, version=version, config=config,
                  action_noise=action_noise).path


def recorded_sim_config(dataset_root: str | Path) -> SimConfig | None:
    """The simulator settings a dataset was recorded with (`meta/pirecon_sim.json`), or None."""
    path = Path(dataset_root) / SIM_CONFIG_FILE
    if not path.is_file():
        return None
    fields = {f.name for f in dataclasses.fields(SimConfig)}
    values = load_json(path, DatasetError)
    unknown = sorted(set(values) - fields)
    if unknown:
        raise DatasetError(f"{path}: unknown simulator settings {unknown}; expected keys among {sorted(fields)}")
    return SimConfig(**values)


def _check_output(root: Path, overwrite: bool) -> Path:
    """The folder to write into: `root` itself, or with `overwrite` a sibling that replaces it later.

    A non-empty `root` is an error unless `overwrite` is set and `root` holds a LeRobot dataset
    (meta/info.json); any other folder is never deleted.
    """
    if not root.exists() or (root.is_dir() and not any(root.iterdir())):
        return root
    if not root.is_dir():
        raise DatasetError(f"{root}: exists and is not a folder")
    if not overwrite:
        raise DatasetError(f"{root}: folder is not empty; choose a new --output or pass --overwrite")
    if not (root / "meta" / "info.json").is_file():
        raise DatasetError(f"{root}: --overwrite only replaces a LeRobot dataset folder (with meta/info.json); "
                           f"this folder has none, so it is left alone")
    return root.parent / f".{root.name}.new-{uuid.uuid4().hex[:8]}"
