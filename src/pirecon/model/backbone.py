"""PaliGemma with an action expert: SigLIP + Gemma VLM + Gemma expert sharing attention.

Layer by layer, every stream (VLM tokens = "prefix", expert tokens = "suffix") applies its own
input norm and q/k/v projections; the token sequences are concatenated and one attention with RoPE
runs over all of them; each stream then applies its own o_proj, post-attention norm and MLP.

Three call modes, all through `Backbone.forward`:
- prefix only (`suffix=None, return_kv=True`): returns per-layer (K, V) of the prefix;
- suffix with a cached prefix (`prefix=None, past_kv=...`): keys/values = cache + suffix, the
  cache itself is not modified, so it is reused across denoising steps and never grows;
- joint (both streams): training.
"""

from __future__ import annotations

import functools

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from pirecon.configs.policy import PolicyConfig
from pirecon.model.cpu_bf16 import scaled_dot_product_attention
from pirecon.model.gemma import GemmaLayer, GemmaStack, gated_residual, rope
from pirecon.model.siglip import SiglipVision

KVCache = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: (B, Hkv, Lp, Dh) each


def joint_layer(
    layers: list[GemmaLayer | None],
    xs: list[torch.Tensor | None],
    conds: list[torch.Tensor | None],
    mask: torch.Tensor,
    positions: torch.Tensor,
    past_kv: tuple[torch.Tensor, torch.Tensor] | None,
) -> tuple[list[torch.Tensor | None], tuple[torch.Tensor, torch.Tensor]]:
    """One layer over several streams.

    xs[i]: (B, L_i, W_i) or None; mask: (B, 1, Lq, Lk) bool (True: may attend) with Lq = sum L_i,
    Lk = past + Lq, given to the attention as it is; positions: (B, Lq). Returns the new xs and
    this layer's (K, V) over the new tokens.
    """
    active = [i for i, x in enumerate(xs) if x is not None]
    spec = layers[active[0]].spec
    compute_dtype = layers[active[0]].q_proj.weight.dtype
    qs, ks, vs, gates = [], [], [], {}
    for i in active:
        layer, x = layers[i], xs[i]
        h, gates[i] = layer.input_norm(x, conds[i])
        h = h.to(layer.q_proj.weight.dtype)
        b, length, _ = h.shape
        qs.append(layer.q_proj(h).view(b, length, spec.num_heads, spec.head_dim).to(compute_dtype))
        ks.append(layer.k_proj(h).view(b, length, spec.num_kv_heads, spec.head_dim).to(compute_dtype))
        vs.append(layer.v_proj(h).view(b, length, spec.num_kv_heads, spec.head_dim).to(compute_dtype))
    q = rope(torch.cat(qs, 1).transpose(1, 2), positions)  # (B, H, Lq, Dh)
    k = rope(torch.cat(ks, 1).transpose(1, 2), positions)  # (B, Hkv, Lq, Dh)
    v = torch.cat(vs, 1).transpose(1, 2)
    new_kv = (k, v)
    if past_kv is not None:
        k = torch.cat([past_kv[0].to(k.dtype), k], dim=2)
        v = torch.cat([past_kv[1].to(v.dtype), v], dim=2)
    groups = spec.num_heads // spec.num_kv_heads
    if groups > 1:  # query heads share the KV heads
        k = k.repeat_interleave(groups, dim=1)
        v = v.repeat_interleave(groups, dim=1)
    attn = scaled_dot_product_attention(q, k, v, attn_mask=mask)  # scale 1/sqrt(Dh)
    attn = attn.transpose(1, 2).reshape(q.shape[0], q.shape[2], spec.num_heads * spec.head_dim)

    out: list[torch.Tensor | None] = [None] * len(xs)
    start = 0
    for i in active:
        layer, x = layers[i], xs[i]
        length = x.shape[1]
        y = layer.o_proj(attn[:, start:start + length].to(layer.o_proj.weight.dtype))
        start += length
        x = gated_residual(x, y.to(x.dtype), gates[i])
        h, gate = layer.post_attn_norm(x, conds[i])
        y = layer.mlp(h.to(layer.mlp.gate_proj.weight.dtype))
        out[i] = gated_residual(x, y.to(x.dtype), gate)
    return out, new_kv


def run_joint_layer(layers: list[GemmaLayer], xs: list[torch.Tensor | None], conds: list[torch.Tensor | None],
                    mask: torch.Tensor, positions: torch.Tensor, past_kv: tuple[torch.Tensor, torch.Tensor] | None):
    """`joint_layer` called through the module of every layer it uses (nested: the VLM layer's
    `forward` calls the expert layer's, which calls `joint_layer`), so that hooks on the layers
    (FSDP's) see their weights used. Without hooks the result is `joint_layer`'s, bit for bit."""
    def run(*tensors):
        return joint_layer(layers, *tensors)
    for i in reversed(range(len(layers))):
        if xs[i] is not None:
            run = functools.partial(layers[i], run)
    return run(xs, conds, mask, positions, past_kv)


class Backbone(nn.Module):
    """Vision tower + projector + the two Gemma stacks."""

    def __init__(self, config: PolicyConfig):
        super().__init__()
        self.config = config
        vision, vlm, expert = config.vision, config.vlm, config.expert
        self.vision = SiglipVision(vision, config.image_resolution)
        self.projector = nn.Linear(vision.width, vlm.width)
        self.vlm = GemmaStack(vlm, with_embeddings=True)
        adaptive = expert.width if config.type == "pi05" else None
        self.expert = GemmaStack(expert, with_embeddings=False, adaptive_cond_dim=adaptive)
        self.gradient_checkpointing = False

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        self.gradient_checkpointing = enabled
        self.vision.gradient_checkpointing = enabled

    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        """images: (N, 3, R, R) in [-1, 1] -> (N, tokens_per_image, vlm width). Not scaled."""
        feats = self.vision(images)
        return self.projector(feats.to(self.projector.weight.dtype))

    def forward(
        self,
        prefix: torch.Tensor | None,
        suffix: torch.Tensor | None,
        mask: torch.Tensor,
        positions: torch.Tensor,
        past_kv: KVCache | None = None,
        return_kv: bool = False,
        adarms_cond: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, KVCache | None]:
        """prefix: (B, Lp, Wvlm) | None; suffix: (B, Ls, Wexp) | None; mask: (B, Lq, Lk) bool.

        Returns (prefix_out, suffix_out, kv): outputs after each stack's final norm, and the
        per-layer K/V of this call's tokens when `return_kv`.
        """
        xs = [prefix, suffix]
        conds = [None, adarms_cond]
        kv_out: KVCache = []
        use_ckpt = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        # One boolean mask for every layer and head. A boolean mask (not an additive bias) lets
        # SDPA pick its memory-efficient kernels; a query that may see nothing (padding) gets a
        # zero output instead of the reference's uniform average. No real token reads a padded
        # one, so the outputs of real tokens are the same bit for bit.
        mask = mask[:, None]
        for index, layers in enumerate(zip(self.vlm.layers, self.expert.layers)):
            past = past_kv[index] if past_kv is not None else None
            if use_ckpt:
                xs, kv = checkpoint(run_joint_layer, list(layers), xs, conds, mask, positions, past,
                                    use_reentrant=False)
            else:
                xs, kv = run_joint_layer(list(layers), xs, conds, mask, positions, past)
            if return_kv:
                kv_out.append(kv)
        prefix_out = self.vlm.norm(xs[0])[0] if xs[0] is not None else None
        suffix_out = self.expert.norm(xs[1], adarms_cond)[0] if xs[1] is not None else None
        return prefix_out, suffix_out, (kv_out if return_kv else None)


def make_attention_mask(pad_masks: torch.Tensor, block_starts: torch.Tensor) -> torch.Tensor:
    """big_vision-style mask from per-token block starts.

    pad_masks: (B, L) bool, True on real tokens; block_starts: (B, L) int/bool, 1 where a token
    starts a new block that earlier tokens may not see. A token attends to every real token
    whose block index (cumsum of block_starts) is <= its own. Returns (B, L, L) bool.
    """
    cumsum = torch.cumsum(block_starts.long(), dim=1)
    att = cumsum[:, None, :] <= cumsum[:, :, None]
    pad = pad_masks[:, None, :] & pad_masks[:, :, None]
    return att & pad


def position_ids(pad_masks: torch.Tensor) -> torch.Tensor:
    """position_ids = cumsum(pad) - 1, (B, L)."""
    return torch.cumsum(pad_masks.long(), dim=1) - 1
