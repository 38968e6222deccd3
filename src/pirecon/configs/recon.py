"""`--recon.*`: the auxiliary ReconVLA-style reconstruction loss (the head: `pirecon.model.recon`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from pirecon.errors import ConfigError

DDPM_STEPS = 1000  # ReconVLA's DDPM: 1000 steps, cosine schedule
COSINE_S = 0.008  # offset of the improved-DDPM cosine schedule
MAX_BETA = 0.999
LARGE_VLM_WIDTH = 1024  # VLMs at least this wide get the ReconVLA head width by default
LARGE_HIDDEN, SMALL_HIDDEN = 1024, 64
HEAD_DIM = 64  # default num_heads = hidden_dim // HEAD_DIM


@dataclass(frozen=True)
class ReconConfig:
    """`--recon.*`: the auxiliary reconstruction loss (off unless `--recon.enable`)."""

    enable: bool = False  # add the reconstruction head and its loss
    weight: float = 1.0  # lambda in loss = action_loss + lambda * recon_loss
    warmup_steps: int = 0  # lambda ramps linearly from 0 over these optimizer steps
    hidden_dim: int | None = None  # None: 1024 when the VLM width >= 1024, else 64 (tiny)
    depth: int = 3  # DiT blocks of the head
    num_heads: int | None = None  # None: max(1, hidden_dim // 64)
    mlp_ratio: float = 4.0  # DiT MLP width as a multiple of hidden_dim
    views: tuple[str, ...] = ("base_0_rgb",)  # model views to reconstruct, each from its own tokens
    target: str = "pixels"  # "pixels" | "vae"
    vae_path: str | None = None  # local diffusers AutoencoderKL folder (target=vae)
    pixel_patch: int = 2  # pixels target: view resized to (grid*pixel_patch)^2, folded into grid x grid tokens
    region: str = "full"  # "full" | "gaze"
    gaze_key: str = "observation.gaze_bbox"  # dataset key of the gaze box [x0, y0, x1, y1] in [0, 1] (region=gaze)
    diffusion: str = "ddpm"  # "ddpm" (eps, cosine, 1000 steps, as ReconVLA) | "flow" (rectified flow)
    noise_repeats: int = 1  # ReconVLA uses 4: each sample repeated with independent noise
    text_condition: str = "pooled"  # "pooled" | "none"
    sample_steps: int = 50  # reverse steps for visualisation

    def __post_init__(self) -> None:
        object.__setattr__(self, "views", tuple(self.views))
        choices = {"target": ("pixels", "vae"), "region": ("full", "gaze"), "diffusion": ("ddpm", "flow"),
                   "text_condition": ("pooled", "none")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"--recon.{name}={getattr(self, name)!r}: expected one of "
                                  f"{', '.join(repr(a) for a in allowed)}")
        if not self.weight >= 0:
            raise ConfigError(f"--recon.weight={self.weight}: expected a number >= 0")
        if self.mlp_ratio <= 0:
            raise ConfigError(f"--recon.mlp_ratio={self.mlp_ratio}: expected a positive number")
        for name in ("depth", "pixel_patch", "noise_repeats", "sample_steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--recon.{name}={getattr(self, name)}: expected a positive integer")
        if self.warmup_steps < 0:
            raise ConfigError(f"--recon.warmup_steps={self.warmup_steps}: expected an integer >= 0")
        if self.hidden_dim is not None and (self.hidden_dim <= 0 or self.hidden_dim % 4):
            raise ConfigError(f"--recon.hidden_dim={self.hidden_dim}: expected a positive multiple of 4 "
                              f"(2-D sin-cos positions), or none for the default")
        if self.num_heads is not None:
            if self.num_heads < 1:
                raise ConfigError(f"--recon.num_heads={self.num_heads}: expected a positive integer or none")
            if self.hidden_dim is not None and self.hidden_dim % self.num_heads:
                raise ConfigError(f"--recon.num_heads={self.num_heads}: must divide --recon.hidden_dim="
                                  f"{self.hidden_dim}")
        if self.diffusion == "ddpm" and self.sample_steps > DDPM_STEPS:
            raise ConfigError(f"--recon.sample_steps={self.sample_steps}: expected <= {DDPM_STEPS} for ddpm")
        if not self.views:
            raise ConfigError("--recon.views: expected at least one view name")
        if len(set(self.views)) != len(self.views):
            raise ConfigError(f"--recon.views={list(self.views)}: a view is listed twice")
        if not self.gaze_key:
            raise ConfigError("--recon.gaze_key: expected a batch extras key such as observation.gaze_bbox")
        if self.enable and self.target == "vae" and not self.vae_path:
            raise ConfigError("--recon.target=vae needs --recon.vae_path=FOLDER (a local diffusers AutoencoderKL)")

    def loss_weight(self, step: int) -> float:
        """lambda at optimizer step `step` (0-based): linear ramp from 0 over `warmup_steps`."""
        if self.warmup_steps <= 0:
            return self.weight
        return self.weight * min(1.0, step / self.warmup_steps)

    def resolved_hidden_dim(self, vlm_width: int) -> int:
        if self.hidden_dim is not None:
            return self.hidden_dim
        return LARGE_HIDDEN if vlm_width >= LARGE_VLM_WIDTH else SMALL_HIDDEN

    def resolved_num_heads(self, hidden: int) -> int:
        if self.num_heads is not None:
            if hidden % self.num_heads:
                raise ConfigError(f"--recon.num_heads={self.num_heads}: must divide the head width {hidden}")
            return self.num_heads
        heads = max(1, hidden // HEAD_DIM)
        while hidden % heads:
            heads -= 1
        return heads


# Fields that decide the head's weights: a pretrained folder's head cannot take other values.
HEAD_SHAPE_FIELDS = ("hidden_dim", "depth", "num_heads", "mlp_ratio", "views", "target", "vae_path", "pixel_patch",
                     "text_condition")


def merge_recon_with_folder(cfg: ReconConfig, folder_cfg: ReconConfig | None, typed: set[str] | frozenset[str],
                            folder: str) -> ReconConfig | None:
    """The reconstruction config of a run on `folder`'s weights (`typed`: "recon.x" names).

    A folder without a head: `cfg` as it is. A folder with one: its config, with the typed fields
    over it; `--recon.enable=false` drops the head (None); a typed field that shapes the head's
    weights and differs is a ConfigError naming the flag, the folder and both values."""
    if folder_cfg is None:
        return cfg
    mine = {name[len("recon."):] for name in typed if name.startswith("recon.")}
    if "enable" in mine and not cfg.enable:
        return None
    changes = {}
    for name in sorted(mine - {"enable"}):
        wanted, held = getattr(cfg, name), getattr(folder_cfg, name)
        if wanted == held:
            continue
        if name in HEAD_SHAPE_FIELDS:
            shown = list(wanted) if isinstance(wanted, tuple) else wanted
            raise ConfigError(f"--recon.{name}={shown} but the reconstruction head in {folder} was built with "
                              f"{name}={list(held) if isinstance(held, tuple) else held}; pass --recon.enable=false "
                              f"to drop that head, or drop the flag")
        changes[name] = wanted
    return dataclasses.replace(folder_cfg, enable=True, **changes)


@dataclass(frozen=True)
class VizPolicyFlags:
    path: str | None = None  # a checkpoint folder with a reconstruction head
    device: str = "auto"  # auto | cpu | cuda | cuda:N (auto: cuda when available, else cpu)


@dataclass(frozen=True)
class VizDatasetFlags:
    root: str | None = None  # dataset folder (none: the one the checkpoint was trained on)
    episodes: list[int] | None = None  # episodes to draw frames from (none: all)


@dataclass(frozen=True)
class ReconVizConfig:
    policy: VizPolicyFlags = field(default_factory=VizPolicyFlags)
    dataset: VizDatasetFlags = field(default_factory=VizDatasetFlags)
    output: str = "recon_grid.png"  # PNG file to write
    frames: int = 4  # rows of the grid (frames spread over the dataset)
    steps: int | None = None  # reverse-diffusion steps (default: --recon.sample_steps of the checkpoint)
    use_ema: bool = False  # use the EMA weights
    seed: int = 0  # seed of the reverse-diffusion noise
