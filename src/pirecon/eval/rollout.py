"""Closed-loop rollouts of a policy in an `EvalEnv`, with optional mp4 videos.

    results = evaluate(env, runner, seeds=range(100, 150), n_action_steps=5, video_dir=out / "videos")

A policy is either chunked — it has `predict_chunk(obs) -> (H, A)` like `PolicyRunner` — or any
callable `policy(obs)` returning one action (A,) or a chunk (n, A) (the simulator's scripted
expert and random baseline). The first `n_action_steps` actions of every chunk are executed
open-loop, then the policy is asked again from the newest observation (receding horizon).

Determinism: episode `seed` resets the environment with that seed and, for a policy holding a
`torch.Generator` as `generator` (PolicyRunner's sampling noise), reseeds it with the same seed,
so one episode replays alone exactly (`--eval.seed=s --eval.n_episodes=1`).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from pirecon.errors import ConfigError


@dataclass(frozen=True)
class EpisodeResult:
    """One rollout. `chunks` counts the policy queries; `video` is the mp4 path when recorded."""

    index: int
    seed: int
    task: str
    success: bool
    steps: int
    wall_time_s: float
    chunks: int
    video: str | None = None
    # Smoothness of the executed actions: mean |a_k+1 - a_k|, mean |a_k+2 - 2 a_k+1 + a_k|, and the
    # mean |a_k+1 - a_k| across chunk seams only (None with fewer than 2 or 3 actions / no seam).
    mean_abs_delta: float | None = None
    mean_abs_delta2: float | None = None
    seam_abs_delta: float | None = None

    def to_json(self) -> dict:
        return asdict(self)


def next_actions(policy, obs: dict, action_dim: int, previous: np.ndarray | None = None, delay: int = 0,
                 execution_horizon: int | None = None) -> np.ndarray:
    """Ask `policy` for actions at `obs`: (n, action_dim) float32 in robot units. A policy with
    `rtc` set gets the previous chunk's remaining actions (`previous`) to guide its sampling."""
    if previous is not None and getattr(policy, "rtc", False):
        out = policy.predict_chunk(obs, prefix_actions=previous, inference_delay=delay,
                                   execution_horizon=execution_horizon)
    else:
        out = policy.predict_chunk(obs) if hasattr(policy, "predict_chunk") else policy(obs)
    actions = np.asarray(out, dtype=np.float32)
    if actions.ndim == 1:
        actions = actions[None]
    if actions.ndim != 2 or actions.shape[1] != action_dim or len(actions) == 0:
        raise ConfigError(f"the policy returned actions of shape {tuple(np.shape(out))}; the environment takes "
                          f"{action_dim} numbers per step, so expected ({action_dim},) or (chunk, {action_dim}) "
                          f"(was the checkpoint trained on this environment's data?)")
    return actions


def seed_policy(policy, seed: int) -> None:
    """Start the episode: `policy.reset()` if it has one, and reseed its sampling noise with `seed`."""
    if hasattr(policy, "reset"):
        policy.reset()
    generator = getattr(policy, "generator", None)
    if generator is not None and hasattr(generator, "manual_seed"):
        generator.manual_seed(int(seed))


class _Video:
    """Frames (H, W, 3) uint8 -> mp4 through the dataset writer's H.264 encoder; odd sizes get a pixel of padding."""

    def __init__(self, path: Path, fps: float):
        self.path, self.fps = path, fps
        self.encoder = None

    def add(self, frame: np.ndarray) -> None:
        from pirecon.data.video import VideoEncoder

        frame = np.asarray(frame)
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            raise ConfigError(f"env.render() returned {frame.shape} {frame.dtype}; expected an (H, W, 3) uint8 frame")
        h, w = frame.shape[:2]
        if h % 2 or w % 2:  # yuv420p needs even sides
            frame = np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
        if self.encoder is None:
            # A keyframe every second: small files that still seek well.
            self.encoder = VideoEncoder(self.path, self.fps, frame.shape[1], frame.shape[0],
                                        gop=max(1, int(round(self.fps))))
        self.encoder.add(frame)

    def close(self) -> None:
        if self.encoder is not None:
            self.encoder.close()

    def discard(self) -> None:
        try:
            self.close()
        finally:
            self.path.unlink(missing_ok=True)


def run_episode(env, policy, seed: int, n_action_steps: int, *, index: int = 0, video_dir: Path | None = None,
                progress: bool = False, desc: str | None = None, latency_steps: int = 0,
                latency_mode: str = "async") -> EpisodeResult:
    """Roll `policy` out in `env` from `env.reset(seed)` until done or `env.max_steps` steps.

    Latency model (`latency_steps` = d, inference taking d control steps): each chunk runs n =
    `n_action_steps` actions; after n - d of them the next chunk is asked for from the observation
    of that moment, and while it is computed the robot runs the current chunk's next d actions; the
    new chunk's first d actions (those moments have passed) are skipped. So a chunk asked at
    observation k runs its actions d .. d + n - 1 (the first chunk of an episode, when the robot
    waits for it, 0 .. n - 1). d = 0 is plain receding-horizon execution. A policy with `rtc` set
    is given the d + remaining actions of the current chunk to guide the next (real-time chunking).
    `latency_mode="sync"`: the robot instead waits out every inference (d steps of
    `env.idle_action()` while the world moves on) and runs each chunk from its first action. Where
    the environment can idle, the wait for an episode's first chunk is modelled in both modes.

    With `video_dir`, every rendered frame (reset + one per step) goes into
    `video_dir/episode_{index:03d}_{success|failure}.mp4`.
    """
    from tqdm import tqdm

    if n_action_steps < 1:
        raise ConfigError(f"n_action_steps={n_action_steps}: expected a positive integer")
    if latency_mode not in ("async", "sync"):
        raise ConfigError(f"--eval.latency_mode={latency_mode!r}: expected async or sync")
    if latency_mode == "sync" and latency_steps and not hasattr(env, "idle_action"):
        raise ConfigError("--eval.latency_mode=sync needs an environment that can wait in place (the built-in "
                          "simulator); this one has no idle action")
    if not 0 <= latency_steps < n_action_steps:
        raise ConfigError(f"--eval.latency_steps={latency_steps}: expected 0 <= latency < n_action_steps "
                          f"({n_action_steps}): the next chunk must be asked for while the current one runs")
    started = time.perf_counter()
    obs = env.reset(seed)
    seed_policy(policy, seed)
    task = env.task
    video = None
    if video_dir is not None:
        video_dir.mkdir(parents=True, exist_ok=True)
        video = _Video(video_dir / f"episode_{index:03d}.partial.mp4", env.fps)
    bar = tqdm(total=env.max_steps, desc=desc or f"seed {seed}", unit="step", leave=False, disable=not progress,
               dynamic_ncols=True)
    chunks, done = 0, False
    executed, seams = [], []  # actions run, and the indices where a new chunk took over

    def run(actions: np.ndarray) -> bool:
        nonlocal obs
        for action in actions:
            obs, _, finished, _ = env.step(action)
            executed.append(np.asarray(action, dtype=np.float64))
            bar.update(1)
            if video is not None:
                video.add(env.render())
            if finished or env.steps >= env.max_steps:
                return True
        return False

    d, n = latency_steps, n_action_steps
    sync = latency_mode == "sync"

    def wait() -> bool:  # the robot idles while a chunk is computed (the world does not)
        return bool(d) and hasattr(env, "idle_action") and run([env.idle_action()] * d)
    try:
        if video is not None:
            video.add(env.render())
        chunk, start = next_actions(policy, obs, env.action_dim), 0  # the robot waits for the first chunk
        chunks = 1
        done = wait()
        while not done and sync:
            if executed:
                seams.append(len(executed))
            done = run(chunk[:n])
            if not done:
                chunk = next_actions(policy, obs, env.action_dim)
                chunks += 1
                done = wait()
        while not done:
            if d and start + n > len(chunk):
                raise ConfigError(f"chunks of {len(chunk)} actions cannot cover n_action_steps={n} after skipping "
                                  f"--eval.latency_steps={d}; expected n_action_steps + latency <= chunk size")
            if executed:
                seams.append(len(executed))
            done = run(chunk[start:start + n - d])
            if done:
                break
            remaining = chunk[start + n - d:]  # what runs while the next chunk is computed, and after
            following = next_actions(policy, obs, env.action_dim, previous=remaining, delay=d, execution_horizon=n)
            chunks += 1
            done = run(remaining[:d])
            chunk, start = following, d
    except BaseException:
        if video is not None:
            video.discard()
        raise
    finally:
        bar.close()
    success = bool(env.success)
    path = None
    if video is not None:
        video.close()
        final = video_dir / f"episode_{index:03d}_{'success' if success else 'failure'}.mp4"
        video.path.replace(final)
        path = str(final)
    return EpisodeResult(index=index, seed=int(seed), task=task, success=success, steps=int(env.steps),
                         wall_time_s=time.perf_counter() - started, chunks=chunks, video=path,
                         **smoothness(np.asarray(executed), seams))


def smoothness(actions: np.ndarray, seams: list[int]) -> dict[str, float | None]:
    """actions (T, A) executed in order; seams: indices of the first action of each later chunk."""
    first = np.abs(np.diff(actions, axis=0)).mean() if len(actions) > 1 else None
    second = np.abs(np.diff(actions, n=2, axis=0)).mean() if len(actions) > 2 else None
    at = [i for i in seams if 0 < i < len(actions)]
    seam = np.abs(actions[at] - actions[[i - 1 for i in at]]).mean() if at else None
    return {"mean_abs_delta": None if first is None else float(first),
            "mean_abs_delta2": None if second is None else float(second),
            "seam_abs_delta": None if seam is None else float(seam)}


def evaluate(env, policy, seeds: Iterable[int], n_action_steps: int | None = None, *, video_dir: Path | None = None,
             max_videos: int | None = None, progress: bool = False,
             on_episode: Callable[[EpisodeResult], None] | None = None, latency_steps: int = 0,
             latency_mode: str = "async") -> list[EpisodeResult]:
    """One episode per seed; videos of the first `max_videos` episodes (None: all) when `video_dir` is set.

    n_action_steps: actions executed per chunk (None: `policy.n_action_steps`, else 1).
    on_episode: called with each result as soon as its episode ends (for incremental logs).
    """
    seeds = [int(s) for s in seeds]
    n = n_action_steps if n_action_steps is not None else getattr(policy, "n_action_steps", 1)
    results = []
    for i, seed in enumerate(seeds):
        record = video_dir is not None and (max_videos is None or i < max_videos)
        result = run_episode(env, policy, seed, n, index=i, video_dir=video_dir if record else None,
                             progress=progress, desc=f"episode {i + 1}/{len(seeds)} (seed {seed})",
                             latency_steps=latency_steps, latency_mode=latency_mode)
        results.append(result)
        if on_episode is not None:
            on_episode(result)
    return results


def run_baselines(env, seeds: list[int], random_seed: int | None = None) -> dict:
    """Summaries of the scripted expert and a random policy on `seeds` (built-in simulator only).

    `random_seed` seeds the random policy (None: the first seed).
    """
    from pirecon.eval.metrics import summarize
    from pirecon.sim import RandomPolicy, ScriptedExpert

    seeds = [int(s) for s in seeds]
    random = RandomPolicy(env.action_dim, seed=seeds[0] if random_seed is None else random_seed)
    return {name: summarize(r.to_json() for r in evaluate(env, policy, seeds, n_action_steps=1))
            for name, policy in (("scripted expert", ScriptedExpert(env)), ("random policy", random))}
