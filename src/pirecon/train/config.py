"""`pirecon train` flags (LeRobot style: --policy.type=pi05 --peft.r=16 --steps=... --batch_size=...)."""

from __future__ import annotations

from dataclasses import dataclass, field

from pirecon.config import PolicyConfig
from pirecon.data.lerobot import DatasetConfig
from pirecon.errors import ConfigError
from pirecon.model.recon import ReconConfig

# openpi's LoRA configs adapt attention and MLP of both Gemma stacks.
DEFAULT_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# Always fully trainable under LoRA: the projections around the action expert and the time MLPs.
DEFAULT_FULLY_TRAINED = ("action_in_proj", "action_out_proj", "state_proj", "action_time_mlp_in",
                         "action_time_mlp_out", "time_mlp_in", "time_mlp_out")


@dataclass(frozen=True)
class PeftConfig:
    method_type: str = "lora"
    r: int = 16
    lora_alpha: int | None = None  # None: equal to r (openpi uses alpha = rank)
    lora_dropout: float = 0.0
    # Module names inside the Gemma VLM and action expert layers (SigLIP is never adapted).
    target_modules: list[str] | None = None
    # Top-level modules trained in full next to the adapters.
    fully_trained: list[str] | None = None

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
    lr: float = 2.5e-5
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 1e-10
    grad_clip_norm: float = 10.0


@dataclass(frozen=True)
class SchedulerConfig:
    """Linear warm-up, then cosine decay from lr to decay_lr over decay_steps (LeRobot's Pi0 defaults)."""
    warmup_steps: int = 1000
    decay_steps: int = 30000
    decay_lr: float = 2.5e-6


@dataclass(frozen=True)
class WandbConfig:
    enable: bool = False
    project: str = "pirecon"
    entity: str | None = None
    mode: str | None = None  # online | offline | disabled; None: $WANDB_MODE or online
    run_name: str | None = None


@dataclass(frozen=True)
class TrainConfig:
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    peft: PeftConfig = field(default_factory=PeftConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    recon: ReconConfig = field(default_factory=ReconConfig)
    output_dir: str | None = None
    steps: int = 30000
    batch_size: int = 8  # per process
    grad_accum_steps: int = 1
    num_workers: int = 2
    seed: int = 1000
    ema_decay: float | None = None  # e.g. 0.999 (openpi's Pi0.5 value); None: no EMA
    save_freq: int = 1000
    log_freq: int = 100
    keep_last_checkpoints: int = 3
    resume: bool = False
    tensorboard: bool = False
    progress_bar: bool = True

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "grad_accum_steps", "save_freq", "log_freq", "keep_last_checkpoints"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"--{name}={getattr(self, name)}: expected a positive integer")
        if self.num_workers < 0:
            raise ConfigError(f"--num_workers={self.num_workers}: expected >= 0")
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            raise ConfigError(f"--ema_decay={self.ema_decay}: expected a value in (0, 1)")
