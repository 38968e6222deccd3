"""Cost of training-time image augmentation next to a tiny-variant training step.

    .venv/bin/python benchmarks/augment.py [--batch 32] [--resolution 224] [--views 3] [--repeats 5]

Times, side by side in one run, `augment_batch` with LeRobot's default transforms and with
openpi's recipe on a batch of B samples x V camera views at R x R, and one training step (forward,
backward, AdamW) of the tiny Pi0 on the same batch. Prints a table with the ratio.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def timed_together(fns: list, repeats: int) -> list[float]:
    """Median seconds of each function, measured in turns (one call of each per round) so that
    load from elsewhere on the machine falls on all of them alike."""
    for fn in fns:
        fn()  # warm-up
    samples: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, out in zip(fns, samples):
            started = time.perf_counter()
            fn()
            out.append(time.perf_counter() - started)
    return [statistics.median(s) for s in samples]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--views", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    from pirecon.batch import synthetic_batch
    from pirecon.configs.data import ImageTransformsConfig
    from pirecon.configs.policy import DEFAULT_CAMERAS, PolicyConfig
    from pirecon.data.augment import augment_batch
    from pirecon.model.pi0 import Pi0Policy

    config = PolicyConfig(variant="tiny", image_resolution=args.resolution, camera_names=DEFAULT_CAMERAS[:args.views])
    batch = synthetic_batch(config, args.batch)
    policy = Pi0Policy(config)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-4)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        policy(batch)["loss"].backward()
        optimizer.step()

    names, fns = ["tiny Pi0 training step"], [step]
    for recipe in ("lerobot", "openpi"):
        cfg = ImageTransformsConfig(enable=True, recipe=recipe)
        generator = torch.Generator().manual_seed(0)
        names.append(f"augment_batch ({recipe})")
        fns.append(lambda cfg=cfg, generator=generator: augment_batch(batch, cfg, generator, config.camera_names))
    rows = list(zip(names, timed_together(fns, args.repeats)))
    base = rows[0][1]
    print(f"batch {args.batch} x {args.views} views at {args.resolution}px, {torch.get_num_threads()} threads, "
          f"median of {args.repeats}, measured in turns")
    print(f"{'what':<28} {'seconds':>9} {'vs step':>8}")
    for name, seconds in rows:
        print(f"{name:<28} {seconds:>9.3f} {seconds / base:>8.1%}")


if __name__ == "__main__":
    main()
