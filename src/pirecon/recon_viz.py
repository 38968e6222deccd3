"""`pirecon recon-viz --policy.path=CKPT --dataset.root=DIR --output=grid.png [--frames=4]`:
run the reconstruction head's reverse diffusion on a few dataset frames and write a PNG grid
input | target | reconstruction (one row per frame), to see what the backbone's image tokens encode.
"""

from __future__ import annotations

from pathlib import Path

import torch

from pirecon.checkpoint.load import load
from pirecon.configs.parse import format_help, parse_flags
from pirecon.configs.recon import ReconVizConfig
from pirecon.data.lerobot import open_dataset
from pirecon.errors import ConfigError
from pirecon.inference import preprocessor_from
from pirecon.model.placement import place, resolve_device
from pirecon.model.recon_targets import reconstruction_grid


def recon_viz(cfg: ReconVizConfig) -> Path:
    if not cfg.policy.path or not cfg.dataset.root:
        raise ConfigError("--policy.path and --dataset.root: expected a checkpoint folder and a dataset folder")
    device = resolve_device(cfg.policy.device)
    folder = Path(cfg.policy.path)
    loaded = load(folder, use_ema=cfg.use_ema)
    policy = loaded.policy.eval()
    if policy.recon_head is None:
        raise ConfigError(f"--policy.path={folder}: this checkpoint has no reconstruction head (train with "
                          f"--recon.enable=true)")
    place(policy, device, policy.config.torch_dtype)
    dataset = open_dataset(cfg.dataset.root, policy.config.chunk_size, episodes=cfg.dataset.episodes, split="all")
    pre = preprocessor_from(loaded)
    picks = torch.linspace(0, len(dataset) - 1, max(1, cfg.frames)).round().long().unique().tolist()
    batch = pre.collate([pre(dataset[i]) for i in picks]).to(device)
    with torch.no_grad():
        prefix = policy.embed_prefix(batch)
        out = policy.compute_loss(batch)
    generator = torch.Generator().manual_seed(cfg.seed)
    result = policy.recon_head.reconstruct(out["prefix_out"].float(), prefix.num_image_tokens, batch,
                                           steps=cfg.steps, generator=generator)
    return reconstruction_grid(result, Path(cfg.output))


def run(argv: list[str]) -> int:
    if "--help" in argv or "-h" in argv:
        print(format_help("recon-viz", __doc__, ReconVizConfig), end="")
        return 0
    path = recon_viz(parse_flags(argv, ReconVizConfig))
    print(f"pirecon recon-viz: wrote {path}")
    return 0
