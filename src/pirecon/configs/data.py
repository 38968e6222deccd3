"""`--dataset.*`: which LeRobot dataset, which part of it, and how its columns map onto the model."""

from __future__ import annotations

from dataclasses import dataclass, field

from pirecon.errors import ConfigError

VIDEO_BACKENDS = ("pyav", "torchcodec")


@dataclass(frozen=True)
class DatasetConfig:
    """Where the dataset is and which part of it to use (`--dataset.*` flags)."""

    root: str | None = None  # local dataset folder (LeRobot v2.0-v3.0 layout)
    repo_id: str | None = None  # without root: $HF_LEROBOT_HOME/<repo_id>, else a Hub dataset id in the local HF cache
    episodes: list[int] | None = None  # episode indices to use (none: all)
    camera_map: dict[str, str] = field(default_factory=dict)  # dataset camera key -> model camera view (JSON)
    action_dims: list[int] | None = None  # keep only these action dimensions (none: all)
    state_dims: list[int] | None = None  # keep only these state dimensions (none: all)
    video_backend: str = "pyav"  # pyav | torchcodec (LeRobot's default): both decode the same frames; pirecon decodes with PyAV (the start-up summary says so for torchcodec)
    use_imagenet_stats: bool = True  # LeRobot's: ImageNet statistics for images; Pi0 / Pi0.5 never normalise images with statistics, so no effect (as in LeRobot)
    cache_in_memory: bool = False  # keep decoded, preprocessed samples in RAM after the first read (small datasets)
    val_episodes: int = 0  # last N of the selected episodes held out for offline evaluation

    def __post_init__(self) -> None:
        if self.video_backend not in VIDEO_BACKENDS:
            raise ConfigError(f"--dataset.video_backend={self.video_backend!r}: expected one of {list(VIDEO_BACKENDS)}")
        if self.val_episodes < 0:
            raise ConfigError(f"--dataset.val_episodes={self.val_episodes}: expected >= 0")


@dataclass(frozen=True)
class StatsConfig:
    """`pirecon stats`: normalisation statistics of a LeRobot dataset (openpi norm_stats.json)."""

    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    output: str | None = None  # write the JSON here instead of printing it


@dataclass(frozen=True)
class DoctorConfig:
    """pirecon doctor: check a LeRobot dataset folder and print a table of findings."""

    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    min_length: int = 2  # episodes with fewer frames are reported as short
    strict: bool = False  # exit 1 on warnings too


@dataclass(frozen=True)
class TokenizerConfig:
    """`pirecon tokenizer`: a tiny tokenizer from a dataset's task texts."""

    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    output: str | None = None  # the SentencePiece .model file to write, e.g. tokenizer.model (required)
    vocab_size: int | None = None  # upper bound on the vocabulary (none: 256, or what the texts need when more)
