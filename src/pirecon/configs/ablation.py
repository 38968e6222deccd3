"""Settings of the reconstruction-loss ablation (`benchmarks/recon_ablation.py`, `pirecon.recon_ablation`)."""

from __future__ import annotations

from dataclasses import dataclass

from pirecon.errors import ConfigError

# arm name -> (what it is, recon region, recon target); "none" trains without the head.
ARMS = {
    "none": ("lambda = 0: no reconstruction head", None, None),
    "full": ("whole top image reconstructed (pixels)", "full", "pixels"),
    "gaze": ("gaze region (the named block's box) reconstructed (pixels)", "gaze", "pixels"),
    "gaze_vae": ("gaze region reconstructed as VAE latents (needs --vae_path)", "gaze", "vae"),
}


@dataclass(frozen=True)
class AblationConfig:
    """Train the same tiny policy under the same budget and seeds with and without the
    reconstruction loss, evaluate every arm on the same unseen layouts, print the comparison."""

    output_dir: str = "outputs/recon_ablation"  # the sweep's folder: data, runs, table, plot (a rerun resumes)
    arms: tuple[str, ...] = ("none", "full", "gaze")  # none | full | gaze | gaze_vae; the first is the baseline
    seeds: tuple[int, ...] = (0, 1, 2)  # training seeds, the same for every arm
    recon_weight: float = 0.5  # lambda of the reconstruction arms
    steps: int = 1500  # training steps of every run
    eval_points: int = 3  # evaluations per run, at evenly spaced checkpoints (the last at --steps)
    eval_episodes: int = 100  # closed-loop episodes per evaluation, the same unseen layouts for all
    episodes: int = 100  # expert demonstrations recorded once for the whole sweep
    num_blocks: int = 3  # blocks on the table: 2-3 make the prompt's colour pick the block (grounding)
    image_size: int = 64  # simulator camera resolution
    batch_size: int = 64  # training batch
    lora_r: int = 64  # LoRA rank (the demo's)
    vae_path: str | None = None  # local diffusers AutoencoderKL folder (arm gaze_vae)
    viz_frames: int = 4  # rows of the recon-viz grid written at every evaluated checkpoint (0: none)

    def __post_init__(self) -> None:
        object.__setattr__(self, "arms", tuple(self.arms))
        object.__setattr__(self, "seeds", tuple(int(s) for s in self.seeds))
        unknown = [a for a in self.arms if a not in ARMS]
        if unknown or not self.arms or len(set(self.arms)) != len(self.arms):
            raise ConfigError(f"--arms={list(self.arms)}: expected distinct names from {list(ARMS)}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"--seeds={list(self.seeds)}: expected at least one seed, each once")
        if "gaze_vae" in self.arms and not self.vae_path:
            raise ConfigError("--arms includes gaze_vae: expected --vae_path=FOLDER (a local diffusers AutoencoderKL)")
        for name in ("steps", "eval_points", "eval_episodes", "episodes", "batch_size", "lora_r"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"--{name}={getattr(self, name)}: expected a positive integer")
        if self.eval_points > self.steps:
            raise ConfigError(f"--eval_points={self.eval_points}: expected at most --steps={self.steps}")
        if not self.recon_weight > 0:
            raise ConfigError(f"--recon_weight={self.recon_weight}: expected a number > 0 (arm none is lambda = 0)")
        if self.viz_frames < 0:
            raise ConfigError(f"--viz_frames={self.viz_frames}: expected an integer >= 0")
