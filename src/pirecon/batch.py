"""The typed batch that flows from the data pipeline into the policy."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from pirecon.errors import InputError


@dataclass
class Batch:
    """One model batch. Views follow `PolicyConfig.camera_names` order.

    images:        (B, V, 3, H, W) float, values in [-1, 1]
    image_masks:   (B, V) bool, False where a view is missing (its pixels are ignored)
    tokens:        (B, L) long, prompt token ids, right-padded
    token_masks:   (B, L) bool, True on real tokens
    state:         (B, S) float, normalised and zero-padded to max_state_dim
    actions:       (B, H, A) float, normalised and zero-padded to max_action_dim (training only)
    action_is_pad: (B, H) bool, True on chunk steps past the episode end (training only)
    action_dim:    number of real action dims (<= A); loss and outputs ignore the padding
    extras:        optional per-sample tensors used by auxiliary heads (e.g. gaze boxes)
    """

    images: torch.Tensor
    image_masks: torch.Tensor
    tokens: torch.Tensor
    token_masks: torch.Tensor
    state: torch.Tensor
    actions: torch.Tensor | None = None
    action_is_pad: torch.Tensor | None = None
    action_dim: int | None = None
    extras: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)

    @property
    def batch_size(self) -> int:
        return self.images.shape[0]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "Batch":
        """The batch on `device`. `non_blocking=True`: the host does not wait for the copy (from pinned
        memory it overlaps with the device's work)."""
        return self._map(lambda x: x.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> "Batch":
        """The batch in page-locked host memory (DataLoader(pin_memory=True) calls this)."""
        return self._map(lambda x: x.pin_memory())

    def _map(self, fn) -> "Batch":
        def apply(x):
            return fn(x) if isinstance(x, torch.Tensor) else x
        return dataclasses.replace(
            self,
            **{f.name: apply(getattr(self, f.name)) for f in dataclasses.fields(self) if f.name != "extras"},
            extras={k: apply(v) for k, v in self.extras.items()},
        )

    def validate(self, config) -> None:
        """Check shapes against a PolicyConfig; raise InputError naming the field and expectation."""
        b = self.images.shape[0] if self.images.dim() > 0 else 0
        res = config.image_resolution
        views = len(config.camera_names)
        _expect(self.images, "images", (b, views, 3, res, res),
                f"(batch, {views} views {list(config.camera_names)}, 3, {res}, {res})")
        _expect(self.image_masks, "image_masks", (b, views), f"(batch, {views})")
        if self.tokens.dim() != 2 or self.tokens.shape[0] != b:
            raise InputError(f"batch.tokens has shape {tuple(self.tokens.shape)}; expected (batch={b}, length)")
        _expect(self.token_masks, "token_masks", tuple(self.tokens.shape), "the shape of tokens")
        if self.tokens.dtype not in (torch.int32, torch.int64):
            raise InputError(f"batch.tokens has dtype {self.tokens.dtype}; expected an integer dtype")
        if self.state.dim() != 2 or self.state.shape[0] != b or self.state.shape[1] > config.max_state_dim:
            raise InputError(
                f"batch.state has shape {tuple(self.state.shape)}; expected (batch={b}, <= max_state_dim="
                f"{config.max_state_dim}); pad with zeros or raise --policy.max_state_dim")
        if self.actions is not None:
            if (self.actions.dim() != 3 or self.actions.shape[0] != b
                    or self.actions.shape[1] != config.chunk_size or self.actions.shape[2] > config.max_action_dim):
                raise InputError(
                    f"batch.actions has shape {tuple(self.actions.shape)}; expected (batch={b}, chunk_size="
                    f"{config.chunk_size}, <= max_action_dim={config.max_action_dim}); select dims or raise "
                    f"--policy.max_action_dim")
            if self.action_is_pad is not None:
                _expect(self.action_is_pad, "action_is_pad", (b, config.chunk_size), f"(batch, {config.chunk_size})")
        if self.action_dim is not None and not 0 < self.action_dim <= config.max_action_dim:
            raise InputError(
                f"batch.action_dim={self.action_dim}; expected 1..max_action_dim={config.max_action_dim}")


def _expect(x: torch.Tensor, name: str, shape: tuple, text: str) -> None:
    if tuple(x.shape) != tuple(shape):
        raise InputError(f"batch.{name} has shape {tuple(x.shape)}; expected {text}")


def synthetic_batch(config, batch_size: int = 2, action_dim: int | None = None, seed: int = 0,
                    missing_views: int = 0, text_lengths: list[int] | None = None) -> Batch:
    """A random but well-formed batch for `config` (for smoke checks, tests and benchmarks).

    The last `missing_views` views are masked out; `text_lengths` sets the number of real prompt
    tokens per sample (default: 3/4 of the prompt length).
    """
    gen = torch.Generator().manual_seed(seed)
    res, views = config.image_resolution, len(config.camera_names)
    length = config.max_token_len
    action_dim = action_dim or config.max_action_dim
    images = torch.rand(batch_size, views, 3, res, res, generator=gen) * 2 - 1
    image_masks = torch.ones(batch_size, views, dtype=torch.bool)
    if missing_views:
        image_masks[:, views - missing_views:] = False
        images[:, views - missing_views:] = -1.0
    lengths = text_lengths or [max(1, length * 3 // 4)] * batch_size
    token_masks = torch.arange(length)[None, :] < torch.tensor(lengths)[:, None]
    tokens = torch.randint(3, config.vlm.vocab_size, (batch_size, length), generator=gen) * token_masks
    state = torch.zeros(batch_size, config.max_state_dim)
    state[:, :min(action_dim, config.max_state_dim)] = torch.rand(batch_size, min(action_dim, config.max_state_dim),
                                                                   generator=gen) * 2 - 1
    actions = torch.zeros(batch_size, config.chunk_size, config.max_action_dim)
    actions[..., :action_dim] = torch.rand(batch_size, config.chunk_size, action_dim, generator=gen) * 2 - 1
    action_is_pad = torch.zeros(batch_size, config.chunk_size, dtype=torch.bool)
    return Batch(images=images, image_masks=image_masks, tokens=tokens, token_masks=token_masks, state=state,
                 actions=actions, action_is_pad=action_is_pad, action_dim=action_dim)
