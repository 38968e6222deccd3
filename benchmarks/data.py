"""Data-pipeline throughput: samples/s through `make_dataloader` (video decode + transforms to 224x224)
for the GR00T fixture and for a simulator dataset, with 0, 1 and 2 workers.

    .venv/bin/python benchmarks/data.py [--shared ../shared] [--batches 20]

Prints a table.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

from pirecon.configs.policy import PolicyConfig
from pirecon.data.lerobot import open_dataset
from pirecon.data.loader import make_dataloader
from pirecon.data.normalize import normalizer_from_dataset
from pirecon.data.tokenizer import train_tiny_tokenizer, load_tokenizer
from pirecon.data.transforms import Preprocessor


def throughput(dataset, preprocessor, workers: int, batches: int, batch_size: int) -> float:
    loader = make_dataloader(dataset, preprocessor, batch_size, num_workers=workers, seed=0)
    data = loader.forever()
    next(data)  # worker start-up is not part of the steady state
    start = time.perf_counter()
    for _ in range(batches):
        next(data)
    return batches * batch_size / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[1].parent / "shared")
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--batch_size", type=int, default=8)
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="pirecon-data-bench-"))
    tokenizer = load_tokenizer(train_tiny_tokenizer(["pick the pear", "move to the red block"], tmp / "tok.model"))
    sources = []
    fixture = args.shared / "fixtures" / "gr00t_pick_n_place"
    if (fixture / "meta" / "info.json").is_file():
        sources.append(("GR00T fixture (v2.0, 256x256 H.264, 1 camera)", fixture,
                        {"action_dims": list(range(32)), "state_dims": list(range(32))}))
    else:
        print(f"(no fixture at {fixture}: skipped)")
    from pirecon.sim import record_dataset
    sim = record_dataset(tmp / "sim", episodes=20, seed=0, image_size=96)
    sources.append(("simulator (v3.0, 96x96, 2 cameras)", sim, {}))

    config = PolicyConfig(type="pi0", variant="tiny", image_resolution=224)
    rows = []
    for name, root, dims in sources:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dataset = open_dataset(root, config.chunk_size)
        pre = Preprocessor(config, tokenizer, normalizer_from_dataset(dataset, "pi0"),
                           camera_keys=dataset.camera_keys, **dims)
        for workers in (0, 1, 2):
            rate = throughput(dataset, pre, workers, args.batches, args.batch_size)
            rows.append((name, workers, rate))
            print(f"  {name}, {workers} workers: {rate:.1f} samples/s", flush=True)
    width = max(len(r[0]) for r in rows)
    print(f"\n{'dataset (to 224x224, batch %d)' % args.batch_size:<{width}}  workers  samples/s")
    for name, workers, rate in rows:
        print(f"{name:<{width}}  {workers:>7}  {rate:>9.1f}")


if __name__ == "__main__":
    main()
