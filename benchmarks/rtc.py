"""Real-time chunking in a task where latency matters: success and seam smoothness against delay.

    .venv/bin/python benchmarks/rtc.py [--workdir DIR] [--delays 0,2,4,8] [--eval-episodes 50]
                                       [--steps 1500] [--episodes 100] [--drift 0.005]

Records scripted-expert demonstrations in the built-in simulator with a drifting block
(`SimConfig.drift`), trains a tiny Pi0 as the demo does (chunk 20, 10 actions per chunk), then
evaluates it on the same unseen layouts for every delay d (control steps an inference takes) in
three ways: (a) sync, the robot waits out each inference while the block drifts on; (b) async,
the robot runs the old chunk meanwhile and switches naively; (c) async with real-time chunking.
Prints success with 95 % Wilson intervals and smoothness (mean |da| at chunk seams, mean |d2a|),
then the cost of a guided `sample_actions` next to a plain one. The trained run is kept in the
work folder, so a second call skips recording and training.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def train_policy(workdir: Path, episodes: int, steps: int, drift: float, seed: int = 0) -> Path:
    from pirecon.configs.demo import DemoConfig
    from pirecon.data.task_tokenizer import build_task_tokenizer
    from pirecon.demo import demo_train_config
    from pirecon.sim import SimConfig, record_dataset
    from pirecon.train.loop import train

    run = workdir / "run"
    if (run / "checkpoints" / "last").exists():
        return run / "checkpoints" / "last"
    cfg = DemoConfig(output_dir=str(workdir), episodes=episodes, steps=steps, chunk_size=20, n_action_steps=10,
                     seed=seed)
    sim = SimConfig(image_size=cfg.image_size, cells=cfg.cells, num_blocks=cfg.num_blocks, drift=drift)
    data = workdir / "data"
    record_dataset(data, episodes, seed=seed, image_size=cfg.image_size, config=sim)
    tokenizer = build_task_tokenizer(data, workdir / "tokenizer.model").path
    return train(demo_train_config(cfg, data, tokenizer, run, recon_weight=0.0)).checkpoint


def evaluate_row(checkpoint: Path, delay: int, mode: str, rtc: bool, seeds: range) -> dict:
    from pirecon.eval.metrics import summarize
    from pirecon.eval.rollout import evaluate
    from pirecon.inference import PolicyRunner
    from pirecon.sim import SimEnv
    from pirecon.sim.record import recorded_sim_config

    runner = PolicyRunner.from_checkpoint(checkpoint)
    runner.rtc = rtc
    env = SimEnv(recorded_sim_config(checkpoint.parents[2] / "data"))
    results = evaluate(env, runner, seeds, n_action_steps=10, latency_steps=delay, latency_mode=mode)
    return summarize(r.to_json() for r in results)


def guided_cost(checkpoint: Path, repeats: int = 5) -> tuple[float, float]:
    from pirecon.batch import synthetic_batch
    from pirecon.inference import PolicyRunner

    policy = PolicyRunner.from_checkpoint(checkpoint).policy
    batch = synthetic_batch(policy.config, 1)
    noise = torch.randn(1, policy.config.chunk_size, policy.config.max_action_dim)
    previous = torch.randn(1, 10, policy.config.max_action_dim)
    timings = {}
    for name, kwargs in (("plain", {}), ("guided", {"prefix_actions": previous, "inference_delay": 4})):
        policy.sample_actions(batch, noise=noise, **kwargs)
        started = time.perf_counter()
        for _ in range(repeats):
            policy.sample_actions(batch, noise=noise, **kwargs)
        timings[name] = (time.perf_counter() - started) / repeats
    return timings["plain"], timings["guided"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("outputs/bench_rtc"))
    parser.add_argument("--delays", default="0,2,4,8")
    parser.add_argument("--eval-episodes", type=int, default=50)
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--drift", type=float, default=0.005)
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    checkpoint = train_policy(args.workdir, args.episodes, args.steps, args.drift)
    seeds = range(100_000, 100_000 + args.eval_episodes)
    rows = []
    for delay in [int(d) for d in args.delays.split(",")]:
        arms = [("sync (waits)", "sync", False)] if delay else [("no latency", "async", False)]
        if delay:
            arms += [("async, naive", "async", False), ("async, RTC", "async", True)]
        for name, mode, rtc in arms:
            summary = evaluate_row(checkpoint, delay, mode, rtc, seeds)
            rows.append({"delay": delay, "arm": name, **{k: summary[k] for k in (
                "success_rate", "ci95", "episodes", "seam_abs_delta", "mean_abs_delta2", "mean_steps")}})
    plain, guided = guided_cost(checkpoint)
    print(f"{'d':>3} {'execution':<14} {'success':>8} {'95% CI':>11} {'seam |da|':>10} {'|d2a|':>8} {'steps':>6}")
    for r in rows:
        low, high = r["ci95"]
        print(f"{r['delay']:>3} {r['arm']:<14} {r['success_rate']:>8.0%} {f'{low:.0%}-{high:.0%}':>11} "
              f"{(r['seam_abs_delta'] or 0):>10.4f} {(r['mean_abs_delta2'] or 0):>8.4f} {r['mean_steps']:>6.1f}")
    print(f"\ntiny sample_actions (10 steps, CPU): plain {plain * 1e3:.1f} ms, guided {guided * 1e3:.1f} ms "
          f"({guided / plain:.2f}x)")
    print(f"total {time.perf_counter() - started:.0f} s")
    (args.workdir / "rtc_results.json").write_text(json.dumps(
        {"rows": rows, "plain_ms": plain * 1e3, "guided_ms": guided * 1e3}, indent=2) + "\n")


if __name__ == "__main__":
    main()
