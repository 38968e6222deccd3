"""`lerobot-train`'s flags in pirecon's terms (LeRobot 0.6.2, its TrainPipelineConfig, DatasetConfig,
WandBConfig, PeftConfig and PI0Config / PI05Config): one table, used three ways.

- `pirecon train` reads LeRobot flags that are not pirecon fields through it (`translate_flags`):
  a flag LeRobot spells differently lands in ours; a LeRobot feature pirecon does not have is
  accepted at LeRobot's default value and refused with one error otherwise.
- `--config_path` reads a LeRobot `train_config.json` through it (`translate_train_config`).
- docs/migrating.md carries the table as `flag_table_markdown()` renders it (a test compares).

Flags that are pirecon fields with LeRobot's name and meaning (e.g. --policy.chunk_size, --steps,
--peft.r) are not listed one by one: `pirecon train --help` shows them; the table names a few of
them (SAME) whose feature is easy to miss.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from pirecon.configs.parse import _convert, all_flags
from pirecon.configs.policy import EMPTY_CAMERA
from pirecon.errors import ConfigError

IMAGES = "observation.images."
SAME = "same"  # a pirecon field of that name and meaning
AS = "as"  # lands in another pirecon field (`ours`)
DEFAULT_ONLY = "default only"  # a LeRobot feature pirecon does not have: only LeRobot's default value


@dataclass(frozen=True)
class Flag:
    name: str  # LeRobot's dotted name, e.g. "dataset.streaming"
    status: str  # SAME, AS or DEFAULT_ONLY
    ours: str | None = None  # AS: the pirecon field it lands in
    default: Any = None  # DEFAULT_ONLY: LeRobot's default, the one value accepted
    note: str = ""  # one line for the table


def _default_only(name: str, default: Any, note: str) -> Flag:
    return Flag(name, DEFAULT_ONLY, default=default, note=note)


# LeRobot flags that are not pirecon fields of the same name.
FLAGS: tuple[Flag, ...] = (
    Flag("eval_freq", AS, "env_eval_freq", note="LeRobot <= 0.5's name of env_eval_freq"),
    Flag("accelerator.gradient_accumulation.steps", AS, "grad_accum_steps", note="micro-steps per optimizer step"),
    Flag("policy.time_sampling_beta_alpha", AS, "policy.time_beta_alpha", note="t ~ Beta(alpha, beta) * 0.999 + 0.001"),
    Flag("policy.time_sampling_beta_beta", AS, "policy.time_beta_beta", note="t ~ Beta(alpha, beta) * 0.999 + 0.001"),
    _default_only("policy.time_sampling_scale", 0.999, "fixed in Pi0 / Pi0.5"),
    _default_only("policy.time_sampling_offset", 0.001, "fixed in Pi0 / Pi0.5"),
    _default_only("policy.min_period", 4e-3, "the time embedding's periods are fixed in Pi0 / Pi0.5"),
    _default_only("policy.max_period", 4.0, "the time embedding's periods are fixed in Pi0 / Pi0.5"),
    _default_only("policy.use_relative_actions", False, "actions are learnt as the dataset stores them"),
    _default_only("policy.relative_exclude_joints", ["gripper"], "only with use_relative_actions"),
    _default_only("policy.action_feature_names", None, "set by LeRobot at run time"),
    _default_only("policy.rtc_config", None, "real-time chunking is chosen when the policy runs: `pirecon eval "
                  "--policy.rtc=true --policy.rtc_mode=...`, `pirecon serve --policy.rtc_mode=...` (guided or trained)"),
    Flag("policy.rtc_training_max_delay", SAME, note="training-time real-time chunking: per example a delay d "
         "uniform in 0..D, the first d actions given clean at time 0 and left out of the loss; Pi0 and Pi0.5"),
    _default_only("policy.use_visual_memory", False, "Pi0.5 memory (MEM) is not in pirecon"),
    _default_only("policy.use_proprioceptive_memory", False, "Pi0.5 memory (MEM) is not in pirecon"),
    _default_only("policy.memory_frames", 6, "Pi0.5 memory (MEM) is not in pirecon"),
    _default_only("policy.memory_stride", 30, "Pi0.5 memory (MEM) is not in pirecon"),
    _default_only("policy.memory_temporal_attention_every", 4, "Pi0.5 memory (MEM) is not in pirecon"),
    _default_only("policy.private", None, "upload settings beyond repo_id: `pirecon push --private`"),
    _default_only("policy.tags", None, "model-card tags are not written"),
    _default_only("policy.license", None, "model-card licences are not written"),
    _default_only("policy.pretrained_revision", None, "pin a revision in the id instead: ORG/NAME@REV"),
    _default_only("dataset.repo_type", "dataset", "Hub storage buckets are not read"),
    _default_only("dataset.exclude_episodes", None, "list the episodes to use with --dataset.episodes"),
    _default_only("dataset.eval_split", 0.0, "held-out episodes: --dataset.val_episodes and `pirecon eval-offline`"),
    _default_only("dataset.return_uint8", False, "frames reach the model as floats either way"),
    _default_only("dataset.depth_output_unit", "mm", "depth cameras are not read"),
    _default_only("dataset.streaming", False, "datasets are read from disk"),
    _default_only("dataloader_multiprocessing_context", "spawn", "workers start the platform's way (fork on Linux)"),
    _default_only("eval_steps", 0, "held-out loss during training: `pirecon eval-offline` on checkpoints"),
    _default_only("max_eval_samples", 0, "held-out loss during training: `pirecon eval-offline` on checkpoints"),
    _default_only("save_checkpoint_to_hub", False, "push the final checkpoint: --policy.push_to_hub or `pirecon push`"),
    _default_only("sample_weighting", None, "RA-BC sample weighting is not in pirecon"),
    _default_only("reward_model", None, "reward models are not trained here"),
    _default_only("job.target", None, "runs here (HF Jobs are not used)"),
    _default_only("job.image", "huggingface/lerobot-gpu:latest", "only with job.target"),
    _default_only("job.timeout", "2d", "only with job.target"),
    _default_only("job.detach", False, "only with job.target"),
    _default_only("job.tags", [], "only with job.target"),
    _default_only("eval.recording", False, "evaluation episodes are not recorded as datasets"),
    _default_only("eval.recording_repo_id", None, "evaluation episodes are not recorded as datasets"),
    _default_only("eval.recording_private", False, "evaluation episodes are not recorded as datasets"),
    _default_only("parallelism.dp_replicate", 1, "data parallel: `accelerate launch`"),
    _default_only("parallelism.dp_shard", 1, "sharding: an accelerate FSDP config file (docs/multi-gpu.md)"),
    _default_only("parallelism.context_parallel.ring_degree", 1, "no context parallelism"),
    _default_only("parallelism.context_parallel.ulysses_degree", 1, "no context parallelism"),
    _default_only("parallelism.cfg_parallel", 1, "no CFG parallelism"),
    _default_only("accelerator.mixed_precision", "no", "precision: --policy.dtype (bfloat16 autocasts)"),
    _default_only("accelerator.compile.enabled", False, "compile: --policy.compile_model"),
    _default_only("accelerator.activation_checkpointing.mode", "none", "--policy.gradient_checkpointing"),
    _default_only("ema.enable", False, "EMA: --ema_decay (a constant decay, as openpi's)"),
    _default_only("ema.decay", None, "EMA: --ema_decay (a constant decay, as openpi's)"),
    _default_only("ema.update_after_step", 0, "EMA: --ema_decay (a constant decay, as openpi's)"),
    _default_only("ema.inv_gamma", 1.0, "EMA: --ema_decay (a constant decay, as openpi's)"),
    _default_only("ema.power", 0.75, "EMA: --ema_decay (a constant decay, as openpi's)"),
    _default_only("ema.min_decay", 0.0, "EMA: --ema_decay (a constant decay, as openpi's)"),
    _default_only("ema.max_decay", 0.9999, "EMA: --ema_decay (a constant decay, as openpi's)"),
    _default_only("ema.use_for_eval", True, "EMA weights are chosen at evaluation: `pirecon eval --use_ema`"),
)
FLAG_BY_NAME = {flag.name: flag for flag in FLAGS}


def translate_flags(overrides: list[tuple[str, str]], where: str = "--") -> list[tuple[str, str]]:
    """(name, text) flags -> the same with LeRobot names translated: AS flags renamed, DEFAULT_ONLY
    flags checked against LeRobot's default and dropped (they change nothing), others kept."""
    out = []
    for name, text in overrides:
        flag = FLAG_BY_NAME.get(name)
        if flag is None or flag.status == SAME:
            out.append((name, text))
        elif flag.status == AS:
            out.append((flag.ours, text))
        else:
            check_default(flag, text, where)
    return out


def check_default(flag: Flag, value: Any, where: str = "--") -> None:
    """A DEFAULT_ONLY flag must hold LeRobot's default (given as text or as a JSON value)."""
    default = flag.default
    tp = Any if default is None else (list[str] if isinstance(default, list) else
                                      dict[str, Any] if isinstance(default, dict) else type(default))
    try:
        parsed = _convert(value, tp, f"{where}{flag.name}")
    except ConfigError:
        parsed = value
    if isinstance(parsed, str) and parsed.lower() in ("none", "null") and default is None:
        parsed = None
    if parsed != default:
        raise ConfigError(f"{where}{flag.name}={value}: pirecon accepts only LeRobot's default "
                          f"({_show(default)}) here: {flag.note}")


def _show(value: Any) -> str:
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


# ---------------------------------------------------------------------------------------------
# LeRobot's train_config.json


def looks_like_lerobot(data: dict, train_cls: type) -> bool:
    """A train_config.json written by lerobot-train (not by pirecon): keys pirecon's TrainConfig lacks."""
    ours = set(all_flags(train_cls)) | {f.name for f in dataclasses.fields(train_cls)}
    return "format" not in data and isinstance(data.get("policy"), dict) and \
        any(name not in ours for name in _leaves(data))


def _leaves(data: dict, prefix: str = "") -> list[str]:
    out = []
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value and name not in DICT_VALUED:
            out += _leaves(value, name + ".")
        else:
            out.append(name)
    return out


# Dict-valued LeRobot fields (their value is one flag, not a group).
DICT_VALUED = {"rename_map", "policy.normalization_mapping", "policy.input_features", "policy.output_features",
               "dataset.image_transforms.tfs", "dataset.camera_map"}


def translate_train_config(data: dict, train_cls: type, path: str) -> dict:
    """A LeRobot train_config.json -> values of pirecon's TrainConfig (nested dict). Every key
    either lands (same name, or translated), holds LeRobot's default, or is one error naming it."""
    ours = set(all_flags(train_cls))
    groups = {name.rsplit(".", 1)[0] for name in ours if "." in name}
    out: dict = {}
    where = f"{path}: "
    for name in _leaves(data):
        value = _get(data, name)
        flag = FLAG_BY_NAME.get(name)
        if name == "policy.input_features":
            views = [key[len(IMAGES):] for key, feature in (value or {}).items()
                     if key.startswith(IMAGES) and not key[len(IMAGES):].startswith(EMPTY_CAMERA)
                     and (feature or {}).get("type", "VISUAL") == "VISUAL"]
            if views:  # the policy's cameras, in LeRobot's order; the rest comes from the dataset
                _put(out, "policy.camera_names", views)
            continue
        if name in ("policy.output_features", "checkpoint_path", "resume"):
            continue  # read from the dataset; where to resume and whether is the command line's
        if name == "policy.image_resolution" and isinstance(value, list):
            value = value[0] if len(set(value)) == 1 else value
        if flag is not None and flag.status == DEFAULT_ONLY:
            check_default(flag, value, where)
            continue
        target = flag.ours if flag is not None and flag.status == AS else name
        if target in ours:
            _put(out, target, value)
        elif value in (None, {}, []) or (target in groups and isinstance(value, dict)):
            continue  # an empty LeRobot group (env: null, peft: null) sets nothing
        else:
            raise ConfigError(f"{where}{name}={_show(value)}: pirecon has no such setting (see docs/migrating.md)")
    return out


def _get(data: dict, dotted: str) -> Any:
    for part in dotted.split("."):
        data = data[part]
    return data


def _put(out: dict, dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    for part in parents:
        out = out.setdefault(part, {})
    out[last] = value


# ---------------------------------------------------------------------------------------------
# The table in docs/migrating.md


def flag_table_markdown() -> str:
    """The table of LeRobot flags that are not pirecon fields of the same name."""
    lines = ["| `lerobot-train` flag | in pirecon |", "| --- | --- |"]
    for flag in FLAGS:
        if flag.status == SAME:
            text = f"the same flag: {flag.note}"
        elif flag.status == AS:
            text = f"`--{flag.ours}` ({flag.note})" if flag.note else f"`--{flag.ours}`"
        else:
            text = f"only LeRobot's default `{_show(flag.default)}`: {flag.note}"
        lines.append(f"| `--{flag.name}` | {text} |")
    return "\n".join(lines) + "\n"
