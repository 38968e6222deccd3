"""What the reconstruction head denoises: the view (or its gaze crop) as tokens on the image grid.

A target turns image crops (N, 3, S, S) in [-1, 1] into (N, grid*grid, C) tokens, one per
image-token position of the VLM (patch size 1 over the token grid), and back:

- `PixelTarget`: the crop at S = grid * pixel_patch, each pixel_patch x pixel_patch block folded
  into one token of 3 * pixel_patch**2 channels;
- `VaeTarget`: latents of a frozen `diffusers` AutoencoderKL. The crop is encoded at
  S = grid * k * f (f = the VAE's down-sampling factor, k = round(vision patch size / f), at
  least 1) so that the latents are (grid*k) x (grid*k) and fold k x k into the grid, as
  ReconVLA folds 54x54 FLUX latents 2x2 into 27x27 tokens of 64 channels.

`crop_and_resize` is the batched, roi-align-style crop used for `--recon.region=gaze` (and, with
the box [0, 0, 1, 1], for the full view); `reconstruction_grid` draws inputs, targets and samples.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from pirecon.errors import ConfigError

FULL_BOX = (0.0, 0.0, 1.0, 1.0)


def crop_and_resize(images: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """images (N, C, H, W), boxes (N, 4) normalised [x0, y0, x1, y1] -> (N, C, size, size).

    Each output pixel is the mean of s x s bilinear samples spread evenly over its footprint
    in the box (s = ceil(largest box side in pixels / size), so down-sizing averages like
    roi-align / area interpolation and never skips input pixels). Coordinates follow
    `grid_sample(align_corners=False)`: 0 and 1 are the outer edges of the first and last
    pixel, so a box whose edges fall on pixel edges and whose side is `size` pixels returns
    exactly those pixels.
    """
    n, _, h, w = images.shape
    boxes = boxes.to(device=images.device, dtype=torch.float32)
    if n == 0:
        return images.new_zeros(0, images.shape[1], size, size)
    bw = boxes[:, 2] - boxes[:, 0]
    bh = boxes[:, 3] - boxes[:, 1]
    largest = float(torch.maximum(bw * w, bh * h).max())
    s = max(1, math.ceil(largest / size - 1e-6))
    m = size * s
    frac = (torch.arange(m, device=images.device, dtype=torch.float32) + 0.5) / m  # (m,)
    xs = boxes[:, 0:1] + frac[None] * bw[:, None]  # (N, m)
    ys = boxes[:, 1:2] + frac[None] * bh[:, None]
    grid = torch.stack([xs[:, None, :].expand(n, m, m), ys[:, :, None].expand(n, m, m)], dim=-1) * 2 - 1
    out = F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
    if s > 1:
        out = F.avg_pool2d(out, s)
    return out.to(images.dtype)


def fold(x: torch.Tensor, grid: int) -> torch.Tensor:
    """(N, C, grid*k, grid*k) -> (N, grid*grid, C*k*k): each k x k block becomes one token (row-major)."""
    n, c, h, w = x.shape
    if h != w or h % grid:
        raise ValueError(f"cannot fold a {h}x{w} map into a {grid}x{grid} grid")
    k = h // grid
    return x.reshape(n, c, grid, k, grid, k).permute(0, 2, 4, 1, 3, 5).reshape(n, grid * grid, c * k * k)


def unfold(tokens: torch.Tensor, grid: int, channels: int) -> torch.Tensor:
    """Inverse of `fold`: (N, grid*grid, channels*k*k) -> (N, channels, grid*k, grid*k)."""
    n, t, d = tokens.shape
    k = math.isqrt(d // channels)
    if t != grid * grid or channels * k * k != d:
        raise ValueError(f"cannot unfold tokens of shape {tuple(tokens.shape)} into {channels} channels on a "
                         f"{grid}x{grid} grid")
    x = tokens.reshape(n, grid, grid, channels, k, k).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(n, channels, grid * k, grid * k)


class PixelTarget:
    """The crop itself at (grid * patch)^2 pixels, folded into grid x grid tokens."""

    clip = 1.0  # x0 predictions are clipped to [-1, 1] when sampling

    def __init__(self, grid: int, patch: int):
        self.grid, self.patch = grid, patch
        self.input_size = grid * patch
        self.channels = 3 * patch * patch

    def encode(self, crops: torch.Tensor) -> torch.Tensor:
        return fold(crops.float(), self.grid)

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        return unfold(tokens.float(), self.grid, 3).clamp(-1, 1)


class VaeTarget:
    """Latents of a frozen AutoencoderKL-like `vae` (only `.config`, `.encode`, `.decode` are used):
    `(latent - shift_factor) * scaling_factor`, folded k x k into the grid. The latent mean
    (not a sample) is the target, so the target of a frame is deterministic.
    """

    clip = None

    def __init__(self, vae, grid: int, vision_patch: int):
        cfg = vae.config
        self.vae = vae
        self.grid = grid
        self.latent_channels = int(_get(cfg, "latent_channels"))
        self.down = 2 ** (len(_get(cfg, "block_out_channels")) - 1)
        self.k = max(1, round(vision_patch / self.down))
        self.input_size = grid * self.k * self.down
        self.channels = self.latent_channels * self.k * self.k
        self.scale = float(_get(cfg, "scaling_factor", 1.0) or 1.0)
        self.shift = float(_get(cfg, "shift_factor", 0.0) or 0.0)

    def _ready(self, x: torch.Tensor) -> torch.dtype:
        param = next(iter(self.vae.parameters()), None) if hasattr(self.vae, "parameters") else None
        if param is not None and param.device != x.device:
            self.vae.to(x.device)
        return param.dtype if param is not None else x.dtype

    @torch.no_grad()
    def encode(self, crops: torch.Tensor) -> torch.Tensor:
        dtype = self._ready(crops)
        dist = self.vae.encode(crops.to(dtype)).latent_dist
        latents = dist.mode() if hasattr(dist, "mode") else dist.mean
        latents = (latents.float() - self.shift) * self.scale
        side = self.grid * self.k
        if latents.shape[-2:] != (side, side):
            raise ValueError(f"the VAE encoded a {self.input_size}px crop to {tuple(latents.shape[-2:])} latents; "
                             f"expected {side}x{side} (down-sampling factor {self.down})")
        return fold(latents, self.grid)

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        dtype = self._ready(tokens)
        latents = unfold(tokens.float(), self.grid, self.latent_channels) / self.scale + self.shift
        out = self.vae.decode(latents.to(dtype))
        out = out.sample if hasattr(out, "sample") else out
        return out.float().clamp(-1, 1)


def _get(cfg, name: str, default=None):
    if isinstance(cfg, dict):
        return cfg.get(name, default)
    return getattr(cfg, name, default)


def load_vae(path: str | None):
    """A frozen diffusers AutoencoderKL from a local folder (or a folder with a `vae/` sub-folder)."""
    if not path:
        raise ConfigError("--recon.target=vae needs --recon.vae_path=FOLDER (a local diffusers AutoencoderKL folder)")
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise ConfigError(f"--recon.vae_path={path}: folder not found (expected a local diffusers AutoencoderKL "
                          f"folder with config.json and diffusion_pytorch_model.safetensors)")
    try:
        from diffusers import AutoencoderKL  # lazy: diffusers is optional and slow to import
    except ImportError:
        raise ConfigError("--recon.target=vae needs the optional `diffusers` package: pip install diffusers "
                          "(or use --recon.target=pixels)") from None
    subfolder = None
    if not (folder / "config.json").is_file():
        if (folder / "vae" / "config.json").is_file():
            subfolder = "vae"
        else:
            raise ConfigError(f"--recon.vae_path={path}: does not hold a diffusers AutoencoderKL (no config.json "
                              f"in the folder or in its vae/ sub-folder)")
    try:
        kwargs = {"subfolder": subfolder} if subfolder else {}
        vae = AutoencoderKL.from_pretrained(str(folder), **kwargs)
    except Exception as exc:  # diffusers raises OSError / ValueError / EnvironmentError variants
        raise ConfigError(f"--recon.vae_path={path}: could not load a diffusers AutoencoderKL ({exc})") from None
    vae.requires_grad_(False)
    vae.eval()
    return vae


# ---------------------------------------------------------------------------------------------
# Visualisation

def reconstruction_grid(result: dict, path, min_cell: int = 128, gap: int = 2) -> Path:
    """Write a PNG: one row per frame; per view the columns input | target | reconstruction, each
    cell `R * ceil(min_cell / R)` pixels (nearest-neighbour up-scaling). Missing views are black."""

    inputs, target, recon, valid = result["input"], result["target"], result["reconstruction"], result["valid"]
    b, nv = valid.shape
    res = inputs.shape[-1]
    cell = res * max(1, math.ceil(min_cell / res))
    cols = 3 * nv
    canvas = np.full((b * cell + (b + 1) * gap, cols * cell + (cols + 1) * gap, 3), 255, dtype=np.uint8)

    def to_cell(img: torch.Tensor) -> np.ndarray:
        img = F.interpolate(img[None].float(), size=(cell, cell), mode="nearest")[0]
        return ((img.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()

    for row in range(b):
        for v in range(nv):
            for j, images in enumerate((inputs, target, recon)):
                col = 3 * v + j
                y, x = gap + row * (cell + gap), gap + col * (cell + gap)
                img = images[row, v] if bool(valid[row, v]) else -torch.ones(3, cell, cell)
                canvas[y:y + cell, x:x + cell] = to_cell(img)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(canvas).save(path)
    return path
