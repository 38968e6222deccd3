"""`pirecon train` configuration: `--peft.*`, `--optimizer.*`, `--scheduler.*`, `--wandb.*` and the
run itself, around `--policy.*` (configs.policy), `--dataset.*` (configs.data) and `--recon.*`
(configs.recon). Names follow LeRobot's `TrainPipelineConfig`."""

from __future__ import annotations

from dataclasses import dataclass, field

from pirecon.configs.data import DatasetConfig
from pirecon.configs.policy import PolicyConfig
from pirecon.configs.recon import ReconConfig
from pirecon.errors import ConfigError

# openpi's LoRA configs adapt attention and MLP of both Gemma stacks.
DEFAULT_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# Always fully trainable under LoRA: the projections around the action expert and the time MLPs.
DEFAULT_FULLY_TRAINED = ("action_in_proj", "action_out_proj", "state_proj", "action_time_mlp_in",
                         "action_time_mlp_out", "time_mlp_in", "time_mlp_out")


@dataclass(frozen=True)
class PeftConfig:
    """LoRA adapters through PEFT (used only with --policy.use_peft=true)."""

    method_type: str = "lora"  # the PEFT method: lora
    r: int = 16  # LoRA rank
    lora_alpha: int | None = None  # LoRA alpha; none: equal to r (openpi uses alpha = rank)
    lora_dropout: float = 0.0  # dropout on the LoRA branch
    target_modules: list[str] | None = None  # Gemma layer modules to adapt (none: q,k,v,o,gate,up,down of both stacks)
    fully_trained: list[str] | None = None  # top-level modules trained in full next to the adapters (none: the expert's projections and time MLPs)

    def __post_init__(self) -> None:
        if self.method_type != "lora":
            raise ConfigError(f"--peft.method_type={self.method_type!r}: only 'lora' is supported")
        if self.r <= 0:
            raise ConfigError(f"--peft.r={self.r}: expected a positive rank")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ConfigError(f"--peft.lora_dropout={self.lora_dropout}: expected a value in [0, 1)")
        unknown = set(self.target_modules or ()) - set(DEFAULT_LORA_TARGETS)
        if unknown:
            raise ConfigError(f"--peft.target_modules: unknown {sorted(unknown)}; expected names among "
                              f"{list(DEFAULT_LORA_TARGETS)}")

    @property
    def targets(self) -> tuple[str, ...]:
        return tuple(self.target_modules or DEFAULT_LORA_TARGETS)

    @property
    def alpha(self) -> int:
        return self.lora_alpha if self.lora_alpha is not None else self.r


@dataclass(frozen=True)
class OptimizerConfig:
    """AdamW; defaults are LeRobot's Pi0 ones."""

    lr: float = 2.5e-5  # peak learning rate
    betas: tuple[float, float] = (0.9, 0.95)  # AdamW betas
    eps: float = 1e-8  # AdamW epsilon
    weight_decay: float = 1e-10  # AdamW weight decay
    grad_clip_norm: float = 10.0  # clip the global gradient norm to this value


@dataclass(frozen=True)
class SchedulerConfig:
    """Linear warm-up, then cosine decay from lr to decay_lr over decay_steps (LeRobot's Pi0 defaults)."""

    warmup_steps: int = 1000  # optimizer steps of linear warm-up
    decay_steps: int = 30000  # the step at which the cosine decay reaches decay_lr
    decay_lr: float = 2.5e-6  # learning rate at the end of the decay


@dataclass(frozen=True)
class WandbConfig:
    """Weights & Biases logging (pip install 'pirecon[wandb]')."""

    enable: bool = False  # log to Weights & Biases
    project: str = "pirecon"  # W&B project
    entity: str | None = None  # W&B entity (team or user)
    mode: str | None = None  # online | offline | disabled; none: $WANDB_MODE or online
    run_name: str | None = None  # W&B run name (none: W&B's choice)


@dataclass(frozen=True)
class TrainConfig:
    """`pirecon train`: everything one training run needs."""

    policy: PolicyConfig = field(default_factory=PolicyConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    peft: PeftConfig = field(default_factory=PeftConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    recon: ReconConfig = field(default_factory=ReconConfig)
    output_dir: str | None = None  # folder for checkpoints, logs and the resolved config
    steps: int = 30000  # optimizer steps
    batch_size: int = 8  # samples per process and micro-step
    grad_accum_steps: int = 1  # micro-steps per optimizer step
    num_workers: int = 2  # data loader worker processes
    seed: int = 1000  # seed of weights, data order, noise and time sampling
    ema_decay: float | None = None  # EMA of the trainable weights, e.g. 0.999 (openpi's Pi0.5 value); none: no EMA
    save_freq: int = 1000  # write a checkpoint every N steps (and at the end)
    log_freq: int = 100  # log every N steps
    keep_last_checkpoints: int = 3  # keep the newest N checkpoints
    resume: bool = False  # continue the run in output_dir from its last checkpoint
    tensorboard: bool = False  # also write TensorBoard event files
    progress_bar: bool = True  # show a tqdm progress bar

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "grad_accum_steps", "save_freq", "log_freq", "keep_last_checkpoints"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"--{name}={getattr(self, name)}: expected a positive integer")
        if self.num_workers < 0:
            raise ConfigError(f"--num_workers={self.num_workers}: expected >= 0")
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            raise ConfigError(f"--ema_decay={self.ema_decay}: expected a value in (0, 1)")
