"""Policy-server benchmarks: round-trip latency for one client, throughput with several clients.

    .venv/bin/python benchmarks/serve.py [--requests 50] [--clients 4] [--resolution 224] [--steps 10]

A random tiny Pi0 saved as a LIBERO-shaped checkpoint (cameras image + image2, state 8,
action 7) is served on a free local port with `--serve.preset=libero`; requests are openpi LIBERO
client requests (two 224x224x3 uint8 images, state, prompt) sent with `PolicyClient`. Prints a table.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch


def write_checkpoint(folder: Path, resolution: int, chunk_size: int, steps: int) -> Path:
    """A random tiny policy with LIBERO's dataset layout, saved like `pirecon export` writes one."""
    from pirecon.configs.policy import PolicyConfig
    from pirecon.data.normalize import save_norm_stats_json
    from pirecon.data.tokenizer import train_tiny_tokenizer
    from pirecon.model.pi0 import Pi0Policy
    from pirecon.checkpoint.write_pirecon import save_policy
    from pirecon.sim import SimEnv

    config = PolicyConfig(variant="tiny", image_resolution=resolution, chunk_size=chunk_size,
                          n_action_steps=min(10, chunk_size), num_inference_steps=steps,
                          camera_names=("base_0_rgb", "left_wrist_0_rgb"))
    save_policy(Pi0Policy(config), folder, extra_config={"tokenizer": "tokenizer.model"})
    train_tiny_tokenizer(SimEnv().all_tasks(), folder / "tokenizer.model")
    stats = {key: {"mean": np.zeros(d), "std": np.ones(d), "q01": -np.ones(d), "q99": np.ones(d)}
             for key, d in (("state", 8), ("actions", 7))}
    save_norm_stats_json(stats, folder / "norm_stats.json")
    (folder / "data_info.json").write_text(json.dumps({
        "camera_keys": ["observation.images.image", "observation.images.image2"], "action_dim": 7,
        "normalization_mode": "mean_std"}))
    return folder


def percentile_ms(seconds: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(seconds) * 1e3, q))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=50, help="requests per client")
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients for the throughput row")
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--chunk_size", type=int, default=50)
    parser.add_argument("--steps", type=int, default=10, help="denoising steps")
    args = parser.parse_args()

    from pirecon.serve.client import PolicyClient
    from pirecon.configs.serve import ServeConfig, ServeOptions, ServePolicyFlags
    from pirecon.serve.command import build_server
    from pirecon.serve.obs_map import example_request
    from pirecon.serve.server import serve_in_thread

    workdir = Path(tempfile.mkdtemp(prefix="pirecon-serve-bench-"))
    rows: list[tuple[str, str]] = []

    def report(name: str, value: str) -> None:
        rows.append((name, value))
        print(f"  {name}: {value}", flush=True)

    try:
        checkpoint = write_checkpoint(workdir / "ckpt", args.resolution, args.chunk_size, args.steps)
        server = build_server(ServeConfig(policy=ServePolicyFlags(path=str(checkpoint)), host="127.0.0.1", port=0,
                                          serve=ServeOptions(preset="libero")))
        requests = [example_request("libero", seed=i) for i in range(8)]
        what = f"tiny pi0, 2 views at {args.resolution}, chunk {args.chunk_size}, {args.steps} steps"

        # The model alone, in this thread: the floor under every round trip.
        obs = server.mapper(requests[0])
        server.runner.predict_chunk(obs)
        direct = []
        for _ in range(min(args.requests, 20)):
            start = time.perf_counter()
            server.runner.predict_chunk(obs)
            direct.append(time.perf_counter() - start)
        report(f"PolicyRunner.predict_chunk, no server ({what})", f"p50 {percentile_ms(direct, 50):.1f} ms")

        with serve_in_thread(server) as url:
            with PolicyClient(url) as client:
                client.infer(requests[0])  # warm-up
                latency, infer = [], []
                for i in range(args.requests):
                    start = time.perf_counter()
                    reply = client.infer(requests[i % len(requests)])
                    latency.append(time.perf_counter() - start)
                    infer.append(reply["server_timing"]["infer_ms"] / 1e3)
            report(f"round trip, 1 client, {args.requests} requests",
                   f"p50 {percentile_ms(latency, 50):.1f} ms / p99 {percentile_ms(latency, 99):.1f} ms "
                   f"(server infer p50 {percentile_ms(infer, 50):.1f} ms)")

            per_client: list[list[float]] = [[] for _ in range(args.clients)]
            barrier = threading.Barrier(args.clients + 1)

            def run_client(c: int) -> None:
                with PolicyClient(url) as client:
                    client.infer(requests[c % len(requests)])
                    barrier.wait()
                    for i in range(args.requests):
                        start = time.perf_counter()
                        client.infer(requests[(c + i) % len(requests)])
                        per_client[c].append(time.perf_counter() - start)

            threads = [threading.Thread(target=run_client, args=(c,)) for c in range(args.clients)]
            for t in threads:
                t.start()
            barrier.wait()
            start = time.perf_counter()
            for t in threads:
                t.join()
            elapsed = time.perf_counter() - start
            total = args.clients * args.requests
            all_latency = [s for lat in per_client for s in lat]
            report(f"throughput, {args.clients} concurrent clients x {args.requests} requests",
                   f"{total / elapsed:.1f} requests/s (round trip p50 {percentile_ms(all_latency, 50):.1f} ms / "
                   f"p99 {percentile_ms(all_latency, 99):.1f} ms)")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    width = max(len(r[0]) for r in rows)
    print(f"{'measurement':<{width}}  result")
    print("-" * (width + 40))
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    print(f"(torch {torch.__version__}, {torch.get_num_threads()} threads; inference is serialised on one worker "
          f"thread, so throughput is bounded by 1 / infer time)")


if __name__ == "__main__":
    main()
