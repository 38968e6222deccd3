"""Does the reconstruction loss help? The sweep behind `benchmarks/recon_ablation.py`.

Records expert demonstrations of a simulator task once, trains the demo's tiny Pi0 on them for
every (arm, seed) under the same budget, evaluates each run at evenly spaced checkpoints on the
same unseen layouts and writes, into the output folder:

    data/, tokenizer.model             the recorded task (once)
    runs/ARM/seedS/                    a `pirecon train` output folder, plus
        eval_STEP.json                 per-episode successes at checkpoint STEP
        recon_STEP.png                 recon-viz grid at checkpoint STEP (reconstruction arms)
        result.json                    written last: the run is finished
    results.json, table.md             per run, per arm and the paired differences to the first arm
    success_vs_steps.png               success against training steps, per arm

A rerun resumes: finished runs are skipped, an interrupted run continues from its last checkpoint
(`pirecon train --resume`), evaluations already written are read back.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from pathlib import Path

from pirecon.checkpoint.layout import CHECKPOINTS, last_checkpoint, step_folders
from pirecon.configs.ablation import ARMS, AblationConfig
from pirecon.configs.demo import DemoConfig
from pirecon.configs.recon import ReconVizConfig
from pirecon.demo import demo_sim_config, demo_train_config
from pirecon.eval.metrics import mean_interval, wilson_interval
from pirecon.sim import SimEnv, record_dataset
from pirecon.train.logs import read_log

RECORDED = ".recorded"  # marker written after the dataset is complete


def demo_config(cfg: AblationConfig, seed: int) -> DemoConfig:
    """The demo's settings with the sweep's task, budget and seed."""
    return DemoConfig(episodes=cfg.episodes, num_blocks=cfg.num_blocks, image_size=cfg.image_size,
                      steps=cfg.steps, batch_size=cfg.batch_size, lora_r=cfg.lora_r, seed=seed,
                      eval_episodes=cfg.eval_episodes)


def train_config(cfg: AblationConfig, arm: str, seed: int, data_dir: Path, tokenizer: Path, run_dir: Path):
    """The `pirecon train` configuration of one run: the demo's, with the arm's reconstruction."""
    _, region, target = ARMS[arm]
    weight = 0.0 if region is None else cfg.recon_weight
    tc = demo_train_config(demo_config(cfg, seed), data_dir, tokenizer, run_dir, recon_weight=weight)
    recon = tc.recon
    if region is not None:
        recon = dataclasses.replace(recon, region=region, target=target,
                                    vae_path=cfg.vae_path if target == "vae" else None)
    every = max(1, cfg.steps // cfg.eval_points)
    return dataclasses.replace(tc, recon=recon, save_freq=every, keep_last_checkpoints=cfg.eval_points + 1,
                               resume=last_checkpoint(run_dir) is not None)


def record_once(cfg: AblationConfig, out: Path) -> tuple[Path, Path]:
    """The sweep's dataset and tokenizer, recorded on the first call (a half-written one is redone)."""
    from pirecon.data.task_tokenizer import build_task_tokenizer  # lazy: sentencepiece, only when recording
    data_dir, tokenizer = out / "data", out / "tokenizer.model"
    if not (data_dir / RECORDED).is_file() or not tokenizer.is_file():
        shutil.rmtree(data_dir, ignore_errors=True)
        print(f"recording {cfg.episodes} expert demonstrations ({cfg.num_blocks} blocks) ...", flush=True)
        record_dataset(data_dir, cfg.episodes, seed=0, image_size=cfg.image_size, config=sim_config(cfg))
        build_task_tokenizer(data_dir, tokenizer)
        (data_dir / RECORDED).write_text("complete\n")
    return data_dir, tokenizer


def sim_config(cfg: AblationConfig):
    return demo_sim_config(demo_config(cfg, 0))


def _write_json(path: Path, body) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(body, indent=2) + "\n")
    os.replace(tmp, path)


def evaluate_checkpoint(cfg: AblationConfig, run_dir: Path, step: int) -> dict:
    """Successes of checkpoint `step` on the sweep's unseen layouts (read back when already written)."""
    path = run_dir / f"eval_{step:06d}.json"
    if path.is_file():
        return json.loads(path.read_text())
    from pirecon.eval.rollout import evaluate  # lazy: the simulator's renderer, only when evaluating
    from pirecon.inference import PolicyRunner  # lazy: loads torch models, only when evaluating
    demo = demo_config(cfg, 0)
    runner = PolicyRunner.from_checkpoint(run_dir / CHECKPOINTS / f"{step:06d}")
    seeds = range(demo.eval_seed, demo.eval_seed + cfg.eval_episodes)
    started = time.perf_counter()
    results = evaluate(SimEnv(sim_config(cfg)), runner, seeds)
    body = {"step": step, "successes": [bool(r.success) for r in results],
            "seconds": time.perf_counter() - started}
    _write_json(path, body)
    return body


def write_viz(cfg: AblationConfig, run_dir: Path, data_dir: Path, step: int) -> Path | None:
    from pirecon.recon_viz import recon_viz  # lazy: only for reconstruction arms
    path = run_dir / f"recon_{step:06d}.png"
    if cfg.viz_frames and not path.is_file():
        viz = ReconVizConfig(output=str(path), frames=cfg.viz_frames)
        viz = dataclasses.replace(viz, policy=dataclasses.replace(viz.policy, path=str(run_dir / CHECKPOINTS / f"{step:06d}")),
                                  dataset=dataclasses.replace(viz.dataset, root=str(data_dir)))
        recon_viz(viz)
    return path if path.is_file() else None


def run_one(cfg: AblationConfig, arm: str, seed: int, data_dir: Path, tokenizer: Path, out: Path) -> dict:
    """Train (or resume) and evaluate one run; its result.json marks it finished."""
    from pirecon.train.loop import train  # lazy: torch training, only when a run is missing
    run_dir = out / "runs" / arm / f"seed{seed}"
    result_path = run_dir / "result.json"
    if result_path.is_file():
        print(f"  {arm} seed {seed}: finished earlier, skipped", flush=True)
        return json.loads(result_path.read_text())
    tc = train_config(cfg, arm, seed, data_dir, tokenizer, run_dir)
    if not tc.resume and run_dir.exists():
        shutil.rmtree(run_dir)  # killed before its first checkpoint: start over
    print(f"  {arm} seed {seed}: training {cfg.steps} steps{' (resumed)' if tc.resume else ''} ...", flush=True)
    started = time.perf_counter()
    train(tc)
    train_seconds = time.perf_counter() - started
    rates = [row["samples_per_s"] for row in read_log(run_dir / "log.jsonl") if row.get("samples_per_s")]
    step_seconds = cfg.batch_size / (sum(rates) / len(rates)) if rates else train_seconds / cfg.steps
    evaluations = []
    for step in (int(folder.name) for folder in step_folders(run_dir)):
        evaluations.append(evaluate_checkpoint(cfg, run_dir, step))
        if ARMS[arm][1] is not None:
            write_viz(cfg, run_dir, data_dir, step)
    body = {"arm": arm, "seed": seed, "steps": cfg.steps, "step_seconds": step_seconds,
            "train_seconds": train_seconds, "resumed": tc.resume,
            "evaluations": [{"step": e["step"], "successes": sum(e["successes"]), "episodes": len(e["successes"])}
                            for e in evaluations]}
    _write_json(result_path, body)
    return body


def summarize_sweep(runs: list[dict], arms: tuple[str, ...]) -> dict:
    """Per arm: the final success per seed with its Wilson interval, the mean over seeds with a t
    interval, the paired difference to the first arm (same seeds), the mean success at every
    evaluated step and the mean step time."""
    by_arm = {arm: sorted((r for r in runs if r["arm"] == arm), key=lambda r: r["seed"]) for arm in arms}
    final = {arm: {r["seed"]: r["evaluations"][-1] for r in rs} for arm, rs in by_arm.items()}
    baseline = arms[0]
    summary = {}
    for arm, rs in by_arm.items():
        if not rs:
            continue
        per_seed = []
        for r in rs:
            last = r["evaluations"][-1]
            low, high = wilson_interval(last["successes"], last["episodes"])
            per_seed.append({"seed": r["seed"], "successes": last["successes"], "episodes": last["episodes"],
                             "rate": last["successes"] / last["episodes"], "ci95": [low, high]})
        mean, low, high = mean_interval(s["rate"] for s in per_seed)
        paired = None
        common = sorted(set(final[arm]) & set(final[baseline]))
        if arm != baseline and common:
            diffs = [final[arm][s]["successes"] / final[arm][s]["episodes"]
                     - final[baseline][s]["successes"] / final[baseline][s]["episodes"] for s in common]
            d, d_low, d_high = mean_interval(diffs)
            paired = {"seeds": common, "differences": diffs, "mean": d, "ci95": [d_low, d_high]}
        curve: dict[int, list[float]] = {}
        for r in rs:
            for e in r["evaluations"]:
                curve.setdefault(e["step"], []).append(e["successes"] / e["episodes"])
        summary[arm] = {"description": ARMS[arm][0], "per_seed": per_seed, "mean": mean, "ci95": [low, high],
                        "paired_vs_" + baseline: paired,
                        "by_step": {step: sum(v) / len(v) for step, v in sorted(curve.items())},
                        "step_seconds": sum(r["step_seconds"] for r in rs) / len(rs)}
    return summary


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.0%}"


def format_table(summary: dict, baseline: str) -> str:
    steps = sorted({step for s in summary.values() for step in s["by_step"]})
    head = ["arm", "success per seed", "mean [95% t interval]", f"paired vs {baseline}"] + \
        [f"@{step}" for step in steps] + ["s/step"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for arm, s in summary.items():
        seeds = ", ".join(f"{p['successes']}/{p['episodes']} [{p['ci95'][0]:.0%}-{p['ci95'][1]:.0%}]"
                          for p in s["per_seed"])
        low, high = s["ci95"]
        mean = f"{s['mean']:.1%}" + (f" [{low:.1%}, {high:.1%}]" if low is not None else "")
        paired = s["paired_vs_" + baseline]
        diff = "-" if paired is None else f"{paired['mean']:+.1%}" + (
            f" [{paired['ci95'][0]:+.1%}, {paired['ci95'][1]:+.1%}]" if paired["ci95"][0] is not None else "")
        row = [arm, seeds, mean, diff] + [_pct(s["by_step"].get(step)) for step in steps] + [f"{s['step_seconds']:.2f}"]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def plot_curves(summary: dict, runs: list[dict], path: Path) -> Path:
    import matplotlib  # lazy: slow to import, used once at the end
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: as above
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, (arm, s) in enumerate(summary.items()):
        colour = f"C{i}"
        for r in (r for r in runs if r["arm"] == arm):
            xs = [e["step"] for e in r["evaluations"]]
            ax.plot(xs, [e["successes"] / e["episodes"] for e in r["evaluations"]], color=colour, alpha=0.3, lw=1)
        xs = sorted(s["by_step"])
        ax.plot(xs, [s["by_step"][x] for x in xs], color=colour, lw=2, marker="o", label=f"{arm}: {s['description']}")
    ax.set_xlabel("training step")
    ax.set_ylabel("success on unseen layouts")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def run_sweep(cfg: AblationConfig) -> dict:
    """The whole sweep (resuming what a previous call left); returns the summary per arm."""
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    data_dir, tokenizer = record_once(cfg, out)
    runs = [run_one(cfg, arm, seed, data_dir, tokenizer, out) for seed in cfg.seeds for arm in cfg.arms]
    summary = summarize_sweep(runs, cfg.arms)
    table = format_table(summary, cfg.arms[0])
    _write_json(out / "results.json", {"config": dataclasses.asdict(cfg), "runs": runs, "summary": summary,
                                       "seconds_this_call": time.perf_counter() - started})
    (out / "table.md").write_text(table + "\n")
    plot_curves(summary, runs, out / "success_vs_steps.png")
    return summary
