"""A small deterministic tabletop task: reach or pick-and-place the block named in the prompt.

The world is the table square [0, 1] x [0, 1] (x right, y down, as in the top image). It holds
`num_blocks` coloured square blocks (distinct colours drawn from `colors`), one white target zone
and a point gripper that moves in the plane and can close to grasp the block under it.

Layout (default): the table is a 4 x 4 board; the zone and the blocks sit in distinct random cells
(+-0.02 jitter), the blocks in the 12 outer cells, and the gripper starts at HOME, the centre.
Positions recurring on a board, and the gripper starting where the state says nothing about the
episode, are what let a tiny policy generalise to unseen layouts from ~100 demonstrations.
`grid=0` places objects anywhere and `random_start=True` starts the gripper anywhere (harder).

Tasks (the prompt names one block by colour):
    reach  "move to the red block"                  success: the gripper has stopped over the block
                                                    (moved < STOP_SPEED * max_speed in the step), open,
                                                    and never picked the block up
    place  "put the red block in the white zone"    success: the block's centre is inside the zone
                                                    and the gripper has let it go

State  (3,) float32: gripper x, y in [0, 1] and gripper closed (0 open, 1 closed). Block and zone
       positions are deliberately NOT in the state: a policy must find them in the images.
Action (3,) float32 in [-1, 1]: vx, vy (the gripper moves `max_speed * v` per step) and gripper
       (> 0 close, <= 0 open). Movement is applied first, then the gripper command, so closing in
       the step that arrives over a block grasps it.

Every episode is a function of its seed: the layout (positions, colours), the named block and the
task kind come from `np.random.default_rng(seed)`, and stepping is deterministic.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from pirecon.errors import ConfigError, InputError
from pirecon.sim.render import COLORS, render_top, render_wrist

TASK_KINDS = ("reach", "place")
PROMPTS = {
    "reach": "move to the {color} block",
    "place": "put the {color} block in the white zone",
}
CAMERA_NAMES = ("top", "wrist")
CAMERA_KEYS = ("observation.images.top", "observation.images.wrist")
STATE_NAMES = ("x", "y", "gripper")
ACTION_NAMES = ("vx", "vy", "gripper")
GRIPPER_LIMITS = (0.02, 0.98)  # the gripper stays over the table
CELL_SETS = ("all", "corners")
HOME = (0.5, 0.5)  # where the gripper starts unless SimConfig.random_start
STOP_SPEED = 0.25  # a reach ends with a step slower than this fraction of max_speed over the block


@dataclass(frozen=True)
class SimConfig:
    """Parameters of the tabletop task. Lengths are in table units (the table side is 1)."""

    image_size: int = 96  # both cameras render image_size x image_size RGB
    wrist_span: float = 0.4  # side of the table window the wrist camera sees
    max_steps: int = 80  # episode limit; the expert needs at most ~55 steps (a learned policy gets slack)
    fps: int = 10  # control steps per second (recorded as the dataset fps)
    num_blocks: int = 3  # blocks on the table, 1..3
    colors: tuple[str, ...] = ("red", "green", "blue")  # the blocks' colours are drawn from these
    tasks: tuple[str, ...] = TASK_KINDS  # task kinds episodes are drawn from: reach, place
    max_speed: float = 0.035  # gripper displacement per step at |v| = 1
    block_size: float = 0.14  # side of a block
    zone_size: float = 0.2  # side of the white target zone
    gaze_margin: float = 0.02  # gaze_bbox extends the named block's square by this much
    grid: int = 4  # > 0: blocks and zone sit in the cells of a grid x grid board; 0: anywhere
    jitter: float = 0.02  # with grid > 0: random offset (up to +-jitter) from the cell centres
    cells: str = "all"  # with grid > 0: "all" cells or only the 4 "corners" hold the zone and blocks
    random_start: bool = False  # False: the gripper starts at HOME; True: anywhere away from the blocks
    drift: float = 0.0  # the named block drifts this far per step (direction drawn per episode) until grasped: latency matters

    def __post_init__(self) -> None:
        object.__setattr__(self, "colors", tuple(self.colors))
        object.__setattr__(self, "tasks", tuple(self.tasks))
        if not 16 <= self.image_size <= 1024:
            raise ConfigError(f"image_size={self.image_size}: expected 16..1024 pixels (e.g. 96)")
        unknown = [c for c in self.colors if c not in COLORS]
        if unknown or len(set(self.colors)) != len(self.colors):
            raise ConfigError(f"colors={list(self.colors)}: expected distinct names from {sorted(COLORS)}")
        if not 1 <= self.num_blocks <= len(self.colors):
            raise ConfigError(f"num_blocks={self.num_blocks}: expected 1..{len(self.colors)} (one block per colour)")
        if not self.tasks or any(t not in TASK_KINDS for t in self.tasks):
            raise ConfigError(f"tasks={list(self.tasks)}: expected a non-empty subset of {list(TASK_KINDS)}")
        for name, top in (("wrist_span", 2), ("max_speed", 1), ("block_size", 1), ("zone_size", 1)):
            if not 0 < getattr(self, name) <= top:
                raise ConfigError(f"{name}={getattr(self, name)}: expected a value in (0, {top}] table units")
        if self.block_size > 0.2 or self.zone_size > 0.3:
            raise ConfigError("block_size <= 0.2 and zone_size <= 0.3 are needed for random layouts to fit")
        if self.cells not in CELL_SETS:
            raise ConfigError(f"cells={self.cells!r}: expected one of {list(CELL_SETS)}")
        if self.cells == "corners" and (not self.grid or self.num_blocks > 3):
            raise ConfigError(f"cells='corners' needs grid > 0 and at most 3 blocks (the zone takes the 4th "
                              f"corner); got grid={self.grid}, num_blocks={self.num_blocks}")
        if self.grid:
            self._check_grid()
        if not 0.0 <= self.drift <= 0.2 * self.max_speed:
            raise ConfigError(f"drift={self.drift}: expected 0..{0.2 * self.max_speed:g} table units per step "
                              f"(a fifth of max_speed, so the expert can stop over a drifting block)")
        if self.max_steps <= 0 or self.fps <= 0:
            raise ConfigError(f"max_steps={self.max_steps}, fps={self.fps}: expected positive integers")


    def _check_grid(self) -> None:
        """Neighbouring cells must not overlap (with jitter and a gap) and blocks need enough cells."""
        spacing = 1 / self.grid - 2 * self.jitter - 0.02
        if self.grid < 0 or self.jitter < 0 or spacing < max(self.block_size, (self.block_size + self.zone_size) / 2) \
                or 0.5 / self.grid - self.jitter < self.zone_size / 2:
            raise ConfigError(f"grid={self.grid}, jitter={self.jitter}: cells of side {1 / max(self.grid, 1):.3f} "
                              f"cannot hold blocks of {self.block_size} and a zone of {self.zone_size} apart; "
                              f"use a smaller grid, jitter or sizes (or grid=0 for a free layout)")
        _, block_ok = grid_cells(self)
        if block_ok.sum() < self.num_blocks or len(block_ok) < self.num_blocks + 1:
            raise ConfigError(f"grid={self.grid}: only {int(block_ok.sum())} cells are far enough from the "
                              f"gripper's start for {self.num_blocks} blocks; use a larger grid")


@dataclass
class Scene:
    """The mutable world state of one episode. Positions are float64 table units."""

    blocks: np.ndarray  # (N, 2) block centres
    colors: tuple[str, ...]  # (N,) colour name of each block
    zone: np.ndarray  # (2,) centre of the target zone
    gripper: np.ndarray  # (2,) gripper position
    target: int  # index of the block named in the prompt
    kind: str  # "reach" | "place"
    closed: bool = False  # gripper closed
    held: int | None = None  # index of the block in the gripper
    touched: bool = False  # the named block has been picked up this episode (a reach then fails)
    moved: float = 0.0  # how far (Chebyshev) the gripper moved in the last step
    drift: np.ndarray | None = None  # (2,) per-step motion of the named block until it is grasped


def sample_scene(config: SimConfig, seed: int) -> Scene:
    """A random non-overlapping layout, named block and task kind, all from `seed`.

    With `config.grid` > 0 the zone and the blocks sit (with a little jitter) at the centres of
    distinct cells of a grid x grid board, so the same positions recur across episodes and each
    block lies inside one image patch of a ViT with a grid-aligned patch grid; this is what makes
    the task learnable from few demonstrations. With grid = 0 they go anywhere, with gaps.
    The gripper starts at HOME (or anywhere, with `random_start`) away from every block, so
    neither task is solved at reset.
    """
    rng = np.random.default_rng(seed)
    colors = tuple(config.colors[i] for i in rng.permutation(len(config.colors))[: config.num_blocks])
    home = None if config.random_start else np.array(HOME)
    while True:  # rejection sampling; a restart is rare with the size limits checked by SimConfig
        zone, blocks = _grid_layout(config, rng) if config.grid else _free_layout(config, rng)
        if blocks is None:
            continue
        if home is not None:
            if np.abs(blocks - home).max(axis=1).min() > _start_clearance(config):
                g = home.copy()
                break
            continue
        for _ in range(200):
            g = rng.uniform(0.08, 0.92, size=2)
            if np.abs(blocks - g).max(axis=1).min() > _start_clearance(config):
                break
        else:
            continue
        break
    target = int(rng.integers(config.num_blocks))
    kind = config.tasks[int(rng.integers(len(config.tasks)))]
    drift = None
    if config.drift > 0:  # its own stream: layouts stay those of drift = 0
        angle = np.random.default_rng([seed, 1]).uniform(0, 2 * np.pi)
        drift = config.drift * np.array([np.cos(angle), np.sin(angle)])
    return Scene(blocks=blocks, colors=colors, zone=zone, gripper=g, target=target, kind=kind, drift=drift)


def _start_clearance(config: SimConfig) -> float:
    """Minimum Chebyshev distance from the starting gripper to every block centre."""
    return config.block_size / 2 + 0.06


def grid_cells(config: SimConfig) -> tuple[np.ndarray, np.ndarray]:
    """Centres (k, 2) of the usable board cells and a mask (k,) of the cells a block may use.

    Usable cells are all n*n cells, or the 4 corner cells with `cells="corners"`. Cells too close
    to HOME (when the gripper starts there) hold no block, only the zone.
    """
    n = config.grid
    index = np.arange(n * n)
    if config.cells == "corners":
        index = np.array([0, n - 1, n * (n - 1), n * n - 1])
    centres = (np.stack([index % n, index // n], axis=1) + 0.5) / n  # (k, 2) x = column, y = row
    if config.random_start:
        return centres, np.ones(len(index), dtype=bool)
    far = np.abs(centres - np.array(HOME)).max(axis=1) - config.jitter > _start_clearance(config)
    return centres, far


def _grid_layout(config: SimConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Zone (2,) and blocks (N, 2) at the jittered centres of distinct random usable grid cells."""
    centres, block_ok = grid_cells(config)
    order = rng.permutation(len(centres))
    blocks = [c for c in order if block_ok[c]][: config.num_blocks]
    zone = next(c for c in order if c not in blocks)
    chosen = centres[[zone, *blocks]] + rng.uniform(-config.jitter, config.jitter, size=(config.num_blocks + 1, 2))
    return chosen[0], chosen[1:]


def _free_layout(config: SimConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None]:
    """Zone (2,) and blocks (N, 2) anywhere on the table with gaps; blocks None if they did not fit."""
    bh, zh = config.block_size / 2, config.zone_size / 2
    zone = rng.uniform(zh + 0.03, 1 - zh - 0.03, size=2)
    blocks: list[np.ndarray] = []
    for _ in range(200 * config.num_blocks):
        if len(blocks) == config.num_blocks:
            break
        p = rng.uniform(bh + 0.04, 1 - bh - 0.04, size=2)
        if np.abs(p - zone).max() < zh + bh + 0.03:
            continue
        if any(np.abs(p - q).max() < 2 * bh + 0.05 for q in blocks):
            continue
        blocks.append(p)
    return zone, (np.stack(blocks) if len(blocks) == config.num_blocks else None)


class SimEnv:
    """Gym-style environment with robot-like observations.

    obs = env.reset(seed)                       # dict, see `observation()`
    obs, reward, done, info = env.step(action)  # action (3,) float in [-1, 1]; info["success"]
    env.task                                    # the prompt, e.g. "move to the red block"
    env.render()                                # both cameras side by side, for videos
    """

    camera_names = CAMERA_NAMES
    camera_keys = CAMERA_KEYS
    state_names = STATE_NAMES
    action_names = ACTION_NAMES
    state_dim = len(STATE_NAMES)
    action_dim = len(ACTION_NAMES)

    def __init__(self, config: SimConfig | None = None, **overrides):
        config = config or SimConfig()
        self.config = dataclasses.replace(config, **overrides) if overrides else config
        self.scene: Scene | None = None
        self.seed: int | None = None
        self.steps = 0
        self.success = False

    # Static description -------------------------------------------------------------------------
    @property
    def fps(self) -> int:
        return self.config.fps

    @property
    def max_steps(self) -> int:
        return self.config.max_steps

    @property
    def image_size(self) -> int:
        return self.config.image_size

    def all_tasks(self) -> list[str]:
        """Every prompt this configuration can produce (colours x task kinds)."""
        return [PROMPTS[k].format(color=c) for k in self.config.tasks for c in self.config.colors]

    def features(self) -> dict:
        """The recorded features in LeRobot's `info.json` form."""
        s = self.config.image_size
        image = {"dtype": "video", "shape": [s, s, 3], "names": ["height", "width", "channels"]}
        return {
            **{key: dict(image) for key in CAMERA_KEYS},
            "observation.state": {"dtype": "float32", "shape": [self.state_dim], "names": list(STATE_NAMES)},
            "action": {"dtype": "float32", "shape": [self.action_dim], "names": list(ACTION_NAMES)},
            "observation.gaze_bbox": {"dtype": "float32", "shape": [4], "names": ["x0", "y0", "x1", "y1"]},
        }

    # Episode --------------------------------------------------------------------------------------
    @property
    def task(self) -> str:
        """The language instruction of the current episode."""
        scene = self._require_scene()
        return PROMPTS[scene.kind].format(color=scene.colors[scene.target])

    @property
    def done(self) -> bool:
        return self.success or self.steps >= self.config.max_steps

    def reset(self, seed: int | None = None, *, color: str | None = None, kind: str | None = None) -> dict:
        """Start the episode of `seed` (None: the previous seed + 1, starting at 0).

        `color` / `kind` override the randomly named block / task kind while keeping the layout.
        If no block has `color`, the block the seed named is repainted with it.
        """
        if seed is None:
            seed = 0 if self.seed is None else self.seed + 1
        scene = sample_scene(self.config, int(seed))
        if color is not None:
            if color not in COLORS:
                raise ConfigError(f"color={color!r}: expected one of {sorted(COLORS)}")
            if color in scene.colors:
                scene.target = scene.colors.index(color)
            else:
                colors = list(scene.colors)
                colors[scene.target] = color
                scene.colors = tuple(colors)
        if kind is not None:
            if kind not in TASK_KINDS:
                raise ConfigError(f"kind={kind!r}: expected one of {list(TASK_KINDS)}")
            scene.kind = kind
        self.scene, self.seed, self.steps, self.success = scene, int(seed), 0, False
        return self.observation()

    def step(self, action) -> tuple[dict, float, bool, dict]:
        """Apply one action (3,) and return (obs, reward, done, info).

        reward is 1.0 on the step that first reaches success, else 0.0. done is True once the
        task succeeded or max_steps were taken; stepping further is allowed and keeps done True.
        """
        scene = self._require_scene()
        a = np.asarray(action, dtype=np.float64).reshape(-1)
        if a.shape != (self.action_dim,):
            raise InputError(f"action has shape {np.shape(action)}; expected ({self.action_dim},) = {list(ACTION_NAMES)}")
        if not np.isfinite(a).all():
            raise InputError(f"action {a.tolist()} contains NaN or inf")
        a = np.clip(a, -1.0, 1.0)

        if scene.drift is not None and scene.held != scene.target:
            self._drift(scene)
        old = scene.gripper
        scene.gripper = np.clip(old + self.config.max_speed * a[:2], *GRIPPER_LIMITS)
        scene.moved = float(np.abs(scene.gripper - old).max())
        if scene.held is not None:
            scene.blocks[scene.held] += scene.gripper - old  # a held block moves with the gripper
        close = bool(a[2] > 0)
        if close and not scene.closed:
            scene.held = self._block_under_gripper()
            scene.touched = scene.touched or scene.held == scene.target
        elif not close:
            scene.held = None
        scene.closed = close
        self.steps += 1

        newly = not self.success and self._solved()
        self.success = self.success or newly
        info = {"success": self.success, "steps": self.steps, "holding": scene.held is not None,
                "timeout": not self.success and self.steps >= self.config.max_steps}
        return self.observation(), float(newly), self.done, info

    def observation(self) -> dict:
        """{camera key: (H, W, 3) uint8, "observation.state": (3,) float32, "task": str}."""
        scene = self._require_scene()
        c = self.config
        state = np.array([scene.gripper[0], scene.gripper[1], float(scene.closed)], dtype=np.float32)
        return {
            "observation.images.top": render_top(scene, c.image_size, c.block_size / 2, c.zone_size / 2),
            "observation.images.wrist": render_wrist(scene, c.image_size, c.wrist_span, c.block_size / 2,
                                                     c.zone_size / 2),
            "observation.state": state,
            "task": self.task,
        }

    def render(self) -> np.ndarray:
        """Top and wrist cameras side by side, (H, 2W, 3) uint8 (a frame of a rollout video)."""
        obs = self.observation()
        return np.concatenate([obs[k] for k in self.camera_keys], axis=1)

    def close(self) -> None:
        """Nothing to release; present so the simulator is an `EvalEnv` as it is."""

    def gaze_bbox(self) -> np.ndarray:
        """(4,) float32 [x0, y0, x1, y1]: the named block's box in normalised top-image coordinates."""
        scene = self._require_scene()
        half = self.config.block_size / 2 + self.config.gaze_margin
        x, y = scene.blocks[scene.target]
        return np.clip(np.array([x - half, y - half, x + half, y + half]), 0.0, 1.0).astype(np.float32)

    # Internals ----------------------------------------------------------------------------------
    def _require_scene(self) -> Scene:
        if self.scene is None:
            raise RuntimeError("SimEnv: call reset(seed) before using the environment")
        return self.scene

    def _drift(self, scene: Scene) -> None:
        """Move the named block by its drift, bouncing off the table's edges."""
        half = self.config.block_size / 2
        moved = scene.blocks[scene.target] + scene.drift
        for axis in range(2):
            if not half <= moved[axis] <= 1 - half:
                scene.drift[axis] = -scene.drift[axis]
                moved[axis] = np.clip(moved[axis], half, 1 - half)
        scene.blocks[scene.target] = moved

    def idle_action(self) -> np.ndarray:
        """What a waiting robot does: no motion, the gripper as it is (3,) float32."""
        return np.array([0.0, 0.0, 1.0 if self._require_scene().closed else -1.0], dtype=np.float32)

    def _block_under_gripper(self) -> int | None:
        """Index of the block whose square contains the gripper (the nearest one), or None."""
        scene = self.scene
        dist = np.abs(scene.blocks - scene.gripper).max(axis=1)  # (N,) Chebyshev distances
        i = int(np.argmin(dist))
        return i if dist[i] <= self.config.block_size / 2 else None

    def _solved(self) -> bool:
        scene = self.scene
        block = scene.blocks[scene.target]
        if scene.kind == "reach":  # stop over it without grasping: passing by on the way to a pick fails
            return (not (scene.closed or scene.touched) and scene.moved < STOP_SPEED * self.config.max_speed
                    and bool(np.abs(scene.gripper - block).max() <= self.config.block_size / 2))
        return scene.held is None and bool(np.abs(block - scene.zone).max() <= self.config.zone_size / 2)
