"""`pirecon sim record|eval|preview`: the built-in simulator's commands.

The simulator's own parameters (`SimConfig`, also the `--env.*` options of `pirecon eval
--env.type=sim`) live with the simulator in `pirecon.sim.env`, which checks them."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RecordFlags:
    """Record scripted-expert demonstrations as a LeRobot dataset."""

    output: str = ""  # dataset folder to create (required)
    episodes: int = 50  # number of successful episodes to write
    seed: int = 0  # first seed; episode i uses the next seeds
    image_size: int = 96  # camera resolution (square), e.g. 64..256
    version: str = "v3.0"  # LeRobot dataset format: v3.0 or v2.1
    overwrite: bool = False  # replace an existing dataset folder at --output
    cells: str = "all"  # layout: 'all' cells of the 4x4 board, or only its 4 'corners' (the demo's)
    max_steps: int = 80  # episode step limit
    num_blocks: int = 3  # blocks on the table, 1..3 (the demo uses 1)
    action_noise: float = 0.0  # std of the noise on the executed velocity (the expert's action is recorded)
    drift: float = 0.0  # the named block drifts this far per step until grasped (a task where latency matters)


@dataclass(frozen=True)
class SimEvalFlags:
    """Success rate of the scripted expert or a random policy."""

    policy: str = "expert"  # expert or random
    episodes: int = 50  # number of seeded episodes
    seed: int = 0  # first seed
    image_size: int = 96  # camera resolution (square)


@dataclass(frozen=True)
class PreviewFlags:
    """Save a PNG contact sheet of one expert episode (top row: top camera, bottom: wrist)."""

    output: str = ""  # PNG file to write (required)
    seed: int = 0  # episode seed
    image_size: int = 96  # camera resolution (square)
    every: int = 3  # show every n-th frame
