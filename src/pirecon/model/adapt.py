"""Adapt a loaded policy to a config whose shapes differ in a supported way.

- `image_resolution`: SigLIP's learnt position embeddings are a grid x grid table; they are
  resampled bicubically to the new grid (as `interpolate_pos_encoding` does in transformers' SigLIP).
- `max_action_dim` / `max_state_dim` wider: `action_in_proj` / `state_proj` get zero input columns
  (the new padded dims start out ignored) and `action_out_proj` zero output rows and biases (the
  new dims start at zero velocity). Narrower padding is refused upstream (configs.policy).

Every other weight is kept as it is, dtype and all.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pirecon.configs.policy import PolicyConfig
from pirecon.model.pi0 import Pi0Policy

ADAPTABLE = ("image_resolution", "max_action_dim", "max_state_dim")


def needs_adapting(current: PolicyConfig, target: PolicyConfig) -> bool:
    return any(getattr(current, name) != getattr(target, name) for name in ADAPTABLE)


def interpolate_positions(table: torch.Tensor, grid: int) -> torch.Tensor:
    """(old_grid**2, W) position embeddings -> (grid**2, W), bicubic over the 2-D grid."""
    old = round(table.shape[0] ** 0.5)
    if old == grid:
        return table
    x = table.float().reshape(1, old, old, -1).permute(0, 3, 1, 2)
    x = F.interpolate(x, size=(grid, grid), mode="bicubic", align_corners=False)
    return x.permute(0, 2, 3, 1).reshape(grid * grid, -1).to(table.dtype)


def _pad(tensor: torch.Tensor, dim: int, size: int) -> torch.Tensor:
    extra = list(tensor.shape)
    extra[dim] = size - tensor.shape[dim]
    return torch.cat([tensor, tensor.new_zeros(extra)], dim=dim)


def adapt_policy(policy: Pi0Policy, target: PolicyConfig) -> Pi0Policy:
    """A policy with `target`'s config holding `policy`'s weights, adapted where shapes differ."""
    state = {k: v.detach() for k, v in policy.state_dict().items()}
    grid = target.image_resolution // target.vision.patch_size
    key = "backbone.vision.pos_embed.weight"
    state[key] = interpolate_positions(state[key], grid)
    a = target.max_action_dim
    state["action_in_proj.weight"] = _pad(state["action_in_proj.weight"], 1, a)
    state["action_out_proj.weight"] = _pad(state["action_out_proj.weight"], 0, a)
    state["action_out_proj.bias"] = _pad(state["action_out_proj.bias"], 0, a)
    if "state_proj.weight" in state:
        state["state_proj.weight"] = _pad(state["state_proj.weight"], 1, target.max_state_dim)
    device = next(policy.parameters()).device
    with torch.device("meta"):
        adapted = Pi0Policy(target)
    adapted.load_state_dict({k: v.to(device) for k, v in state.items() if not k.startswith("recon_head.")},
                            strict=False, assign=True)
    missing = [k for k, _ in adapted.named_parameters() if _.device.type == "meta"]
    if missing:
        raise RuntimeError(f"adapt_policy left tensors unset: {missing[:5]}")
    if policy.recon_head is not None:
        adapted.add_recon_head(policy.recon_config)
        adapted.recon_head.load_state_dict(policy.recon_head.state_dict())
    adapted.apply_freeze()
    return adapted
