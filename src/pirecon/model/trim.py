"""Skipping what a whole batch masks: camera views no sample has, prompt padding past the longest prompt.

Attention never reads masked tokens and positions count real tokens only (`backbone.position_ids`),
so a prefix without them gives the real tokens the same states up to float rounding, for less work:
SigLIP runs on fewer images and every layer attends over fewer tokens.

    plan = trim_plan(batch.image_masks, batch.token_masks)   # reads the masks on the host
    short = apply_plan(batch, plan)                          # the batch without them
    full = untrim_prefix(prefix_out, plan, tokens_per_image) # back to the full layout, zeros where cut

`trim_plan` needs the mask values on the host: on a GPU, compute it from the batch before it is
moved (the trainer does), or it waits for the device.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from pirecon.batch import Batch
from pirecon.errors import InputError


@dataclass(frozen=True)
class TrimPlan:
    """Which views stay (indices into the batch's views, in order) and how many prompt tokens."""

    views: tuple[int, ...]
    num_views: int  # views of the full batch
    length: int  # prompt tokens kept (a prefix of the right-padded tokens)
    full_length: int  # prompt tokens of the full batch

    @property
    def is_identity(self) -> bool:
        return len(self.views) == self.num_views and self.length == self.full_length


def trim_plan(image_masks: torch.Tensor, token_masks: torch.Tensor) -> TrimPlan:
    """The plan for masks (B, V) and (B, L): views some sample has (at least one stays), and prompt
    tokens up to the last real one of any sample (at least one stays)."""
    image_masks, token_masks = image_masks.bool().cpu(), token_masks.bool().cpu()
    present = image_masks.any(dim=0)
    views = tuple(int(i) for i in present.nonzero().flatten()) or (0,)
    real = token_masks.any(dim=0).nonzero()
    length = int(real.max()) + 1 if len(real) else 1
    return TrimPlan(views, image_masks.shape[1], length, token_masks.shape[1])


def _select_views(x: torch.Tensor, views: tuple[int, ...]) -> torch.Tensor:
    """x[:, views]: a slice (no copy) when the kept views are the leading ones."""
    if views == tuple(range(len(views))):
        return x[:, :len(views)]
    return x.index_select(1, torch.tensor(views, device=x.device))


def apply_plan(batch: Batch, plan: TrimPlan) -> Batch:
    """`batch` without the views and prompt tokens `plan` drops (the same object when it drops none)."""
    if tuple(batch.image_masks.shape[1:]) != (plan.num_views,) or batch.token_masks.shape[1] != plan.full_length:
        raise InputError(f"the trim plan is for {plan.num_views} views and {plan.full_length} prompt tokens; the batch "
                         f"has {batch.image_masks.shape[1]} views and {batch.token_masks.shape[1]} prompt tokens")
    if plan.is_identity:
        return batch
    return dataclasses.replace(batch, images=_select_views(batch.images, plan.views),
                               image_masks=_select_views(batch.image_masks, plan.views),
                               tokens=batch.tokens[:, :plan.length], token_masks=batch.token_masks[:, :plan.length])


def trimmed(batch: Batch) -> Batch:
    """`batch` without the views every sample masks and the prompt padding past its longest prompt
    (tokens are right-padded). At least one view stays."""
    return apply_plan(batch, trim_plan(batch.image_masks, batch.token_masks))


def untrim_prefix(prefix_out: torch.Tensor, plan: TrimPlan, tokens_per_image: int) -> torch.Tensor:
    """Prefix states (B, kept views x tokens_per_image + plan.length, W) of a trimmed batch laid out as
    the full batch's (B, num_views x tokens_per_image + full_length, W), zeros where tokens were cut
    (tokens no attention reads). Differentiable."""
    if plan.is_identity:
        return prefix_out
    b, _, width = prefix_out.shape
    kept = len(plan.views)
    images = prefix_out[:, :kept * tokens_per_image].reshape(b, kept, tokens_per_image, width)
    full = prefix_out.new_zeros(b, plan.num_views, tokens_per_image, width)
    full = full.index_copy(1, torch.tensor(plan.views, device=prefix_out.device), images)
    text = prefix_out[:, kept * tokens_per_image:]
    padding = prefix_out.new_zeros(b, plan.full_length - plan.length, width)
    return torch.cat([full.reshape(b, plan.num_views * tokens_per_image, width), text, padding], dim=1)
