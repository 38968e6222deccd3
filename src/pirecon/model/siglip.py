"""SigLIP vision tower (ViT with learned positions, no class token) and the linear projector."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pirecon.configs.variants import SiglipSpec
from pirecon.model.cpu_bf16 import scaled_dot_product_attention

LAYER_NORM_EPS = 1e-6


class FP32LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 whatever the input and weight dtypes; returns x's dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x.float(), self.normalized_shape, self.weight.float(), self.bias.float(),
                            self.eps).to(x.dtype)


class SiglipLayer(nn.Module):
    def __init__(self, spec: SiglipSpec):
        super().__init__()
        self.num_heads = spec.num_heads
        self.layer_norm1 = FP32LayerNorm(spec.width, eps=LAYER_NORM_EPS)
        self.q_proj = nn.Linear(spec.width, spec.width)
        self.k_proj = nn.Linear(spec.width, spec.width)
        self.v_proj = nn.Linear(spec.width, spec.width)
        self.o_proj = nn.Linear(spec.width, spec.width)
        self.layer_norm2 = FP32LayerNorm(spec.width, eps=LAYER_NORM_EPS)
        self.fc1 = nn.Linear(spec.width, spec.mlp_dim)
        self.fc2 = nn.Linear(spec.mlp_dim, spec.width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, T, W) -> (N, T, W)."""
        n, t, w = x.shape
        h = self.layer_norm1(x)

        def heads(proj):
            return proj(h).view(n, t, self.num_heads, w // self.num_heads).transpose(1, 2)

        attn = scaled_dot_product_attention(heads(self.q_proj), heads(self.k_proj), heads(self.v_proj))
        x = x + self.o_proj(attn.transpose(1, 2).reshape(n, t, w))
        return x + self.fc2(F.gelu(self.fc1(self.layer_norm2(x)), approximate="tanh"))


class SiglipVision(nn.Module):
    """images (N, 3, R, R) in [-1, 1] -> patch features (N, (R/patch)^2, width)."""

    def __init__(self, spec: SiglipSpec, image_resolution: int):
        super().__init__()
        self.spec = spec
        self.grid = image_resolution // spec.patch_size
        self.patch_embed = nn.Conv2d(3, spec.width, kernel_size=spec.patch_size, stride=spec.patch_size)
        self.pos_embed = nn.Embedding(self.grid * self.grid, spec.width)
        self.layers = nn.ModuleList(SiglipLayer(spec) for _ in range(spec.depth))
        self.post_norm = FP32LayerNorm(spec.width, eps=LAYER_NORM_EPS)
        self.gradient_checkpointing = False

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # Patch and position embeddings stay in float32 under bf16 (as the reference does).
        x = self.patch_embed(images.to(self.patch_embed.weight.dtype))  # (N, W, g, g)
        x = x.flatten(2).transpose(1, 2) + self.pos_embed.weight[None].to(x.dtype)
        dtype = self.layers[0].fc1.weight.dtype if len(self.layers) else x.dtype
        x = x.to(dtype)
        for layer in self.layers:
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x = torch.utils.checkpoint.checkpoint(layer, x, use_reentrant=False)
            else:
                x = layer(x)
        return self.post_norm(x)
