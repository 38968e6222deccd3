"""Real-time chunking in a task where latency matters: success and seam smoothness against delay.

    .venv/bin/python benchmarks/rtc.py [--workdir DIR] [--delays 0,2,4,8] [--eval-episodes 50]
                                       [--steps 1500] [--episodes 100] [--drift 0.005]
                                       [--arms sync,naive,guided,trained] [--full-size]

Records scripted-expert demonstrations in the built-in simulator with a drifting block
(`SimConfig.drift`), trains a tiny Pi0 as the demo does (chunk 20, 10 actions per chunk), then
evaluates it on the same unseen layouts for every delay d (control steps an inference takes):
(a) sync, the robot waits out each inference while the block drifts on; (b) async, the robot runs
the old chunk meanwhile and switches naively; (c) async with real-time chunking by guidance
(`--policy.rtc_mode=guided`); (d) async with training-time real-time chunking: a second tiny Pi0
trained on the same data, steps and seed with `--policy.rtc_training_max_delay` = the largest
delay, run with `--policy.rtc_mode=trained` (its d = 0 row is that policy without latency).
`--arms` picks some of sync, naive, guided, trained (an empty list: no evaluation).

Prints success with 95 % Wilson intervals and smoothness (mean |da| at chunk seams, mean |d2a|),
then the cost of `sample_actions` plain, guided and trained at tiny size; `--full-size` adds the
same at full size (a random bf16 Pi0, 3 views, `--full-steps` denoising steps; minutes on a CPU).
Trained runs are kept in the work folder with their settings (bench.json): a second call with the
same settings skips recording and training; other settings there are an error (use another
--workdir).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

ARMS = ("sync", "naive", "guided", "trained")


def _cached(folder: Path, settings: dict) -> bool:
    """Whether `folder` already holds the result of `settings` (an error if it holds another's)."""
    record = folder / "bench.json"
    if not record.is_file():
        return False
    found = json.loads(record.read_text())
    if found != settings:
        raise SystemExit(f"{folder} was made with {found}, not {settings}: pass another --workdir or remove it")
    return True


def prepare_data(workdir: Path, episodes: int, drift: float, seed: int, image_size: int, cells: str,
                 num_blocks: int) -> tuple[Path, Path]:
    from pirecon.data.task_tokenizer import build_task_tokenizer
    from pirecon.sim import SimConfig, record_dataset

    data, tokenizer = workdir / "data", workdir / "tokenizer.model"
    settings = {"episodes": episodes, "drift": drift, "seed": seed}
    # Data without bench.json was recorded by an earlier version of this script: used as it is.
    if not _cached(data, settings) and not (data / "meta" / "info.json").is_file():
        sim = SimConfig(image_size=image_size, cells=cells, num_blocks=num_blocks, drift=drift)
        record_dataset(data, episodes, seed=seed, image_size=image_size, config=sim)
        (data / "bench.json").write_text(json.dumps(settings))
    if not tokenizer.exists():
        build_task_tokenizer(data, tokenizer)
    return data, tokenizer


def train_policy(workdir: Path, episodes: int, steps: int, drift: float, seed: int = 0, max_delay: int = 0) -> Path:
    """The tiny Pi0 of the demo on the drifting-block data; `max_delay` > 0 trains it with
    training-time real-time chunking. Kept in workdir/run (or run_rtc_trained_D<max_delay>)."""
    from pirecon.configs.demo import DemoConfig
    from pirecon.demo import demo_train_config
    from pirecon.train.loop import train

    run = workdir / ("run" if not max_delay else f"run_rtc_trained_D{max_delay}")
    settings = {"episodes": episodes, "steps": steps, "drift": drift, "seed": seed, "rtc_training_max_delay": max_delay}
    last = run / "checkpoints" / "last"
    if last.exists() and (_cached(run, settings) or run.name == "run"):  # "run" without bench.json: an earlier version's
        return last
    cfg = DemoConfig(output_dir=str(workdir), episodes=episodes, steps=steps, chunk_size=20, n_action_steps=10,
                     seed=seed)
    data, tokenizer = prepare_data(workdir, episodes, drift, seed, cfg.image_size, cfg.cells, cfg.num_blocks)
    train_cfg = demo_train_config(cfg, data, tokenizer, run, recon_weight=0.0)
    if max_delay:
        import dataclasses
        train_cfg = dataclasses.replace(train_cfg, policy=dataclasses.replace(train_cfg.policy,
                                                                            rtc_training_max_delay=max_delay))
    checkpoint = train(train_cfg).checkpoint
    (run / "bench.json").write_text(json.dumps(settings))
    return checkpoint


def evaluate_row(checkpoint: Path, data: Path, delay: int, mode: str, rtc_mode: str | None, seeds: range) -> dict:
    from pirecon.eval.metrics import summarize
    from pirecon.eval.rollout import evaluate
    from pirecon.inference import PolicyRunner
    from pirecon.sim import SimEnv
    from pirecon.sim.record import recorded_sim_config

    runner = PolicyRunner.from_checkpoint(checkpoint)
    runner.rtc = rtc_mode is not None
    runner.rtc_mode = rtc_mode or "guided"
    env = SimEnv(recorded_sim_config(data))
    results = evaluate(env, runner, seeds, n_action_steps=10, latency_steps=delay, latency_mode=mode)
    return summarize(r.to_json() for r in results)


def sampling_cost(policy, repeats: int, num_steps: int | None = None) -> dict[str, float]:
    """Median seconds per `sample_actions` call with a delay of 4 (or the policy's trained maximum
    when smaller): plain, guided (RTC by guidance) and, for a policy trained with
    rtc_training_max_delay, trained (prefix held, no guidance). One warm-up call each when repeats > 1."""
    from pirecon.batch import synthetic_batch

    cfg = policy.config
    delay = min(4, cfg.rtc_training_max_delay) if cfg.rtc_training_max_delay else 4
    batch = synthetic_batch(cfg, 1, action_dim=7)
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(1, cfg.chunk_size, cfg.max_action_dim, generator=gen)
    previous = torch.randn(1, 10, 7, generator=gen)
    ways = {"plain": {}, "guided": {"prefix_actions": previous, "inference_delay": delay}}
    if cfg.rtc_training_max_delay:
        ways["trained"] = {"prefix_actions": previous, "inference_delay": delay, "rtc_mode": "trained"}
    if repeats > 1:
        for kwargs in ways.values():
            policy.sample_actions(batch, noise=noise, num_steps=num_steps, **kwargs)
    seconds: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(repeats):  # in turns, so a busy moment of the machine does not land on one way only
        for name, kwargs in ways.items():
            started = time.perf_counter()
            policy.sample_actions(batch, noise=noise, num_steps=num_steps, **kwargs)
            seconds[name].append(time.perf_counter() - started)
    return {name: sorted(times)[len(times) // 2] for name, times in seconds.items()}


def random_full_policy(kind: str, max_delay: int):
    """A full-size policy with random bf16 weights (float32 where the model keeps float32), built
    without the slow per-layer initialisation."""
    from pirecon.configs.policy import PolicyConfig
    from pirecon.model.pi0 import Pi0Policy

    config = PolicyConfig(type=kind, variant="full", dtype="bfloat16", rtc_training_max_delay=max_delay)
    with torch.device("meta"):
        policy = Pi0Policy(config)
    policy = policy.to_empty(device="cpu")
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for tensor in policy.parameters():  # the model has no buffers
            tensor.copy_((torch.rand(tensor.shape, generator=gen, dtype=tensor.dtype) - 0.5) * 0.04)
    return policy.eval()


def _cost_line(label: str, timings: dict[str, float], unit: str) -> str:
    scale = 1e3 if unit == "ms" else 1.0
    parts = [f"{name} {t * scale:.1f} {unit}" + (f" ({t / timings['plain']:.2f}x)" if name != "plain" else "")
             for name, t in timings.items()]
    return f"{label}: " + ", ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("outputs/bench_rtc"))
    parser.add_argument("--delays", default="0,2,4,8")
    parser.add_argument("--eval-episodes", type=int, default=50)
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--drift", type=float, default=0.005)
    parser.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated, among {', '.join(ARMS)}")
    parser.add_argument("--full-size", action="store_true", help="also time sampling at full size (minutes)")
    parser.add_argument("--full-steps", type=int, default=10, help="denoising steps of the full-size timing")
    args = parser.parse_args()
    arms = [a for a in args.arms.split(",") if a]
    unknown = sorted(set(arms) - set(ARMS))
    if unknown:
        parser.error(f"--arms: unknown {unknown}; expected some of {', '.join(ARMS)}")
    delays = [int(d) for d in args.delays.split(",")]
    max_delay = max(delays)
    if "trained" in arms and not 0 < max_delay < 20:
        parser.error(f"--delays: the trained arm needs a largest delay in 1..19 (the chunk is 20), got {max_delay}")
    args.workdir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    seeds = range(100_000, 100_000 + args.eval_episodes)
    plain = train_policy(args.workdir, args.episodes, args.steps, args.drift) \
        if set(arms) - {"trained"} else None
    trained = train_policy(args.workdir, args.episodes, args.steps, args.drift, max_delay=max_delay) \
        if "trained" in arms else None
    data = args.workdir / "data"
    rows = []
    for delay in delays:
        plan = []  # (label, checkpoint, latency mode, rtc mode)
        if not delay:
            if plain is not None:
                plan.append(("no latency", plain, "async", None))
            if trained is not None:
                plan.append(("no lat., D-trained", trained, "async", None))
        else:
            plan += [(label, plain, mode, rtc) for arm, label, mode, rtc in (
                ("sync", "sync (waits)", "sync", None), ("naive", "async, naive", "async", None),
                ("guided", "async, RTC", "async", "guided")) if arm in arms]
            if trained is not None:
                plan.append(("async, trained", trained, "async", "trained"))
        for label, checkpoint, mode, rtc_mode in plan:
            summary = evaluate_row(checkpoint, data, delay, mode, rtc_mode, seeds)
            rows.append({"delay": delay, "arm": label, **{k: summary[k] for k in (
                "success_rate", "ci95", "episodes", "seam_abs_delta", "mean_abs_delta2", "mean_steps")}})
            print(f"  d={delay} {label}: {summary['success_rate']:.0%}", flush=True)
    costs = {}
    from pirecon.inference import PolicyRunner
    for name, checkpoint in (("tiny", plain), ("tiny, D-trained", trained)):
        if checkpoint is not None:
            costs[name] = sampling_cost(PolicyRunner.from_checkpoint(checkpoint).policy, repeats=9)
    if args.full_size:
        policy = random_full_policy("pi0", max_delay=4)
        costs[f"full pi0 bf16, 3 views, {args.full_steps} steps"] = sampling_cost(
            policy, repeats=1, num_steps=args.full_steps)
        del policy
    if rows:
        print(f"{'d':>3} {'execution':<19} {'success':>8} {'95% CI':>11} {'seam |da|':>10} {'|d2a|':>8} {'steps':>6}")
    for r in rows:
        low, high = r["ci95"]
        print(f"{r['delay']:>3} {r['arm']:<19} {r['success_rate']:>8.0%} {f'{low:.0%}-{high:.0%}':>11} "
              f"{(r['seam_abs_delta'] or 0):>10.4f} {(r['mean_abs_delta2'] or 0):>8.4f} {r['mean_steps']:>6.1f}")
    print()
    for label, timings in costs.items():
        unit = "s" if label.startswith("full") else "ms"
        print(_cost_line(f"sample_actions {label} (CPU)", timings, unit))
    print(f"total {time.perf_counter() - started:.0f} s")
    (args.workdir / "rtc_results.json").write_text(json.dumps(
        {"rows": rows, "sample_actions_seconds": costs, "arms": arms, "steps": args.steps,
         "eval_episodes": args.eval_episodes}, indent=2) + "\n")


if __name__ == "__main__":
    main()
