"""`pirecon eval --policy.path=CKPT --env.type=sim|libero [--env.task=...] --output_dir=DIR`

Rolls a checkpoint out closed-loop on seeds eval.seed .. eval.seed + eval.n_episodes - 1,
executing `--policy.n_action_steps` actions of every predicted chunk before replanning, and writes

    DIR/episodes.jsonl   one line per episode: index, seed, task, success, steps, wall_time_s, chunks, video
    DIR/summary.json     success rate with its 95 % Wilson interval, mean episode length, per-task
                         rates, checkpoint, policy and environment settings
    DIR/videos/episode_{i:03d}_{success|failure}.mp4   the first --eval.max_videos episodes (env.render())

`--env.<name>=value` sets any other setting of the environment, e.g. sim: `--env.image_size=64
--env.max_steps=80` (pirecon.sim.SimConfig); libero: `--env.suite=... --env.num_steps_wait=10`. The
sim's image_size defaults to the camera size of the dataset the checkpoint was trained on.
`--eval.baselines=true` (sim only) also runs the scripted expert and a random policy on the same seeds.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from pirecon.checkpoint.folder_config import policy_config
from pirecon.checkpoint.layout import require_ema, resolve_checkpoint, training_dataset
from pirecon.configs.data import DatasetConfig
from pirecon.configs.eval import EnvFlags, EvalConfig, EvalPolicyFlags
from pirecon.configs.policy import RTC_MODES, check_device_flag
from pirecon.configs.parse import format_help, parse_flags, split_env_options, to_dict
from pirecon.errors import ConfigError
from pirecon.eval.envs import ENV_TYPES, make_env, sim_settings
from pirecon.eval.metrics import format_summary, summarize
from pirecon.eval.rollout import evaluate, run_baselines
from pirecon.sim.env import SimConfig

DEFAULT_GUIDANCE_WEIGHT = EvalPolicyFlags.rtc_max_guidance_weight
EPISODES_FILE = "episodes.jsonl"
SUMMARY_FILE = "summary.json"
VIDEOS_DIR = "videos"


# ---------------------------------------------------------------------------------------------
# Flags


def parse_eval_flags(argv: list[str]) -> EvalConfig:
    """Flags -> EvalConfig; `--env.<name>=value` (other than type and task) become env options (strings)."""
    rest, options = split_env_options(argv)
    cfg = parse_flags(rest, EvalConfig)
    cfg = dataclasses.replace(cfg, env=dataclasses.replace(cfg.env, options={**cfg.env.options, **options}))
    check_eval_config(cfg)
    return cfg


def check_eval_config(cfg: EvalConfig) -> None:
    if not cfg.policy.path:
        raise ConfigError("--policy.path: expected a checkpoint folder (e.g. OUT/checkpoints/last)")
    if cfg.env.type not in ENV_TYPES:
        raise ConfigError(f"--env.type={cfg.env.type!r}: expected one of {list(ENV_TYPES)}")
    if cfg.eval.n_episodes <= 0:
        raise ConfigError(f"--eval.n_episodes={cfg.eval.n_episodes}: expected a positive integer")
    if cfg.eval.seed < 0:
        raise ConfigError(f"--eval.seed={cfg.eval.seed}: expected a non-negative integer")
    if cfg.eval.max_videos is not None and cfg.eval.max_videos < 0:
        raise ConfigError(f"--eval.max_videos={cfg.eval.max_videos}: expected >= 0 (or none for every episode)")
    for name in ("n_action_steps", "num_inference_steps"):
        value = getattr(cfg.policy, name)
        if value is not None and value <= 0:
            raise ConfigError(f"--policy.{name}={value}: expected a positive integer")
    check_device_flag(cfg.policy.device)
    if cfg.eval.latency_steps < 0 or cfg.policy.rtc_max_guidance_weight <= 0:
        raise ConfigError(f"--eval.latency_steps={cfg.eval.latency_steps}, --policy.rtc_max_guidance_weight="
                          f"{cfg.policy.rtc_max_guidance_weight}: expected latency >= 0 and a positive weight")
    if cfg.eval.latency_mode not in ("async", "sync"):
        raise ConfigError(f"--eval.latency_mode={cfg.eval.latency_mode!r}: expected async or sync")
    if cfg.eval.latency_mode == "sync" and cfg.env.type != "sim":
        raise ConfigError(f"--eval.latency_mode=sync: a waiting robot is modelled in the built-in simulator only, "
                          f"not in --env.type={cfg.env.type}")
    if cfg.policy.rtc and cfg.eval.latency_steps == 0:
        raise ConfigError("--policy.rtc=true guides each chunk toward the actions that run while it is computed; "
                          "give that time with --eval.latency_steps=d (d > 0)")
    if cfg.policy.rtc and cfg.eval.latency_mode == "sync":
        raise ConfigError("--policy.rtc=true with --eval.latency_mode=sync: a waiting robot runs every chunk from "
                          "its first action, so no previous chunk conditions the next; use --eval.latency_mode=async")
    if cfg.policy.rtc_mode not in RTC_MODES:
        raise ConfigError(f"--policy.rtc_mode={cfg.policy.rtc_mode!r}: expected one of {list(RTC_MODES)}")
    if cfg.policy.rtc_mode == "trained" and not cfg.policy.rtc:
        raise ConfigError("--policy.rtc_mode=trained says how real-time chunking runs; turn it on with "
                          "--policy.rtc=true (and --eval.latency_steps=d)")
    if cfg.policy.rtc_mode == "trained" and cfg.policy.rtc_max_guidance_weight != DEFAULT_GUIDANCE_WEIGHT:
        raise ConfigError(f"--policy.rtc_max_guidance_weight={cfg.policy.rtc_max_guidance_weight} clips guided "
                          f"real-time chunking; --policy.rtc_mode=trained uses no guidance")
    if cfg.eval.baselines and cfg.env.type != "sim":
        raise ConfigError(f"--eval.baselines=true: the scripted expert exists only in the built-in simulator, "
                          f"not in --env.type={cfg.env.type}")


# ---------------------------------------------------------------------------------------------
# Checkpoint


def training_dataset_root(folder: Path) -> Path | None:
    """The root of the dataset the checkpoint was trained on, None when it cannot be found
    (an exported checkpoint is followed back to the checkpoint it came from)."""
    from pirecon.data.layout import dataset_root  # lazy: pirecon.data pulls in torch, not needed for --help

    dataset = training_dataset(folder)
    if not dataset:
        return None
    try:
        root = dataset_root(DatasetConfig(root=dataset.get("root"), repo_id=dataset.get("repo_id")))
    except ConfigError:
        return None
    return root if root.is_dir() else None


# ---------------------------------------------------------------------------------------------
# Environment options


def sim_options(options: dict[str, Any], checkpoint: Path | None) -> tuple[dict[str, Any], str | None]:
    """`--env.*` strings -> the sim's settings, on top of those of the data `checkpoint` was trained on."""
    root = training_dataset_root(checkpoint) if checkpoint is not None else None
    return sim_settings(options, root, from_training=checkpoint is not None)


def build_env(cfg: EnvFlags, checkpoint: Path | None = None):
    """(env, resolved options, note) for `--env.*`."""
    if cfg.type == "sim":
        options, note = sim_options(cfg.options, checkpoint)
        try:
            SimConfig(**options)
        except ConfigError as exc:  # SimConfig names the field; the user typed it as --env.<field>
            raise ConfigError(f"--env.{exc}") from None
    elif cfg.type == "libero":
        # LiberoEnv.from_task converts the command-line strings and names unknown --env.* flags itself.
        options, note = dict(cfg.options), None
    else:
        raise ConfigError(f"--env.type={cfg.type!r}: expected one of {list(ENV_TYPES)}")
    return make_env(cfg.type, cfg.task, **options), options, note


def env_description(env, cfg: EnvFlags, options: dict) -> dict:
    """What summary.json records about the environment."""
    out = {"type": cfg.type, "task": cfg.task, "options": options,
           "fps": env.fps, "max_steps": env.max_steps, "action_dim": env.action_dim}
    config = getattr(env, "config", None)
    if dataclasses.is_dataclass(config):
        out["config"] = to_dict(config)
    return out


# ---------------------------------------------------------------------------------------------
# Output folder


def prepare_output(cfg: EvalConfig) -> Path:
    out = Path(cfg.output_dir or f"outputs/eval/{time.strftime('%Y%m%d-%H%M%S')}")
    ours = [out / EPISODES_FILE, out / SUMMARY_FILE, out / VIDEOS_DIR]
    if any(p.exists() for p in ours):
        if not cfg.overwrite:
            raise ConfigError(f"--output_dir={out} already holds an evaluation ({EPISODES_FILE} / {SUMMARY_FILE}); "
                              f"pass --overwrite=true or choose another folder")
        for p in ours:
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
    out.mkdir(parents=True, exist_ok=True)
    return out


def _episode_line(result, total: int) -> str:
    outcome = "success" if result.success else "failure"
    return (f"episode {result.index + 1}/{total} seed {result.seed}: {outcome} after {result.steps} steps "
            f"({result.wall_time_s:.1f} s, {result.chunks} chunks) | {result.task}")


def real_time_chunking(cfg: EvalConfig, folder: Path, trained_delay: int) -> str | None:
    """How a delayed chunk is conditioned on the previous one, in one start-up line (None without
    latency); a ConfigError when --policy.rtc_mode=trained does not fit the checkpoint."""
    latency, mode = cfg.eval.latency_steps, cfg.policy.rtc_mode
    if cfg.policy.rtc and mode == "trained":
        if trained_delay <= 0:
            raise ConfigError(f"--policy.rtc_mode=trained: {folder} was trained without training-time real-time "
                              f"chunking (rtc_training_max_delay=0); use --policy.rtc_mode=guided, or train with "
                              f"--policy.rtc_training_max_delay=D")
        if latency > trained_delay:
            raise ConfigError(f"--eval.latency_steps={latency} with --policy.rtc_mode=trained: {folder} was trained "
                              f"with delays up to rtc_training_max_delay={trained_delay}; expected latency <= "
                              f"{trained_delay} (or --policy.rtc_mode=guided)")
    if not latency:
        return None
    where = f"inference takes {latency} control steps ({cfg.eval.latency_mode})"
    if cfg.eval.latency_mode == "sync":
        return f"{where}: the robot waits for every chunk"
    if not cfg.policy.rtc:
        return f"{where}: chunks switch naively (no real-time chunking; --policy.rtc=true adds it)"
    if mode == "trained":
        return (f"{where}: real-time chunking, trained mode: each chunk is sampled with the {latency} actions run "
                f"meanwhile given clean (the checkpoint learnt delays up to {trained_delay}); no guidance")
    hint = (f"; this checkpoint was trained with rtc_training_max_delay={trained_delay}, so "
            f"--policy.rtc_mode=trained would need no guidance") if 0 < latency <= trained_delay else ""
    return (f"{where}: real-time chunking, guided mode (guidance clip {cfg.policy.rtc_max_guidance_weight:g})"
            + hint)


def evaluate_checkpoint(cfg: EvalConfig) -> dict:
    """Run the evaluation `cfg` describes, write its files and return the summary."""
    from tqdm import tqdm  # lazy: 0.1 s, not needed for --help

    from pirecon.inference import PolicyRunner  # lazy: torch, not needed for --help
    from pirecon.model.placement import resolve_device  # lazy: torch, not needed for --help

    device = resolve_device(cfg.policy.device)
    folder = resolve_checkpoint(cfg.policy.path)
    policy_cfg = policy_config(folder)
    n_action_steps = cfg.policy.n_action_steps or policy_cfg.n_action_steps
    if n_action_steps > policy_cfg.chunk_size:
        raise ConfigError(f"--policy.n_action_steps={n_action_steps}: expected <= the checkpoint's chunk_size "
                          f"({policy_cfg.chunk_size})")
    latency = cfg.eval.latency_steps
    if latency and not (latency < n_action_steps and n_action_steps + latency <= policy_cfg.chunk_size):
        raise ConfigError(f"--eval.latency_steps={latency}: expected 0 <= latency < n_action_steps ({n_action_steps}) "
                          f"and n_action_steps + latency <= the checkpoint's chunk_size ({policy_cfg.chunk_size})")
    chunking = real_time_chunking(cfg, folder, policy_cfg.rtc_training_max_delay)
    if cfg.use_ema:
        require_ema(folder)
    env, options, note = build_env(cfg.env, folder)
    out = prepare_output(cfg)
    seeds = list(range(cfg.eval.seed, cfg.eval.seed + cfg.eval.n_episodes))
    print(f"pirecon eval: {folder} on {cfg.env.type}{' / ' + cfg.env.task if cfg.env.task else ''}, "
          f"{len(seeds)} episodes (seeds {seeds[0]}..{seeds[-1]}), {n_action_steps} actions per chunk"
          + (f"; {note}" if note else ""), flush=True)
    if chunking:
        print(f"pirecon eval: {chunking}", flush=True)
    runner = PolicyRunner.from_checkpoint(folder, use_ema=cfg.use_ema, device=device, n_action_steps=n_action_steps,
                                          num_steps=cfg.policy.num_inference_steps, seed=cfg.eval.seed,
                                          tokenizer_path=cfg.policy.tokenizer_path)
    runner.rtc, runner.max_guidance_weight = cfg.policy.rtc, cfg.policy.rtc_max_guidance_weight
    runner.rtc_mode = cfg.policy.rtc_mode
    started = time.perf_counter()
    try:
        with open(out / EPISODES_FILE, "w") as log:
            def on_episode(result) -> None:
                log.write(json.dumps(result.to_json()) + "\n")
                log.flush()
                tqdm.write(_episode_line(result, len(seeds)))

            results = evaluate(env, runner, seeds, n_action_steps, latency_steps=cfg.eval.latency_steps,
                               latency_mode=cfg.eval.latency_mode,
                               video_dir=out / VIDEOS_DIR if cfg.eval.video else None,
                               max_videos=cfg.eval.max_videos, progress=cfg.eval.progress_bar, on_episode=on_episode)
        baselines = run_baselines(env, seeds) if cfg.eval.baselines else None
        env_info = env_description(env, cfg.env, options)
    finally:
        env.close()
    summary = {
        **summarize(r.to_json() for r in results),
        "checkpoint": str(folder),
        "use_ema": cfg.use_ema,
        "policy": {"type": policy_cfg.type, "chunk_size": policy_cfg.chunk_size, "n_action_steps": n_action_steps,
                   "num_inference_steps": cfg.policy.num_inference_steps or policy_cfg.num_inference_steps,
                   "device": str(device), "rtc": cfg.policy.rtc,
                   "rtc_mode": cfg.policy.rtc_mode if cfg.policy.rtc else None,
                   "rtc_max_guidance_weight": cfg.policy.rtc_max_guidance_weight
                   if cfg.policy.rtc and cfg.policy.rtc_mode == "guided" else None,
                   "rtc_training_max_delay": policy_cfg.rtc_training_max_delay},
        "latency_steps": cfg.eval.latency_steps, "latency_mode": cfg.eval.latency_mode,
        "env": env_info,
        "seeds": [seeds[0], seeds[-1]],
        "total_wall_time_s": time.perf_counter() - started,
        "videos": str(out / VIDEOS_DIR) if cfg.eval.video and cfg.eval.max_videos != 0 else None,
    }
    if baselines is not None:
        summary["baselines"] = baselines
    (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\nsuccess rate {summary['success_rate']:.1%} over {summary['episodes']} episodes "
          f"(95% CI {summary['ci95'][0]:.1%}-{summary['ci95'][1]:.1%})")
    print(format_summary(summary))
    if baselines is not None:
        print("  baselines on the same seeds:")
        for name, row in baselines.items():
            print(f"    {name:<16} {row['success_rate']:>7.1%}  mean steps {row['mean_steps']:.1f}")
    print(f"  results: {out / SUMMARY_FILE}, {out / EPISODES_FILE}"
          + (f", videos in {out / VIDEOS_DIR}" if summary["videos"] else ""))
    return summary


def run(argv: list[str]) -> int:
    if "--help" in argv or "-h" in argv:
        print(format_help("eval", __doc__, EvalConfig), end="")
        return 0
    cfg = parse_eval_flags(argv)
    evaluate_checkpoint(cfg)
    sys.stdout.flush()
    return 0
