"""Gemma building blocks in plain PyTorch: RMSNorm, adaptive RMSNorm, RoPE, GeGLU MLP, layers.

The attention itself runs in `backbone.py`, where the layers of two Gemma stacks (the VLM and the
action expert) attend jointly over their concatenated tokens.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from pirecon.configs.variants import GemmaSpec

NORM_EPS = 1e-6


class RMSNorm(nn.Module):
    """Gemma RMSNorm: x * rsqrt(mean(x^2) + eps) * (1 + weight), computed in float32."""

    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None):
        """x: (..., D) -> (normed (..., D) in x's dtype, gate None)."""
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + NORM_EPS)
        return (normed * (1.0 + self.weight.float())).to(x.dtype), None


class AdaRMSNorm(nn.Module):
    """Pi0.5's adaptive RMSNorm: a zero-initialised Linear(cond -> 3*dim) gives scale, shift, gate.

    out = norm(x) * (1 + scale) + shift; the gate multiplies the residual branch.
    """

    def __init__(self, dim: int, cond_dim: int):
        super().__init__()
        self.dense = nn.Linear(cond_dim, 3 * dim)
        nn.init.zeros_(self.dense.weight)
        nn.init.zeros_(self.dense.bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None):
        """x: (B, L, D), cond: (B, C) shared by every token -> (out (B, L, D), gate (B, 1, D)); or
        cond (B, L, C), one per token (training-time real-time chunking's per-token time) ->
        (out, gate (B, L, D))."""
        if cond is None:
            raise ValueError("AdaRMSNorm needs a condition (the Pi0.5 time embedding)")
        if cond.dim() == 3 and cond.shape[1] != x.shape[1]:
            raise ValueError(f"a per-token condition of {cond.shape[1]} tokens for {x.shape[1]} tokens")
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + NORM_EPS)
        modulation = self.dense(cond.to(self.dense.weight.dtype)).float()
        if modulation.dim() == 2:
            modulation = modulation[:, None, :]
        scale, shift, gate = modulation.chunk(3, dim=-1)
        out = normed * (1.0 + scale) + shift
        return out.to(x.dtype), gate.to(x.dtype)


def make_norm(dim: int, adaptive_cond_dim: int | None) -> nn.Module:
    return RMSNorm(dim) if adaptive_cond_dim is None else AdaRMSNorm(dim, adaptive_cond_dim)


def gated_residual(x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor | None) -> torch.Tensor:
    return x + y if gate is None else x + y * gate


class GeGLU(nn.Module):
    """down(gelu_tanh(gate(x)) * up(x))."""

    def __init__(self, width: int, mlp_dim: int):
        super().__init__()
        self.gate_proj = nn.Linear(width, mlp_dim, bias=False)
        self.up_proj = nn.Linear(width, mlp_dim, bias=False)
        self.down_proj = nn.Linear(mlp_dim, width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.gelu(self.gate_proj(x), approximate="tanh") * self.up_proj(x))


class GemmaLayer(nn.Module):
    """The weights of one Gemma decoder layer. `backbone.joint_layer` runs it, together with the
    layer of the same depth of the other stack, through `forward`."""

    def __init__(self, spec: GemmaSpec, adaptive_cond_dim: int | None = None):
        super().__init__()
        self.spec = spec
        self.input_norm = make_norm(spec.width, adaptive_cond_dim)
        self.q_proj = nn.Linear(spec.width, spec.num_heads * spec.head_dim, bias=False)
        self.k_proj = nn.Linear(spec.width, spec.num_kv_heads * spec.head_dim, bias=False)
        self.v_proj = nn.Linear(spec.width, spec.num_kv_heads * spec.head_dim, bias=False)
        self.o_proj = nn.Linear(spec.num_heads * spec.head_dim, spec.width, bias=False)
        self.post_attn_norm = make_norm(spec.width, adaptive_cond_dim)
        self.mlp = GeGLU(spec.width, spec.mlp_dim)

    def forward(self, run, *args):
        """`run(*args)`: the computation that uses this layer's weights (`backbone.joint_layer`,
        which runs the layers of both stacks at once). Calling it through the module lets module
        hooks wrap it: under FSDP the all-gather of the layer's weights before, the reshard after."""
        return run(*args)


class GemmaStack(nn.Module):
    """Token embeddings (optional), `depth` layers and the final norm of one Gemma model."""

    def __init__(self, spec: GemmaSpec, with_embeddings: bool, adaptive_cond_dim: int | None = None):
        super().__init__()
        self.spec = spec
        self.embed_tokens = nn.Embedding(spec.vocab_size, spec.width) if with_embeddings else None
        self.layers = nn.ModuleList(GemmaLayer(spec, adaptive_cond_dim) for _ in range(spec.depth))
        self.norm = make_norm(spec.width, adaptive_cond_dim)

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens: (B, L) -> (B, L, width), scaled by sqrt(width) as Gemma does."""
        emb = self.embed_tokens(tokens)
        return emb * torch.tensor(math.sqrt(self.spec.width), dtype=emb.dtype)


def rope(x: torch.Tensor, positions: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """Rotary embedding, rotate-half convention over the full head dim.

    x: (B, H, L, Dh); positions: (B, L) integer -> same shape as x.
    """
    half = x.shape[-1] // 2
    freq_exponents = torch.arange(half, device=x.device, dtype=torch.float32) * (2.0 / x.shape[-1])
    inv_freq = base ** -freq_exponents  # (half,)
    angles = positions[:, None, :, None].float() * inv_freq  # (B, 1, L, half)
    sin, cos = torch.sin(angles), torch.cos(angles)
    x32 = x.float()
    x1, x2 = x32[..., :half], x32[..., half:]
    out = torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)
    return out.to(x.dtype)
