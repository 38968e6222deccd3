"""`pirecon train` configuration: `--peft.*`, `--optimizer.*`, `--scheduler.*`, `--wandb.*` and the
run itself, around `--policy.*` (configs.policy), `--dataset.*` (configs.data) and `--recon.*`
(configs.recon). Names follow LeRobot's `TrainPipelineConfig`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from pirecon.configs.data import DatasetConfig
from pirecon.configs.policy import PolicyConfig
from pirecon.configs.presets import get_preset
from pirecon.configs.recon import ReconConfig
from pirecon.errors import ConfigError

PEFT_PRESETS = ("lerobot", "openpi")


@dataclass(frozen=True)
class PeftConfig:
    """`--peft.*`: LoRA adapters through PEFT, as LeRobot's --peft.*: typing any of these flags
    turns LoRA on (as does --policy.use_peft=true). The preset says what trains (train/peft_plan.py)."""

    method_type: str = "lora"  # the PEFT method: lora (LeRobot writes LORA; case does not matter)
    preset: str = "lerobot"  # lerobot: base frozen, LoRA on the targets | openpi: openpi's LoRA fine-tune (both Gemma stacks, SigLIP and projections in full)
    r: int | None = None  # LoRA rank; none: 16 (openpi preset: 16 on the VLM, 32 on the action expert)
    lora_alpha: int | None = None  # none: PEFT's default 8 (lerobot preset, as LeRobot), the rank (openpi preset)
    lora_dropout: float = 0.0  # dropout on the LoRA branch
    target_modules: str | list[str] | None = None  # layers to adapt: names/suffixes or one regex, matched as PEFT does against pirecon's and LeRobot's names; none: the preset's
    full_training_modules: list[str] | None = None  # modules trained in full next to the adapters (PEFT's modules_to_save); none: the preset's
    init_type: str | None = None  # PEFT's init_lora_weights, e.g. gaussian, pissa, olora; none: PEFT's default (B = 0)

    def __post_init__(self) -> None:
        object.__setattr__(self, "method_type", str(self.method_type).lower())  # LeRobot writes LORA
        if self.method_type != "lora":
            raise ConfigError(f"--peft.method_type={self.method_type!r}: only 'lora' is supported")
        if self.preset not in PEFT_PRESETS:
            raise ConfigError(f"--peft.preset={self.preset!r}: expected one of {list(PEFT_PRESETS)}")
        if self.r is not None and self.r <= 0:
            raise ConfigError(f"--peft.r={self.r}: expected a positive rank")
        if self.lora_alpha is not None and self.lora_alpha <= 0:
            raise ConfigError(f"--peft.lora_alpha={self.lora_alpha}: expected a positive number")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ConfigError(f"--peft.lora_dropout={self.lora_dropout}: expected a value in [0, 1)")
        if isinstance(self.target_modules, str) and self.target_modules.startswith("["):
            # '[q_proj,v_proj]' is a list, as LeRobot's command line reads it.
            object.__setattr__(self, "target_modules", [t.strip().strip("'\"") for t in
                                                        self.target_modules.strip("[]").split(",") if t.strip()])


IMAGE_PREFIX = "observation.images."


def cameras_from_rename_map(rename_map: dict[str, str], camera_map: dict[str, str]) -> dict[str, str]:
    """LeRobot's --rename_map ({dataset key: policy key}) joined into --dataset.camera_map
    ({dataset key: model view}): `observation.images.base_0_rgb` names the view base_0_rgb."""
    merged = dict(camera_map)
    for source, target in rename_map.items():
        if not target.startswith(IMAGE_PREFIX):
            if source == target:
                continue
            raise ConfigError(f"--rename_map: {source!r} -> {target!r}; pirecon renames cameras only "
                              f"({IMAGE_PREFIX}<name>), other keys keep the dataset's names")
        view = target[len(IMAGE_PREFIX):]
        if merged.get(source, view) != view:
            raise ConfigError(f"--rename_map sends {source!r} to {view!r} but --dataset.camera_map sends it to "
                              f"{merged[source]!r}; give one")
        merged[source] = view
    return merged


OPTIMIZER_TYPES = ("adam", "adamw")
# LeRobot's AdamConfig / AdamWConfig differ only in their default weight decay.
DEFAULT_WEIGHT_DECAY = {"adam": 0.0, "adamw": 1e-2}
SCHEDULER_TYPES = ("cosine_decay_with_warmup",)


@dataclass(frozen=True)
class OptimizerConfig:
    """`--optimizer.*` as in LeRobot: used with --use_policy_training_preset=false; otherwise the
    policy's preset (--policy.optimizer_*) decides, as LeRobot's presets do."""

    type: str = "adam"  # adam | adamw (LeRobot's default choice is adam)
    lr: float = 1e-3  # learning rate (LeRobot's default)
    betas: tuple[float, float] = (0.9, 0.999)  # Adam betas
    eps: float = 1e-8  # Adam epsilon
    weight_decay: float | None = None  # none: the type's default (adam 0, adamw 0.01)
    grad_clip_norm: float = 10.0  # clip the global gradient norm to this value (<= 0: no clipping)

    def __post_init__(self) -> None:
        object.__setattr__(self, "type", str(self.type).lower())
        if self.type not in OPTIMIZER_TYPES:
            raise ConfigError(f"--optimizer.type={self.type!r}: pirecon supports {list(OPTIMIZER_TYPES)} "
                              f"(LeRobot also has sgd, multi_adam, xvla-adamw)")
        if self.weight_decay is None:
            object.__setattr__(self, "weight_decay", DEFAULT_WEIGHT_DECAY[self.type])
        if self.lr <= 0 or self.eps <= 0 or self.weight_decay < 0:
            raise ConfigError(f"--optimizer.lr={self.lr}, eps={self.eps}, weight_decay={self.weight_decay}: "
                              f"expected lr > 0, eps > 0, weight_decay >= 0")


@dataclass(frozen=True)
class SchedulerConfig:
    """`--scheduler.*` as in LeRobot's `cosine_decay_with_warmup`: linear warm-up from
    peak_lr / (num_warmup_steps + 1), then a cosine counted from step 0 to decay_lr at
    num_decay_steps. With fewer training --steps than num_decay_steps both are scaled down
    (warm-up by steps / num_decay_steps, decay to steps). Used with --use_policy_training_preset=false;
    otherwise the policy's preset (--policy.scheduler_*) decides."""

    type: str | None = None  # cosine_decay_with_warmup (required with --use_policy_training_preset=false)
    num_warmup_steps: int | None = None  # steps of linear warm-up (required with the type)
    num_decay_steps: int | None = None  # the step at which the cosine reaches decay_lr (required with the type)
    peak_lr: float | None = None  # the learning rate after warm-up (required with the type)
    decay_lr: float | None = None  # the learning rate at the end of the decay (required with the type)

    def __post_init__(self) -> None:
        if self.type is not None and self.type not in SCHEDULER_TYPES:
            raise ConfigError(f"--scheduler.type={self.type!r}: pirecon supports {list(SCHEDULER_TYPES)} (LeRobot "
                              f"also has diffuser, vqbet, constant_with_warmup, cosine_annealing_with_warmup)")
        given = {name: getattr(self, name) for name in SCHEDULER_FIELDS}
        if self.type is not None and None in given.values():
            missing = [f"--scheduler.{name}" for name, value in given.items() if value is None]
            raise ConfigError(f"--scheduler.type={self.type} needs {', '.join(missing)} too (LeRobot's "
                              f"cosine_decay_with_warmup has no defaults)")
        if self.type is not None and (self.num_warmup_steps < 0 or self.num_decay_steps <= 0 or self.peak_lr <= 0
                                      or self.decay_lr < 0):
            raise ConfigError(f"--scheduler.*: expected num_warmup_steps >= 0, num_decay_steps > 0, peak_lr > 0, "
                              f"decay_lr >= 0; got {given}")


SCHEDULER_FIELDS = ("num_warmup_steps", "num_decay_steps", "peak_lr", "decay_lr")


def upgrade_saved(train: dict) -> dict:
    """A TrainConfig dict saved by an earlier pirecon, in today's terms: its LoRA was openpi's
    (PeftConfig.fully_trained, no preset) and ran as `--peft.preset=openpi` does now."""
    peft = train.get("peft")
    if isinstance(peft, dict) and "preset" not in peft and ("fully_trained" in peft or "target_modules" in peft):
        peft = {**peft, "preset": "openpi"}
        if "fully_trained" in peft:
            peft["full_training_modules"] = peft.pop("fully_trained")
        train = {**train, "peft": peft}
    return train


def training_preset(policy: PolicyConfig) -> tuple[OptimizerConfig, SchedulerConfig]:
    """The optimizer and scheduler of the policy's preset (LeRobot's get_optimizer_preset /
    get_scheduler_preset of PI0Config and PI05Config): AdamW and cosine decay with warm-up."""
    return (OptimizerConfig(type="adamw", lr=policy.optimizer_lr, betas=tuple(policy.optimizer_betas),
                            eps=policy.optimizer_eps, weight_decay=policy.optimizer_weight_decay,
                            grad_clip_norm=policy.optimizer_grad_clip_norm),
            SchedulerConfig(type="cosine_decay_with_warmup", num_warmup_steps=policy.scheduler_warmup_steps,
                            num_decay_steps=policy.scheduler_decay_steps, peak_lr=policy.optimizer_lr,
                            decay_lr=policy.scheduler_decay_lr))


def resolve_optimization(cfg: "TrainConfig", typed: frozenset[str] | set[str]) -> tuple[OptimizerConfig, SchedulerConfig]:
    """The optimizer and scheduler a run uses. With --use_policy_training_preset=true (LeRobot's
    default) the policy's preset replaces --optimizer.* and --scheduler.*; LeRobot then drops any
    such flag silently, pirecon refuses a typed one that differs from the preset."""
    if not cfg.use_policy_training_preset:
        if cfg.scheduler.type is None:
            raise ConfigError("--use_policy_training_preset=false needs --scheduler.type=cosine_decay_with_warmup "
                              "with --scheduler.num_warmup_steps, num_decay_steps, peak_lr and decay_lr (as LeRobot)")
        return cfg.optimizer, cfg.scheduler
    optimizer, scheduler = training_preset(cfg.policy)
    for group, preset, given in (("optimizer", optimizer, cfg.optimizer), ("scheduler", scheduler, cfg.scheduler)):
        for f in dataclasses.fields(given):
            name = f"{group}.{f.name}"
            if name in typed and getattr(given, f.name) != getattr(preset, f.name):
                instead = (f"set the preset with --policy.{PRESET_FLAGS[name]}" if name in PRESET_FLAGS
                           else "the preset is AdamW with cosine decay")
                raise ConfigError(
                    f"--{name}={getattr(given, f.name)} has no effect while --use_policy_training_preset=true (LeRobot "
                    f"ignores it silently): {instead}, or pass --use_policy_training_preset=false with --optimizer.* "
                    f"and --scheduler.*")
    return optimizer, scheduler


PRESET_FLAGS = {
    "optimizer.lr": "optimizer_lr", "optimizer.betas": "optimizer_betas", "optimizer.eps": "optimizer_eps",
    "optimizer.weight_decay": "optimizer_weight_decay", "optimizer.grad_clip_norm": "optimizer_grad_clip_norm",
    "scheduler.num_warmup_steps": "scheduler_warmup_steps", "scheduler.num_decay_steps": "scheduler_decay_steps",
    "scheduler.peak_lr": "optimizer_lr", "scheduler.decay_lr": "scheduler_decay_lr",
}


@dataclass(frozen=True)
class WandbConfig:
    """Weights & Biases logging (pip install 'pirecon[wandb]')."""

    enable: bool = False  # log to Weights & Biases (the run is named --job_name)
    project: str = "pirecon"  # W&B project (LeRobot's default: lerobot)
    entity: str | None = None  # W&B entity (team or user)
    notes: str | None = None  # W&B run notes
    run_id: str | None = None  # resume this W&B run (none: a new run; with --resume, the run in output_dir/wandb)
    mode: str | None = None  # online | offline | disabled; none: $WANDB_MODE or online
    disable_artifact: bool = False  # LeRobot: do not upload checkpoints as W&B artifacts (pirecon never uploads them)
    add_tags: bool = True  # tag the W&B run with the policy type and the dataset


ENV_TYPES = ("sim", "libero")
CHECKPOINT_FORMATS = ("safetensors", "dcp", "safetensors_dcp")  # LeRobot's CheckpointFormat values


@dataclass(frozen=True)
class TrainEnvFlags:
    """`--env.*`: the environment of closed-loop evaluation during training (none: no evaluation)."""

    type: str | None = None  # sim | libero (none: no evaluation during training)
    task: str | None = None  # sim: reach | place (none: both); libero: a suite (libero_spatial) or one task (libero_spatial/3)
    options: dict[str, Any] = field(default_factory=dict)  # filled from --env.<name>=value (the environment's settings)

    def __post_init__(self) -> None:
        if self.type is not None and self.type not in ENV_TYPES:
            raise ConfigError(f"--env.type={self.type!r}: expected one of {list(ENV_TYPES)} (pirecon's environments; "
                              f"LeRobot's others have no counterpart here)")


@dataclass(frozen=True)
class TrainEvalFlags:
    """`--eval.*`: closed-loop evaluation during training (LeRobot's EvalConfig)."""

    n_episodes: int = 50  # episodes per evaluation
    batch_size: int = 0  # LeRobot's parallel environments (0: auto); pirecon runs episodes one at a time, same results
    use_async_envs: bool = True  # LeRobot's asynchronous vector environments; pirecon runs episodes one at a time
    seed: int = 100_000  # first episode seed (far from `pirecon sim record`'s: unseen layouts)

    def __post_init__(self) -> None:
        if self.n_episodes <= 0 or self.batch_size < 0 or self.seed < 0:
            raise ConfigError(f"--eval.n_episodes={self.n_episodes}, batch_size={self.batch_size}, seed={self.seed}: "
                              f"expected n_episodes > 0, batch_size >= 0, seed >= 0")


@dataclass(frozen=True)
class TrainConfig:
    """`pirecon train`: everything one training run needs."""

    # openpi's recipe of that name as flags (`pirecon presets` lists them); flags you type override its values
    preset: str | None = None
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    peft: PeftConfig = field(default_factory=PeftConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    use_policy_training_preset: bool = True  # optimizer and scheduler from --policy.optimizer_* / scheduler_* (LeRobot's presets)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    recon: ReconConfig = field(default_factory=ReconConfig)
    env: TrainEnvFlags = field(default_factory=TrainEnvFlags)
    eval: TrainEvalFlags = field(default_factory=TrainEvalFlags)
    env_eval_freq: int = 20_000  # with --env.type: evaluate closed-loop every N steps (0: never); LeRobot's default
    output_dir: str | None = None  # folder for checkpoints, logs and the resolved config (none: outputs/train/<date>/<time>_<job_name>)
    job_name: str | None = None  # the run's name (W&B run name, default folder); none: the policy type
    rename_map: dict[str, str] = field(default_factory=dict)  # LeRobot's {dataset key: policy key}, for cameras (joins --dataset.camera_map)
    steps: int = 100_000  # optimizer steps (LeRobot's default)
    batch_size: int = 8  # samples per process and micro-step
    grad_accum_steps: int = 1  # micro-steps per optimizer step
    num_workers: int = 4  # data loader worker processes
    prefetch_factor: int = 4  # batches each worker prepares ahead (with num_workers > 0)
    persistent_workers: bool = True  # keep the loader's workers between epochs (with num_workers > 0)
    tolerance_s: float | None = None  # how far a video frame may be from its timestamp (none: half a frame; LeRobot's default is 1e-4)
    seed: int = 1000  # seed of weights, data order, noise and time sampling
    cudnn_deterministic: bool = False  # deterministic cuDNN kernels (slower); false lets cuDNN benchmark
    ema_decay: float | None = None  # EMA of the trainable weights, e.g. 0.999 (openpi's Pi0.5 value); none: no EMA
    save_checkpoint: bool = True  # write checkpoints (false: none at all, as LeRobot)
    save_freq: int = 20_000  # write a checkpoint every N steps (and at the end); LeRobot's default
    log_freq: int = 200  # log every N steps: the means over those steps (as LeRobot)
    keep_last_checkpoints: int = 3  # keep the newest N checkpoints
    checkpoint_format: str = "safetensors"  # under FSDP (LeRobot's flag): safetensors (weights and optimizer gathered on the main process: a single-process checkpoint) | dcp (each process writes its shards, torch.distributed.checkpoint) | safetensors_dcp (both weight forms, optimizer sharded)
    resume: bool = False  # continue the run in output_dir from its last checkpoint
    tensorboard: bool = False  # also write TensorBoard event files
    progress_bar: bool = True  # show a tqdm progress bar

    def __post_init__(self) -> None:
        if self.preset is not None:
            get_preset(self.preset)
        for name in ("steps", "batch_size", "grad_accum_steps", "save_freq", "log_freq", "keep_last_checkpoints",
                     "prefetch_factor"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"--{name}={getattr(self, name)}: expected a positive integer")
        if self.num_workers < 0:
            raise ConfigError(f"--num_workers={self.num_workers}: expected >= 0")
        if self.env_eval_freq < 0:
            raise ConfigError(f"--env_eval_freq={self.env_eval_freq}: expected >= 0 (0: no evaluation)")
        if self.tolerance_s is not None and self.tolerance_s <= 0:
            raise ConfigError(f"--tolerance_s={self.tolerance_s}: expected a positive number of seconds")
        if self.rename_map:
            object.__setattr__(self, "dataset", dataclasses.replace(
                self.dataset, camera_map=cameras_from_rename_map(self.rename_map, self.dataset.camera_map)))
        if self.checkpoint_format not in CHECKPOINT_FORMATS:
            raise ConfigError(f"--checkpoint_format={self.checkpoint_format!r}: expected one of "
                              f"{list(CHECKPOINT_FORMATS)}")
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            raise ConfigError(f"--ema_decay={self.ema_decay}: expected a value in (0, 1)")
