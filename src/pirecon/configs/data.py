"""`--dataset.*`: which LeRobot dataset, which part of it, and how its columns map onto the model."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pirecon.errors import ConfigError

VIDEO_BACKENDS = ("pyav", "torchcodec")
AUGMENTATION_RECIPES = ("lerobot", "openpi")
# LeRobot's image transform types pirecon implements, with the keyword arguments each takes.
TRANSFORM_KWARGS = {"ColorJitter": ("brightness", "contrast", "saturation", "hue"),
                    "SharpnessJitter": ("sharpness",), "RandomAffine": ("degrees", "translate", "scale")}


@dataclass(frozen=True)
class ImageTransformConfig:
    """One of LeRobot's image transforms: a type, its keyword arguments and its sampling weight."""

    weight: float = 1.0  # chance of being one of the transforms drawn for an image (relative)
    type: str = "Identity"  # ColorJitter | SharpnessJitter | RandomAffine | Identity
    kwargs: dict[str, Any] = field(default_factory=dict)  # e.g. {"brightness": [0.8, 1.2]}

    def __post_init__(self) -> None:
        if self.type != "Identity" and self.type not in TRANSFORM_KWARGS:
            raise ConfigError(f"--dataset.image_transforms.tfs: type {self.type!r} is not implemented in pirecon; "
                              f"expected one of {['Identity', *TRANSFORM_KWARGS]} (LeRobot's defaults use these)")
        unknown = set(self.kwargs) - set(TRANSFORM_KWARGS.get(self.type, ()))
        if unknown:
            raise ConfigError(f"--dataset.image_transforms.tfs: {self.type} takes {list(TRANSFORM_KWARGS.get(self.type, ()))}, "
                              f"not {sorted(unknown)}")
        if self.weight < 0:
            raise ConfigError(f"--dataset.image_transforms.tfs: weight {self.weight}; expected >= 0")


def _lerobot_default_transforms() -> dict[str, ImageTransformConfig]:
    """LeRobot's default `tfs` (ImageTransformsConfig)."""
    return {
        "brightness": ImageTransformConfig(1.0, "ColorJitter", {"brightness": [0.8, 1.2]}),
        "contrast": ImageTransformConfig(1.0, "ColorJitter", {"contrast": [0.8, 1.2]}),
        "saturation": ImageTransformConfig(1.0, "ColorJitter", {"saturation": [0.5, 1.5]}),
        "hue": ImageTransformConfig(1.0, "ColorJitter", {"hue": [-0.05, 0.05]}),
        "sharpness": ImageTransformConfig(1.0, "SharpnessJitter", {"sharpness": [0.5, 1.5]}),
        "affine": ImageTransformConfig(1.0, "RandomAffine", {"degrees": [-5.0, 5.0], "translate": [0.05, 0.05]}),
    }


@dataclass(frozen=True)
class ImageTransformsConfig:
    """`--dataset.image_transforms.*`: LeRobot's training-time image augmentation (names, defaults
    and sampling as LeRobot's ImageTransformsConfig): per camera image, `max_num_transforms` of
    the weighted `tfs` are drawn without replacement and applied in their listed order (or a
    random one). Training only; never at evaluation or serving."""

    enable: bool = False  # augment training images
    recipe: str = "lerobot"  # lerobot: the tfs below, as LeRobot | openpi: openpi's crop 95 % + rotate 5 deg (not wrist cameras) and colour jitter
    max_num_transforms: int = 3  # transforms drawn per image (at most the number with weight > 0)
    random_order: bool = False  # apply the drawn transforms in random order (false: as listed)
    tfs: dict[str, ImageTransformConfig] = field(default_factory=_lerobot_default_transforms)  # name -> transform (JSON)

    def __post_init__(self) -> None:
        if self.recipe not in AUGMENTATION_RECIPES:
            raise ConfigError(f"--dataset.image_transforms.recipe={self.recipe!r}: expected one of {list(AUGMENTATION_RECIPES)}")
        if self.max_num_transforms < 1:
            raise ConfigError(f"--dataset.image_transforms.max_num_transforms={self.max_num_transforms}: expected >= 1")
        if self.enable and not any(t.weight > 0 for t in self.tfs.values()):
            raise ConfigError("--dataset.image_transforms.enable=true but no transform in tfs has a weight > 0")


@dataclass(frozen=True)
class DatasetConfig:
    """Where the dataset is and which part of it to use (`--dataset.*` flags)."""

    root: str | None = None  # local dataset folder (LeRobot v2.0-v3.0 layout)
    repo_id: str | None = None  # without root: $HF_LEROBOT_HOME/<repo_id>, else a Hub dataset id in the local HF cache
    revision: str | None = None  # with a Hub repo_id: the branch, tag or commit of the cached snapshot (none: main)
    episodes: list[int] | None = None  # episode indices to use (none: all)
    camera_map: dict[str, str] = field(default_factory=dict)  # dataset camera key -> model camera view (JSON)
    action_dims: list[int] | None = None  # keep only these action dimensions (none: all)
    state_dims: list[int] | None = None  # keep only these state dimensions (none: all)
    video_backend: str = "pyav"  # pyav | torchcodec (LeRobot's default; pip install 'pirecon[torchcodec]' and FFmpeg's libraries): both decode the same frames
    image_transforms: ImageTransformsConfig = field(default_factory=ImageTransformsConfig)
    use_imagenet_stats: bool = True  # LeRobot's: ImageNet statistics for images; Pi0 / Pi0.5 never normalise images with statistics, so no effect (as in LeRobot)
    cache_in_memory: bool = False  # keep decoded, preprocessed samples in RAM after the first read (small datasets)
    val_episodes: int = 0  # last N of the selected episodes held out for offline evaluation

    def __post_init__(self) -> None:
        if self.revision is not None and self.repo_id is not None and "@" in self.repo_id:
            raise ConfigError(f"--dataset.revision={self.revision} and --dataset.repo_id={self.repo_id} both name a "
                              f"revision; give one")
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
