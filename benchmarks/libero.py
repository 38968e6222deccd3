"""LIBERO simulator cost on this machine: build, reset and per-step time, physics alone and with
both cameras rendered (OSMesa on CPU) at 256 (resized to 224, as openpi does, or not) and at 224.

    .venv/bin/python benchmarks/libero.py [--task libero_spatial/0] [--steps 20]

Needs `pip install 'pirecon[libero]'` and Debian's libosmesa6. Prints a table; the steps apply
small random actions. `reset` includes the 10 settle steps and robosuite's hard reset (the scene is
reloaded every episode); `build` is creating the simulator for a task (once per task switch).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

os.environ.setdefault("OMP_NUM_THREADS", "1")
# This script is itself named libero.py: keep its folder off the path so `libero` is the package.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def step_times(step, steps: int, seed: int = 0) -> list[float]:
    rng = np.random.default_rng(seed)
    times = []
    for _ in range(steps):
        action = np.concatenate([rng.uniform(-0.3, 0.3, 6), [-1.0]])
        _, dt = timed(lambda: step(action))
        times.append(dt)
    return times


def physics_only(task: str, steps: int) -> dict:
    """The raw robosuite env with camera observations off: no rendering at all."""
    from pirecon.eval.libero import SETTLE_ACTION, LiberoEnv

    env = LiberoEnv.from_task(task)  # for the suite's paths and init states
    try:
        bench = env._benchmark
        t = env.fixed_task or 0
        bddl = os.path.join(env._libero.get_libero_path("bddl_files"), bench.get_task(t).problem_folder,
                            bench.get_task(t).bddl_file)
        sim, build = timed(lambda: env._libero.OffScreenRenderEnv(bddl_file_name=bddl, use_camera_obs=False,
                                                                  ignore_done=True))

        def reset():
            sim.reset()
            sim.set_init_state(env.init_states(t)[0])
            for _ in range(10):
                sim.step(SETTLE_ACTION)

        _, reset_s = timed(reset)
        times = step_times(sim.step, steps)
        sim.close()
    finally:
        env.close()
    return {"build_s": build, "reset_s": reset_s, "times": times}


def with_cameras(task: str, steps: int, camera_size: int, image_size: int) -> dict:
    from pirecon.eval.libero import LiberoEnv

    env = LiberoEnv.from_task(task, camera_size=camera_size, image_size=image_size)
    try:
        _, build = timed(lambda: env._simulator(env.fixed_task or 0))  # what reset does on a task switch
        _, reset_s = timed(lambda: env.reset(0))
        times = step_times(env.step, steps)
    finally:
        env.close()
    return {"build_s": build, "reset_s": reset_s, "times": times}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="libero_spatial/0")
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()

    from pirecon.eval.libero import libero_available

    reason = libero_available()
    if reason is not None:
        sys.exit(f"LIBERO is not available: {reason}")
    import torch
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

    rows = [("physics only (no cameras)", lambda: physics_only(args.task, args.steps))]
    for camera, image, name in ((256, 224, "2 cameras at 256 -> resized to 224 (default)"),
                                (256, 0, "2 cameras at 256, not resized"),
                                (224, 0, "2 cameras rendered at 224")):
        rows.append((name, lambda c=camera, i=image: with_cameras(args.task, args.steps, c, i)))

    print(f"LIBERO {args.task}, MUJOCO_GL={os.environ.get('MUJOCO_GL', 'osmesa')}, {args.steps} steps per row, "
          f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}")
    header = f"{'setup':<46} {'build s':>8} {'reset s':>8} {'step ms (median)':>17} {'step ms (max)':>14}"
    print(header)
    print("-" * len(header))
    for name, run in rows:
        r = run()
        print(f"{name:<46} {r['build_s']:>8.1f} {r['reset_s']:>8.1f} "
              f"{statistics.median(r['times']) * 1e3:>17.0f} {max(r['times']) * 1e3:>14.0f}", flush=True)


if __name__ == "__main__":
    main()
