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
import typing
from pathlib import Path
from typing import Any

from pirecon.configs.eval import EnvFlags, EvalConfig
from pirecon.configs.policy import PolicyConfig, check_device_flag
from pirecon.configs.parse import format_help, from_dict, join_flag_values, parse_flags, to_dict
from pirecon.errors import CheckpointError, ConfigError
from pirecon.eval.envs import ENV_TYPES, make_env

EPISODES_FILE = "episodes.jsonl"
SUMMARY_FILE = "summary.json"
VIDEOS_DIR = "videos"
ENV_FIXED = ("type", "task", "options")  # --env.* flags that are not environment options


# ---------------------------------------------------------------------------------------------
# Flags


def parse_eval_flags(argv: list[str]) -> EvalConfig:
    """Flags -> EvalConfig; `--env.<name>=value` (other than type and task) become env options (strings)."""
    rest, options = [], {}
    for arg in join_flag_values(argv):
        if arg.startswith("--env."):
            name, sep, value = arg[len("--env."):].partition("=")
            if name not in ENV_FIXED:
                if not name.isidentifier():
                    raise ConfigError(f"unknown flag {arg.partition('=')[0]}: environment settings look like "
                                      f"--env.<name>=value")
                options[name] = value if sep else "true"
                continue
        rest.append(arg)
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
    if cfg.eval.baselines and cfg.env.type != "sim":
        raise ConfigError(f"--eval.baselines=true: the scripted expert exists only in the built-in simulator, "
                          f"not in --env.type={cfg.env.type}")


# ---------------------------------------------------------------------------------------------
# Checkpoint


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder, or a training output folder's `checkpoints/last`."""
    folder = Path(path).expanduser()
    if (folder / "config.json").is_file():
        return folder.resolve()
    last = folder / "checkpoints" / "last"
    if (last / "config.json").is_file():
        return last.resolve()
    if not folder.exists():
        raise CheckpointError(f"--policy.path={path}: folder not found")
    raise CheckpointError(f"--policy.path={path}: no config.json there (nor in checkpoints/last); expected a "
                          f"pirecon checkpoint folder such as OUT/checkpoints/last")


def checkpoint_policy_config(folder: Path) -> PolicyConfig:
    """The policy config of a checkpoint without loading weights (training checkpoints, LoRA ones
    included, record it in config.json; other model folders are inspected by the weight loader)."""
    from pirecon.model.weights import peek_config
    from pirecon.train.checkpoint import read_checkpoint_config
    data = read_checkpoint_config(folder)
    if isinstance(data.get("policy"), dict):
        return from_dict(PolicyConfig, data["policy"], where=f"{folder / 'config.json'}:policy")
    return peek_config(folder)


def training_dataset_root(folder: Path, _depth: int = 0) -> Path | None:
    """The root of the dataset the checkpoint was trained on, None when it cannot be found.

    Read from the training config stored in config.json; an exported checkpoint is followed back
    to the checkpoint it came from.
    """
    from pirecon.configs.data import DatasetConfig
    from pirecon.data.lerobot import dataset_root
    try:
        data = json.loads((folder / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    dataset = (data.get("train") or {}).get("dataset") or {}
    if not dataset:
        source = data.get("exported_from")
        return training_dataset_root(Path(source), _depth + 1) if source and _depth < 3 else None
    try:
        root = dataset_root(DatasetConfig(root=dataset.get("root"), repo_id=dataset.get("repo_id")))
    except ConfigError:
        return None
    return root if root.is_dir() else None


def dataset_camera_shapes(root: Path) -> dict[str, list[int]] | None:
    """{camera key: [H, W, C]} from a dataset's meta/info.json, None when it cannot be read."""
    try:
        info = json.loads((root / "meta" / "info.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return {key: list(ft.get("shape", [])) for key, ft in (info.get("features") or {}).items()
            if ft.get("dtype") in ("video", "image")}


# ---------------------------------------------------------------------------------------------
# Environment options


def sim_options(options: dict[str, Any], checkpoint: Path | None) -> tuple[dict[str, Any], str | None]:
    """String options -> typed SimConfig fields, on top of the training data's simulator settings.

    Defaults come from the checkpoint's training dataset: the settings `pirecon sim record` stored
    there, else (an older or foreign recording) just its cameras' image_size. Returns (options,
    note) where note says where the defaults came from.
    """
    from pirecon.sim.env import CAMERA_KEYS, SimConfig
    from pirecon.sim.record import recorded_sim_config

    names = [f.name for f in dataclasses.fields(SimConfig)]
    for key in options:
        if key not in names:
            import difflib
            close = difflib.get_close_matches(key, names, n=3)
            hint = f"; did you mean {', '.join('--env.' + c for c in close)}?" if close else ""
            raise ConfigError(f"unknown flag --env.{key} for --env.type=sim{hint} (the sim's settings: "
                              f"{', '.join(names)})")
    hints = typing.get_type_hints(SimConfig)
    converted = {key: getattr(from_dict(_single(key, hints[key]), {key: value}, where="--env"), key)
                 for key, value in options.items()}
    note = None
    root = training_dataset_root(checkpoint) if checkpoint is not None else None
    recorded = recorded_sim_config(root) if root is not None else None
    if recorded is not None:
        # The dataset was recorded by `pirecon sim record`: rebuild the same world, flags override.
        note = "the simulator settings the training data was recorded with (meta/pirecon_sim.json)"
        converted = {**dataclasses.asdict(recorded), **converted}
    elif "image_size" not in converted and checkpoint is not None:
        shapes = (dataset_camera_shapes(root) if root is not None else None) or {}
        sizes = {tuple(shapes[k][:2]) for k in CAMERA_KEYS if len(shapes.get(k, [])) >= 2}  # {(H, W)}
        if len(sizes) == 1 and len(set(*sizes)) == 1:  # both cameras square and of one size
            converted["image_size"] = int(next(iter(sizes))[0])
            note = f"image_size={converted['image_size']} (the training dataset's cameras)"
        else:
            note = (f"image_size={SimConfig.image_size} (the sim default: the training dataset's sim cameras were not "
                    f"found; pass --env.image_size to match them)")
    return converted, note


def _single(name: str, tp: Any) -> type:
    """A one-field dataclass of type `tp`, to reuse the flag parser's conversion and messages."""
    return dataclasses.make_dataclass("EnvOption", [(name, tp)])


def build_env(cfg: EnvFlags, checkpoint: Path | None = None):
    """(env, resolved options, note) for `--env.*`."""
    if cfg.type == "sim":
        from pirecon.sim.env import SimConfig
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


def evaluate_checkpoint(cfg: EvalConfig) -> dict:
    """Run the evaluation `cfg` describes, write its files and return the summary."""
    from tqdm import tqdm

    from pirecon.eval.metrics import format_summary, summarize
    from pirecon.eval.rollout import evaluate, run_baselines
    from pirecon.inference import PolicyRunner
    from pirecon.model.placement import resolve_device
    from pirecon.train.checkpoint import EMA_FILE

    device = resolve_device(cfg.policy.device)
    folder = resolve_checkpoint(cfg.policy.path)
    policy_cfg = checkpoint_policy_config(folder)
    n_action_steps = cfg.policy.n_action_steps or policy_cfg.n_action_steps
    if n_action_steps > policy_cfg.chunk_size:
        raise ConfigError(f"--policy.n_action_steps={n_action_steps}: expected <= the checkpoint's chunk_size "
                          f"({policy_cfg.chunk_size})")
    latency = cfg.eval.latency_steps
    if latency and not (latency < n_action_steps and n_action_steps + latency <= policy_cfg.chunk_size):
        raise ConfigError(f"--eval.latency_steps={latency}: expected 0 <= latency < n_action_steps ({n_action_steps}) "
                          f"and n_action_steps + latency <= the checkpoint's chunk_size ({policy_cfg.chunk_size})")
    if cfg.use_ema and not (folder / EMA_FILE).is_file():
        raise CheckpointError(f"--use_ema=true but {folder} holds no {EMA_FILE}; train with --ema_decay=... to "
                              f"keep EMA weights, or evaluate the raw weights with --use_ema=false")
    env, options, note = build_env(cfg.env, folder)
    out = prepare_output(cfg)
    seeds = list(range(cfg.eval.seed, cfg.eval.seed + cfg.eval.n_episodes))
    print(f"pirecon eval: {folder} on {cfg.env.type}{' / ' + cfg.env.task if cfg.env.task else ''}, "
          f"{len(seeds)} episodes (seeds {seeds[0]}..{seeds[-1]}), {n_action_steps} actions per chunk"
          + (f"; {note}" if note else ""), flush=True)
    runner = PolicyRunner.from_checkpoint(folder, use_ema=cfg.use_ema, device=device, n_action_steps=n_action_steps,
                                          num_steps=cfg.policy.num_inference_steps, seed=cfg.eval.seed,
                                          tokenizer_path=cfg.policy.tokenizer_path)
    runner.rtc, runner.max_guidance_weight = cfg.policy.rtc, cfg.policy.rtc_max_guidance_weight
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
                   "rtc_max_guidance_weight": cfg.policy.rtc_max_guidance_weight if cfg.policy.rtc else None},
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
