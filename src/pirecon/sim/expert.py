"""Scripted expert, random baseline and rollout helpers for `SimEnv`.

A policy here is any callable `policy(obs) -> action` returning (A,) for one step or (n, A) for
an action chunk that is executed open-loop before the policy is asked again. A policy may have a
`reset()` method, which is called at the start of every episode.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from pirecon.sim.env import SimConfig, SimEnv

# Within this many full-speed steps of its subgoal the expert decelerates.
APPROACH_STEPS = 2.0
# It switches the gripper within this fraction of a full step of the subgoal. Every approach step
# before that moved more than ARRIVAL / 2 (Euclidean), i.e. more than STOP_SPEED even diagonally
# (Chebyshev, as the simulator measures "stopped"), so on its way to a grasp it never passes a reach.
ARRIVAL = 0.75


class ScriptedExpert:
    """Privileged expert: it reads block and zone positions from `env.scene`.

    It is reactive (the action depends only on the current scene) and moves in a straight line
    towards its current subgoal: at full speed (|v| = 1) while farther than APPROACH_STEPS full
    steps, then covering 1/APPROACH_STEPS of the remaining distance per step, so it decelerates
    smoothly into the subgoal. It switches the gripper on arrival (within ARRIVAL * max_speed):
        reach: go to the named block with the gripper open (and stop there).
        place: go to the named block, close on arrival, carry the block to the zone centre, open
               on arrival.
    The deceleration is what a learned policy can imitate: its speed is a smooth function of the
    distance it sees, where a stop from full speed would be a single step in the data.
    """

    def __init__(self, env: SimEnv):
        self.env = env

    def reset(self) -> None:
        """Stateless; present for the policy protocol."""

    def __call__(self, obs: dict | None = None) -> np.ndarray:
        return self.act()

    def act(self) -> np.ndarray:
        """The action (3,) float32 [vx, vy, gripper] for the current scene."""
        scene = self.env._require_scene()
        speed = self.env.config.max_speed
        block = scene.blocks[scene.target]
        if scene.kind == "reach":
            goal, grip_on_arrival, grip_before = block, -1.0, -1.0
        elif scene.held == scene.target:
            # Carry: place the block's centre (not the gripper) on the zone centre, then let go.
            goal = scene.zone + (scene.gripper - block)
            grip_on_arrival, grip_before = -1.0, 1.0
        else:
            goal, grip_on_arrival, grip_before = block, 1.0, -1.0
        delta = goal - scene.gripper  # (2,)
        dist = float(np.linalg.norm(delta))
        v = delta / max(dist, APPROACH_STEPS * speed)  # (2,), |v| <= 1
        grip = grip_on_arrival if dist <= ARRIVAL * speed else grip_before
        return np.array([v[0], v[1], grip], dtype=np.float32)


class RandomPolicy:
    """Uniform random actions in [-1, 1]^A (a baseline that should rarely succeed)."""

    def __init__(self, action_dim: int = SimEnv.action_dim, seed: int = 0):
        self.action_dim = action_dim
        self.rng = np.random.default_rng(seed)

    def reset(self) -> None:
        """Keeps the random stream running across episodes."""

    def __call__(self, obs: dict | None = None) -> np.ndarray:
        return self.rng.uniform(-1.0, 1.0, size=self.action_dim).astype(np.float32)


Policy = Callable[[dict], np.ndarray]


def run_episode(env: SimEnv, policy: Policy, seed: int, on_step: Callable | None = None, **reset_kwargs) -> dict:
    """Roll out one episode; returns {"success", "steps", "task", "seed"}.

    `on_step(obs, action)` is called before every step with the observation the action was
    chosen from (what a recorder stores). Action chunks (n, A) are executed until done.
    """
    obs = env.reset(seed, **reset_kwargs)
    if hasattr(policy, "reset"):
        policy.reset()
    done = False
    while not done:
        actions = np.asarray(policy(obs), dtype=np.float32)
        actions = actions.reshape(-1, env.action_dim)  # (n, A)
        for action in actions:
            if on_step is not None:
                on_step(obs, action)
            obs, _, done, _ = env.step(action)
            if done:
                break
    return {"success": env.success, "steps": env.steps, "task": env.task, "seed": seed}


@dataclass(frozen=True)
class EvalResult:
    """Outcome of `evaluate`: success rate over `episodes` seeded episodes."""

    episodes: int
    successes: int
    mean_steps: float
    per_task: dict  # prompt -> (successes, episodes)

    @property
    def success_rate(self) -> float:
        return self.successes / max(self.episodes, 1)


def evaluate(make_policy: Callable[[SimEnv], Policy], episodes: int = 50, seed: int = 0,
             config: SimConfig | None = None) -> EvalResult:
    """Run `make_policy(env)` on seeds seed .. seed + episodes - 1 and count successes."""
    env = SimEnv(config)
    policy = make_policy(env)
    successes, steps, per_task = 0, 0, {}
    for s in range(seed, seed + episodes):
        result = run_episode(env, policy, s)
        successes += result["success"]
        steps += result["steps"]
        ok, n = per_task.get(result["task"], (0, 0))
        per_task[result["task"]] = (ok + result["success"], n + 1)
    return EvalResult(episodes, successes, steps / max(episodes, 1), dict(sorted(per_task.items())))
