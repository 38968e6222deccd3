"""`pirecon demo`: record expert demonstrations in the built-in simulator, fine-tune a tiny Pi0 with
LoRA (and the reconstruction loss) on the CPU, evaluate it closed-loop, and print its success rate
next to the scripted expert's and a random policy's. Runs anywhere; downloads nothing.

    pirecon demo                          # lambda = recon.weight (0.5): action + reconstruction loss
    pirecon demo --recon.weight=0         # plain Pi0 fine-tuning (no reconstruction head)
    pirecon demo --recon.compare=true     # train both and print their success rates side by side
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from pirecon.configs.data import DatasetConfig, ImageTransformsConfig
from pirecon.configs.demo import DemoConfig, DemoReconConfig
from pirecon.configs.parse import format_help, parse_flags
from pirecon.configs.policy import PolicyConfig
from pirecon.configs.recon import ReconConfig
from pirecon.configs.train import PeftConfig, TrainConfig
from pirecon.errors import ConfigError
from pirecon.eval.metrics import summarize
from pirecon.sim import SimConfig, SimEnv, record_dataset

MARKER = ".pirecon-demo"


def demo_sim_config(cfg: DemoConfig):
    """The simulator the demo records in and evaluates on (checks --image_size, --cells, --num_blocks)."""
    return SimConfig(image_size=cfg.image_size, cells=cfg.cells, num_blocks=cfg.num_blocks)


def demo_train_config(cfg: DemoConfig, data_dir: Path, tokenizer: Path, run_dir: Path, recon_weight: float | None = None):
    """The `pirecon train` configuration the demo runs (recon_weight None: cfg.recon.weight)."""
    weight = cfg.recon.weight if recon_weight is None else recon_weight
    policy = PolicyConfig(type=cfg.policy_type, variant="tiny", image_resolution=cfg.image_resolution,
                          chunk_size=cfg.chunk_size, n_action_steps=cfg.n_action_steps,
                          camera_names=("base_0_rgb", "left_wrist_0_rgb"), tokenizer_path=str(tokenizer),
                          use_peft=cfg.use_peft, max_state_dim=8, max_action_dim=8,
                          optimizer_lr=cfg.lr, optimizer_weight_decay=1e-4, optimizer_grad_clip_norm=1.0,
                          scheduler_warmup_steps=min(100, cfg.steps // 10), scheduler_decay_steps=cfg.steps,
                          scheduler_decay_lr=cfg.lr / 20)
    return TrainConfig(
        policy=policy,
        dataset=DatasetConfig(root=str(data_dir), cache_in_memory=True, camera_map={"observation.images.top": "base_0_rgb",
                                                              "observation.images.wrist": "left_wrist_0_rgb"},
                              image_transforms=ImageTransformsConfig(enable=cfg.augment != "none",
                                                                     recipe="openpi" if cfg.augment == "openpi" else "lerobot")),
        peft=PeftConfig(r=cfg.lora_r, preset="openpi"),
        recon=ReconConfig(enable=weight > 0, weight=weight, views=tuple(cfg.recon.views)),
        output_dir=str(run_dir), steps=cfg.steps, batch_size=cfg.batch_size, num_workers=cfg.num_workers,
        seed=cfg.seed, save_freq=cfg.steps, log_freq=max(1, cfg.steps // 100), keep_last_checkpoints=1,
    )


def _label(weight: float) -> str:
    return f"Pi0 + recon (lambda={weight:g})" if weight > 0 else "Pi0 (no recon)"


def run(argv: list[str]) -> int:
    if "--help" in argv or "-h" in argv:
        print(format_help("demo", __doc__, DemoConfig), end="")
        return 0
    cfg = parse_flags(argv, DemoConfig)
    sim_config = demo_sim_config(cfg)
    from pirecon.data.task_tokenizer import build_task_tokenizer  # lazy: torch, not needed for --help
    from pirecon.eval.rollout import evaluate, run_baselines  # lazy: torch, not needed for --help
    from pirecon.inference import PolicyRunner  # lazy: torch, not needed for --help
    from pirecon.train.loop import train  # lazy: torch, not needed for --help

    out = Path(cfg.output_dir)
    if out.exists() and any(out.iterdir()):
        # A previous demo's folder (it carries our marker) is replaced; anything else is left alone.
        if not (cfg.overwrite or (out / MARKER).is_file()):
            raise ConfigError(f"--output_dir={out} is not empty and not a previous demo's folder; pass "
                              f"--overwrite=true or choose another folder")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / MARKER).write_text("written by `pirecon demo`; the next demo run replaces this folder\n")
    started = time.perf_counter()

    print(f"[1/4] recording {cfg.episodes} expert demonstrations ...", flush=True)
    data_dir = out / "data"
    record_dataset(data_dir, cfg.episodes, seed=cfg.seed, image_size=cfg.image_size, config=sim_config)
    tokenizer = build_task_tokenizer(data_dir, out / "tokenizer.model").path  # as `pirecon tokenizer` builds it

    weights = [cfg.recon.weight]
    if cfg.recon.compare:
        weights.append(0.0 if cfg.recon.weight > 0 else DemoReconConfig.weight)
    trained = []  # (label, weight, TrainResult, seconds, run folder)
    for i, weight in enumerate(weights):
        run_dir = out / ("run" if i == 0 else ("run_no_recon" if weight == 0 else "run_recon"))
        print(f"[2/4] training a tiny {cfg.policy_type} ({'LoRA r=%d' % cfg.lora_r if cfg.use_peft else 'full'}, "
              f"{_label(weight)}) for {cfg.steps} steps ...", flush=True)
        train_started = time.perf_counter()
        result = train(demo_train_config(cfg, data_dir, tokenizer, run_dir, recon_weight=weight))
        trained.append((_label(weight), weight, result, time.perf_counter() - train_started, run_dir))

    print(f"[3/4] evaluating closed-loop on {cfg.eval_episodes} unseen layouts ...", flush=True)
    # The same closed loop as `pirecon eval`: n_action_steps of every chunk, then replan.
    env = SimEnv(sim_config)
    seeds = range(cfg.eval_seed, cfg.eval_seed + cfg.eval_episodes)
    rows = []
    for label, _, result, _, _ in trained:
        runner = PolicyRunner.from_checkpoint(result.checkpoint)
        rows.append((label, summarize(r.to_json() for r in evaluate(env, runner, seeds))))
    rows += list(run_baselines(env, seeds, random_seed=cfg.seed).items())
    total_s = time.perf_counter() - started

    print("[4/4] results")
    width = max(len(name) for name, _ in rows)
    print(f"  {'policy':<{width}} {'success':>8} {'95% interval':>13} {'episodes':>9} {'mean steps':>11}")
    for name, res in rows:
        low, high = res["ci95"]
        print(f"  {name:<{width}} {res['success_rate']:>8.0%} {f'{low:.0%}-{high:.0%}':>13} {res['episodes']:>9} "
              f"{res['mean_steps']:>11.1f}")
    summary = {name: {"success_rate": res["success_rate"], "ci95": res["ci95"], "episodes": res["episodes"],
                      "mean_steps": res["mean_steps"],
                      "per_task": {k: [v["successes"], v["episodes"]] for k, v in res["per_task"].items()}}
               for name, res in rows}
    for label, weight, result, seconds, run_dir in trained:
        summary[label].update({"recon_weight": weight, "train_seconds": seconds, "final_loss": result.final_loss,
                               "checkpoint": str(result.checkpoint), "log": str(run_dir / "log.jsonl")})
    summary["total_seconds"] = total_s
    (out / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    for label, _, result, seconds, run_dir in trained:
        print(f"  {label}: trained {seconds / 60:.1f} min (final loss {result.final_loss:.4f})")
        print(f"    checkpoint: {result.checkpoint}")
        print(f"    log:        {run_dir / 'log.jsonl'}   plot: {run_dir / 'loss_curves.png'}")
    print(f"  whole demo {total_s / 60:.1f} min; results: {out / 'results.json'}")
    return 0
