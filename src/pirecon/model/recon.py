"""ReconVLA-style reconstruction head (REFERENCE.md §5): an auxiliary diffusion loss on the VLM's
image-token states.

For each view in `--recon.views`, the VLM's last-layer hidden states at that view's image-token
positions (`prefix_out`, grid x grid tokens) condition a small DiT that denoises the view, or its
gaze crop (`--recon.region=gaze`), as grid x grid target tokens (pixels folded into tokens, or
folded VAE latents; see `recon_targets`). The gradient of the loss flows into `prefix_out` and so
into the backbone (or its LoRA adapters): the VLM has to keep what is needed to redraw the scene.

Denoiser: DiT blocks with adaLN-Zero (zero-initialised modulation and output layer, so the head
starts by predicting zeros), fixed 2-D sin-cos positions, patch size 1 over the token grid
(grid = image_resolution // vision patch size). The condition is per token, as in ReconVLA:
    c_i = Linear(SiLU(LayerNorm(h_i))) + timestep embedding [+ pooled text condition]
with h_i the VLM state at the i-th image token of the view; there is no cross-attention.

Text condition (`--recon.text_condition=pooled`): the mean of `prefix_out` over the real prompt
tokens, after a LayerNorm and a projection, added to every token's condition. It is cheap (one
vector per sample) and keeps the head's cost independent of the prompt length; the VLM's image
tokens have already attended to the prompt, and ReconVLA conditions on image tokens only (no
per-token cross-attention to the text), so a pooled vector is the light-weight addition. `none`
drops it.

Diffusion: `ddpm` (default, as ReconVLA) = epsilon prediction, cosine schedule, 1000 steps, MSE;
`reconstruct` samples it with deterministic DDIM (eta = 0) over `sample_steps` evenly spaced
steps, clipping x0 to [-1, 1] for pixel targets. `flow` = rectified flow x_t = t*noise + (1-t)*x0
with t ~ U(0, 1), predicting noise - x0 (as the action head), sampled by Euler steps from t=1.
Each (view, sample) pair can be repeated `noise_repeats` times with independent noise.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pirecon.batch import Batch
from pirecon.configs.policy import PolicyConfig
from pirecon.configs.recon import COSINE_S, DDPM_STEPS, MAX_BETA, ReconConfig
from pirecon.errors import ConfigError, InputError
from pirecon.model.cpu_bf16 import scaled_dot_product_attention
from pirecon.model.recon_targets import (FULL_BOX, PixelTarget, VaeTarget, crop_and_resize, load_vae,
                                         reconstruction_grid)

__all__ = ["ReconHead", "reconstruction_grid"]

TIME_MAX_PERIOD = 10000.0


# ---------------------------------------------------------------------------------------------
# Embeddings and schedule


def sincos_1d(dim: int, pos: torch.Tensor, max_period: float = TIME_MAX_PERIOD) -> torch.Tensor:
    """pos (N,) -> (N, dim) = [sin(pos * w), cos(pos * w)], w log-spaced from 1 to 1/max_period."""
    half = dim // 2
    omega = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float64) / half)
    angles = pos.double()[:, None] * omega.to(pos.device)[None]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1).float()


def sincos_2d(dim: int, grid: int) -> torch.Tensor:
    """Fixed 2-D sin-cos positions (MAE / DiT): (grid*grid, dim), half of the channels per axis."""
    coords = torch.arange(grid, dtype=torch.float64)
    ys, xs = torch.meshgrid(coords, coords, indexing="ij")
    return torch.cat([sincos_1d(dim // 2, ys.reshape(-1)), sincos_1d(dim // 2, xs.reshape(-1))], dim=-1)


def cosine_alphas_cumprod(steps: int = DDPM_STEPS, s: float = COSINE_S) -> torch.Tensor:
    """Improved-DDPM cosine schedule: beta_t = min(1 - abar(t+1)/abar(t), 0.999), returns prod(1 - beta)."""
    def abar(t):
        return math.cos((t / steps + s) / (1 + s) * math.pi / 2) ** 2
    betas = torch.tensor([min(1 - abar(i + 1) / abar(i), MAX_BETA) for i in range(steps)], dtype=torch.float64)
    return torch.cumprod(1 - betas, 0).float()


# ---------------------------------------------------------------------------------------------
# DiT with adaLN-Zero and per-token conditions


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


class DiTBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        hidden = max(1, int(dim * mlp_ratio))
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.ada = nn.Linear(dim, 6 * dim)  # applied to SiLU(c); zero-initialised (adaLN-Zero)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """x, c: (N, T, D) — the condition is per token."""
        sh1, sc1, g1, sh2, sc2, g2 = self.ada(F.silu(c)).chunk(6, dim=-1)
        n, t, d = x.shape
        h = modulate(self.norm1(x), sh1, sc1)
        q, k, v = self.qkv(h).view(n, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        attn = scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(n, t, d)
        x = x + g1 * self.proj(attn)
        h = modulate(self.norm2(x), sh2, sc2)
        return x + g2 * self.fc2(F.gelu(self.fc1(h), approximate="tanh"))


class DiT(nn.Module):
    """Denoiser over grid x grid tokens (patch size 1): x_t (N, T, C), per-token c (N, T, D) -> (N, T, C)."""

    def __init__(self, in_channels: int, dim: int, depth: int, heads: int, mlp_ratio: float, grid: int):
        super().__init__()
        self.x_embed = nn.Linear(in_channels, dim)
        self.register_buffer("pos", sincos_2d(dim, grid), persistent=False)
        self.blocks = nn.ModuleList(DiTBlock(dim, heads, mlp_ratio) for _ in range(depth))
        self.final_norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.final_ada = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, in_channels)
        self._init()

    def _init(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        for block in self.blocks:
            nn.init.zeros_(block.ada.weight)
            nn.init.zeros_(block.ada.bias)
        for m in (self.final_ada, self.out):
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        h = self.x_embed(x) + self.pos.to(x.dtype)
        for block in self.blocks:
            h = block(h, c)
        shift, scale = self.final_ada(F.silu(c)).chunk(2, dim=-1)
        return self.out(modulate(self.final_norm(h), shift, scale))


# ---------------------------------------------------------------------------------------------
# The head


@dataclass
class _Pairs:
    """The (sample, view) pairs that exist, flattened as (B*V') rows and kept where valid."""

    valid: torch.Tensor  # (B, V') bool
    tokens: torch.Tensor  # (P, T, Wvlm) the view's image-token states
    text: torch.Tensor | None  # (P, Wvlm) pooled prompt states
    images: torch.Tensor  # (P, 3, R, R) the view images
    boxes: torch.Tensor  # (P, 4) normalised crop boxes (full view where no gaze box)


class ReconHead(nn.Module):
    """Auxiliary reconstruction head (see the module docstring). Not part of the policy's weights."""

    def __init__(self, cfg: ReconConfig, policy_config: PolicyConfig):
        super().__init__()
        self.cfg = cfg
        self.policy_config = policy_config
        names = tuple(policy_config.camera_names)
        unknown = [v for v in cfg.views if v not in names]
        if unknown:
            raise ConfigError(f"--recon.views={list(cfg.views)}: {unknown} not among the model's views; "
                              f"expected names from --policy.camera_names {list(names)}")
        self.view_index = [names.index(v) for v in cfg.views]
        patch = policy_config.vision.patch_size
        self.grid = policy_config.image_resolution // patch
        width = policy_config.vlm.width
        self.hidden_dim = cfg.resolved_hidden_dim(width)
        if self.hidden_dim % 4:
            raise ConfigError(f"--recon.hidden_dim={self.hidden_dim}: expected a multiple of 4")
        self.num_heads = cfg.resolved_num_heads(self.hidden_dim)
        if cfg.target == "vae":
            # Kept out of the module tree: frozen, not in state_dict / optimizer / .to().
            self.__dict__["target"] = VaeTarget(load_vae(cfg.vae_path), self.grid, patch)
        else:
            self.__dict__["target"] = PixelTarget(self.grid, cfg.pixel_patch)
        d = self.hidden_dim
        self.cond_norm = nn.LayerNorm(width)
        self.cond_proj = nn.Linear(width, d)
        if cfg.text_condition == "pooled":
            self.text_norm = nn.LayerNorm(width)
            self.text_proj = nn.Linear(width, d)
        self.time_mlp = nn.Sequential(nn.Linear(d, d), nn.SiLU(), nn.Linear(d, d))
        self.dit = DiT(self.target.channels, d, cfg.depth, self.num_heads, cfg.mlp_ratio, self.grid)
        for m in self.time_mlp:
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)
        self.register_buffer("alphas_cumprod", cosine_alphas_cumprod(), persistent=False)
        self._warned_gaze = False

    # -- inputs ------------------------------------------------------------------------------------
    @property
    def num_target_tokens(self) -> int:
        return self.grid * self.grid

    def _pairs(self, prefix_out: torch.Tensor, num_image_tokens: int, batch: Batch) -> _Pairs:
        pc = self.policy_config
        b, length, width = prefix_out.shape
        views, per_view = len(pc.camera_names), pc.tokens_per_image
        if num_image_tokens != views * per_view:
            raise InputError(f"num_image_tokens={num_image_tokens}; expected {views} views x {per_view} tokens")
        if length != num_image_tokens + batch.token_masks.shape[1]:
            raise InputError(f"prefix_out has {length} tokens; expected {num_image_tokens} image tokens + "
                             f"{batch.token_masks.shape[1]} prompt tokens")
        idx = torch.tensor(self.view_index, device=prefix_out.device)
        nv = len(self.view_index)
        valid = batch.image_masks.bool().to(prefix_out.device)[:, idx]  # (B, V')
        keep = valid.reshape(-1)
        img = prefix_out[:, :num_image_tokens].reshape(b, views, per_view, width)[:, idx]
        tokens = img.reshape(b * nv, per_view, width)[keep]
        text = None
        if self.cfg.text_condition == "pooled":
            mask = batch.token_masks.to(prefix_out.device, torch.float32)[:, :, None]
            pooled = (prefix_out[:, num_image_tokens:].float() * mask).sum(1) / mask.sum(1).clamp(min=1)
            text = pooled[:, None].expand(b, nv, width).reshape(b * nv, width)[keep]
        images = batch.images.to(prefix_out.device)[:, idx].reshape(b * nv, *batch.images.shape[2:])[keep]
        boxes = self._boxes(batch, b, nv, idx, prefix_out.device).reshape(b * nv, 4)[keep]
        return _Pairs(valid, tokens, text, images, boxes)

    def _boxes(self, batch: Batch, b: int, nv: int, idx: torch.Tensor, device) -> torch.Tensor:
        """(B, V', 4) crop boxes: the gaze box per frame (region=gaze), else / as fallback the full view.
        extras[gaze_key] may be (B, 4) (one box for every reconstructed view) or (B, V, 4) per view."""
        full = torch.tensor(FULL_BOX, device=device).expand(b, nv, 4)
        if self.cfg.region != "gaze":
            return full
        key = self.cfg.gaze_key
        raw = batch.extras.get(key)
        if raw is None:
            self._warn_gaze(f"batch.extras has no {key!r}")
            return full
        raw = raw.to(device=device, dtype=torch.float32)
        views = len(self.policy_config.camera_names)
        if raw.shape == (b, 4):
            boxes = raw[:, None].expand(b, nv, 4)
        elif raw.shape == (b, views, 4):
            boxes = raw[:, idx]
        else:
            raise InputError(f"batch.extras[{key!r}] has shape {tuple(raw.shape)}; expected (batch={b}, 4) or "
                             f"(batch, {views} views, 4) normalised [x0, y0, x1, y1]")
        ok = torch.isfinite(boxes).all(-1)
        boxes = torch.where(ok[..., None], boxes, full).clamp(0, 1)
        ok = ok & (boxes[..., 2] > boxes[..., 0]) & (boxes[..., 3] > boxes[..., 1])
        if not bool(ok.all()):
            self._warn_gaze(f"{int((~ok).sum())} of {ok.numel()} (frame, view) pairs have no usable box in "
                            f"batch.extras[{key!r}] (NaN or empty)")
        return torch.where(ok[..., None], boxes, full)

    def _warn_gaze(self, what: str) -> None:
        if not self._warned_gaze:
            self._warned_gaze = True
            warnings.warn(f"--recon.region=gaze: {what}; reconstructing the full view for those frames "
                          f"(this warning is shown once)", stacklevel=3)

    def _condition(self, pairs: _Pairs) -> torch.Tensor:
        """Per-token condition without the timestep: (P, T, D)."""
        dtype = self.cond_proj.weight.dtype
        c = self.cond_proj(F.silu(self.cond_norm(pairs.tokens.to(dtype))))
        if pairs.text is not None:
            c = c + self.text_proj(F.silu(self.text_norm(pairs.text.to(dtype))))[:, None]
        return c

    def _targets(self, pairs: _Pairs) -> tuple[torch.Tensor, torch.Tensor]:
        """(crops (P, 3, S, S) in image space, target tokens (P, T, C))."""
        crops = crop_and_resize(pairs.images.float(), pairs.boxes, self.target.input_size)
        return crops, self.target.encode(crops)

    def _denoise(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """x_t (N, T, C), t (N,) on the DDPM step scale [0, 1000), cond (N, T, D) -> prediction (N, T, C)."""
        dtype = self.cond_proj.weight.dtype
        temb = self.time_mlp(sincos_1d(self.hidden_dim, t.float()).to(dtype))
        return self.dit(x_t.to(dtype), cond + temb[:, None]).float()

    # -- training ----------------------------------------------------------------------------------
    def pair_losses(self, prefix_out: torch.Tensor, num_image_tokens: int, batch: Batch,
                    noise: torch.Tensor | None = None, time: torch.Tensor | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Diffusion loss per (sample, view): returns (losses (B, V') with 0 where missing, valid (B, V')).

        noise: (B, V', noise_repeats, grid*grid, C) and time: (B, V', noise_repeats) (integer
        DDPM steps for ddpm, t in [0, 1] for flow) fix the randomness (tests); rows of missing
        views are ignored.
        """
        pairs = self._pairs(prefix_out, num_image_tokens, batch)
        b, nv = pairs.valid.shape
        keep = pairs.valid.reshape(-1)
        losses = prefix_out.new_zeros(b * nv, dtype=torch.float32)
        p = pairs.tokens.shape[0]
        if p == 0:  # still touch every parameter (DDP expects a gradient for each)
            anchor = prefix_out.sum() + sum(q.sum() for q in self.parameters())
            return losses.reshape(b, nv) + 0.0 * anchor, pairs.valid
        r = self.cfg.noise_repeats
        _, x0 = self._targets(pairs)  # (P, T, C)
        x0 = x0.repeat_interleave(r, 0)
        cond = self._condition(pairs).repeat_interleave(r, 0)
        device = x0.device
        if noise is None:
            noise = torch.randn_like(x0)
        else:
            noise = noise.to(device).reshape(b * nv, r, *x0.shape[1:])[keep].reshape(x0.shape).float()
        if time is None:
            if self.cfg.diffusion == "ddpm":
                time = torch.randint(0, DDPM_STEPS, (p * r,), device=device)
            else:
                time = torch.rand(p * r, device=device)
        else:
            time = time.to(device).reshape(b * nv, r)[keep].reshape(-1)
        if self.cfg.diffusion == "ddpm":
            abar = self.alphas_cumprod.to(device)[time.long()][:, None, None]
            x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * noise
            goal = noise
            pred = self._denoise(x_t, time.float(), cond)
        else:
            t = time.float()[:, None, None]
            x_t = t * noise + (1 - t) * x0
            goal = noise - x0
            pred = self._denoise(x_t, time.float() * DDPM_STEPS, cond)
        per = ((pred - goal) ** 2).mean(dim=(1, 2)).reshape(p, r).mean(1)  # (P,)
        losses = losses.masked_scatter(keep, per)
        return losses.reshape(b, nv), pairs.valid

    def forward(self, prefix_out: torch.Tensor, num_image_tokens: int, batch: Batch,
                noise: torch.Tensor | None = None, time: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """{"recon_loss": scalar}: the diffusion loss averaged over the (view, sample) pairs that exist
        (0, still attached to the graph, when none do)."""
        losses, valid = self.pair_losses(prefix_out, num_image_tokens, batch, noise=noise, time=time)
        count = valid.sum()
        loss = losses.sum() / count.clamp(min=1)
        return {"recon_loss": loss}

    # -- sampling ----------------------------------------------------------------------------------
    @torch.no_grad()
    def reconstruct(self, prefix_out: torch.Tensor, num_image_tokens: int, batch: Batch,
                    steps: int | None = None, generator: torch.Generator | None = None) -> dict:
        """Reverse diffusion from noise (DDIM eta=0 for ddpm, Euler for flow) over `steps` steps.

        Returns {"target", "reconstruction"}: (B, V', 3, h, w) in [-1, 1] (the crop that is
        reconstructed, and the decoded sample; zeros where a view is missing), "input": the view
        images (B, V', 3, R, R), "views": the view names, "valid": (B, V') bool.
        """
        steps = steps or self.cfg.sample_steps
        pairs = self._pairs(prefix_out, num_image_tokens, batch)
        b, nv = pairs.valid.shape
        keep = pairs.valid.reshape(-1)
        idx = torch.tensor(self.view_index, device=prefix_out.device)
        inputs = batch.images.to(prefix_out.device)[:, idx].float()
        size = self.target.input_size
        target = prefix_out.new_zeros(b * nv, 3, size, size, dtype=torch.float32)
        recon = torch.zeros_like(target)
        if pairs.tokens.shape[0]:
            crops, x0 = self._targets(pairs)
            cond = self._condition(pairs)
            x = torch.randn(x0.shape, generator=generator, device=generator.device if generator else None)
            x = self._sample(x.to(x0.device), cond, steps)
            out = self.target.decode(x)
            target[keep] = crops.float()
            recon[keep] = F.interpolate(out, size=(size, size), mode="bilinear") if out.shape[-1] != size else out
        return {"target": target.reshape(b, nv, 3, size, size), "reconstruction": recon.reshape(b, nv, 3, size, size),
                "input": inputs, "views": list(self.cfg.views), "valid": pairs.valid}

    def _sample(self, x: torch.Tensor, cond: torch.Tensor, steps: int) -> torch.Tensor:
        n = x.shape[0]
        clip = self.target.clip
        if self.cfg.diffusion == "flow":
            dt = -1.0 / steps
            for i in range(steps):
                t = torch.full((n,), 1.0 + i * dt, device=x.device)
                x = x + dt * self._denoise(x, t * DDPM_STEPS, cond)
            return x
        abar = self.alphas_cumprod.to(x.device)
        ts = torch.linspace(DDPM_STEPS - 1, 0, steps, device=x.device).round().long().unique_consecutive()
        for i, t in enumerate(ts.tolist()):
            a = abar[t]
            a_prev = abar[ts[i + 1]] if i + 1 < len(ts) else torch.ones((), device=x.device)
            eps = self._denoise(x, torch.full((n,), float(t), device=x.device), cond)
            x0 = (x - (1 - a).sqrt() * eps) / a.sqrt()
            if clip is not None:
                x0 = x0.clamp(-clip, clip)
                eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
            x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
        return x
