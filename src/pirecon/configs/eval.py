"""`pirecon eval` (closed loop in a simulator) and `pirecon eval-offline` (action error on a dataset)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class EvalPolicyFlags:
    path: str | None = None  # a checkpoint folder (or a training output folder: its checkpoints/last)
    n_action_steps: int | None = None  # None: the checkpoint's policy.n_action_steps
    num_inference_steps: int | None = None  # flow-matching integration steps; None: the checkpoint's num_inference_steps
    device: str = "auto"  # auto | cpu | cuda | cuda:N (auto: cuda when available, else cpu)
    tokenizer_path: str | None = None  # None: the copy inside the checkpoint
    rtc: bool = False  # real-time chunking: guide each chunk toward the previous one's remaining actions (with --eval.latency_steps)
    rtc_mode: str = "guided"  # how --policy.rtc=true conditions each chunk: guided (guidance, any checkpoint) | trained (the first d actions given clean; a checkpoint trained with --policy.rtc_training_max_delay >= d)
    rtc_max_guidance_weight: float = 10.0  # the guidance clip beta of guided real-time chunking (LeRobot's default)


@dataclass(frozen=True)
class EnvFlags:
    type: str = "sim"  # sim | libero
    task: str | None = None  # sim: reach | place (none: both); libero: a suite (libero_spatial) or one task (libero_spatial/3)
    options: dict[str, Any] = field(default_factory=dict)  # filled from --env.<name>=value


@dataclass(frozen=True)
class EvalLoopFlags:
    n_episodes: int = 50  # episodes to roll out
    seed: int = 100_000  # far from `pirecon sim record`'s seeds (0, 1, ...): sim layouts are unseen
    video: bool = True  # write mp4 videos of the first max_videos episodes
    max_videos: int | None = 10  # None: a video of every episode
    baselines: bool = False  # sim: also evaluate the scripted expert and a random policy
    progress_bar: bool = True  # show a tqdm progress bar
    latency_steps: int = 0  # inference takes this many control steps; the robot runs the old chunk meanwhile
    latency_mode: str = "async"  # async: the robot runs on while a chunk is computed | sync: it waits (sim only)


@dataclass(frozen=True)
class EvalConfig:
    policy: EvalPolicyFlags = field(default_factory=EvalPolicyFlags)
    env: EnvFlags = field(default_factory=EnvFlags)
    eval: EvalLoopFlags = field(default_factory=EvalLoopFlags)
    use_ema: bool = False  # evaluate the EMA weights (the checkpoint must hold ema.safetensors)
    output_dir: str | None = None  # None: outputs/eval/<date>-<time>
    overwrite: bool = False  # replace a previous evaluation's files in output_dir


@dataclass(frozen=True)
class OfflinePolicyFlags:
    path: str | None = None  # a checkpoint folder (or a training output folder: its checkpoints/last)
    num_inference_steps: int | None = None  # None: the checkpoint's num_inference_steps
    device: str = "auto"  # auto | cpu | cuda | cuda:N (auto: cuda when available, else cpu)
    tokenizer_path: str | None = None  # None: the copy inside the checkpoint


@dataclass(frozen=True)
class OfflineDatasetFlags:
    root: str | None = None  # None: the dataset the checkpoint was trained on
    repo_id: str | None = None  # without root: a dataset in $HF_LEROBOT_HOME or the local HF cache
    episodes: list[int] | None = None  # None: all (or, with the training dataset, the training selection)
    split: str = "all"  # all | train | val (the training run's --dataset.val_episodes split)
    val_episodes: int | None = None  # None: the checkpoint's training value


@dataclass(frozen=True)
class OfflineConfig:
    policy: OfflinePolicyFlags = field(default_factory=OfflinePolicyFlags)
    dataset: OfflineDatasetFlags = field(default_factory=OfflineDatasetFlags)
    use_ema: bool = False  # evaluate the EMA weights
    batch_size: int = 8  # samples per forward pass
    max_samples: int | None = None  # evaluate at most this many frames (none: all)
    num_workers: int = 0  # data loader worker processes
    seed: int = 0  # seed of the sampling noise (per frame: seed + frame index)
    output: str | None = None  # JSON file to write
    progress_bar: bool = True  # show a tqdm progress bar
