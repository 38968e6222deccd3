"""Pi0 and Pi0.5 policies: prefix/suffix embedding, flow-matching loss, sampling with a KV cache.

Pi0:   suffix = 1 state token + H action tokens; the time embedding is mixed into each action
       token by `action_time_mlp_{in,out}`.
Pi0.5: suffix = H action tokens; the time embedding goes through `time_mlp_{in,out}` and
       conditions every expert norm (adaRMS); the state is written into the prompt as text
       (see `pirecon.data.transforms`), so there is no state token.

The time is one per sample (B,), or one per action token (B, H) for training-time real-time
chunking (model/rtc.py): a clean action prefix at t = 0 beside noisy actions at t.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pirecon.batch import Batch
from pirecon.configs.policy import PolicyConfig
from pirecon.errors import InputError
from pirecon.model import rtc
from pirecon.model.backbone import Backbone, KVCache, make_attention_mask, position_ids
from pirecon.model.gemma import AdaRMSNorm, RMSNorm
from pirecon.model.recon import ReconHead
from pirecon.model.siglip import FP32LayerNorm
from pirecon.model.trim import TrimPlan, apply_plan, trim_plan, trimmed, untrim_prefix

TIME_MIN_PERIOD = 4e-3
TIME_MAX_PERIOD = 4.0


def sinusoidal_time_embedding(t: torch.Tensor, dim: int,
                              min_period: float = TIME_MIN_PERIOD, max_period: float = TIME_MAX_PERIOD) -> torch.Tensor:
    """t: (B,) or (B, H) -> (..., dim) = cat(sin(2*pi*t/period), cos(2*pi*t/period)), periods log-spaced."""
    if dim % 2:
        raise ValueError(f"time embedding dim must be even, got {dim}")
    fraction = torch.linspace(0.0, 1.0, dim // 2, dtype=torch.float64, device=t.device)
    period = min_period * (max_period / min_period) ** fraction
    angles = (2 * math.pi / period) * t.double()[..., None]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1).float()


@dataclass
class Prefix:
    embs: torch.Tensor  # (B, Lp, Wvlm)
    pad_masks: torch.Tensor  # (B, Lp) bool
    block_starts: torch.Tensor  # (B, Lp) int
    num_image_tokens: int  # V * tokens_per_image; image tokens come first


@dataclass
class Suffix:
    embs: torch.Tensor  # (B, Ls, Wexp)
    pad_masks: torch.Tensor  # (B, Ls) bool
    block_starts: torch.Tensor  # (B, Ls) int
    adarms_cond: torch.Tensor | None  # Pi0.5: (B, Wexp), or (B, H, Wexp) with a per-token time


_COMPILED_STEPS: dict[str, object] = {}


def compiled_velocity_cached(mode: str):
    """`Pi0Policy.velocity_cached` through `torch.compile(mode=mode)`, called with the policy as its
    first argument: one compiled function per mode, shared by every policy (a copy of a policy, or
    another policy, gets graphs of its own, never the first one's weights)."""
    if mode not in _COMPILED_STEPS:
        _COMPILED_STEPS[mode] = torch.compile(Pi0Policy.velocity_cached, mode=mode)
    return _COMPILED_STEPS[mode]


class Pi0Policy(nn.Module):
    """A Pi0 or Pi0.5 policy (`config.type`)."""

    def __init__(self, config: PolicyConfig, recon=None):
        """`recon`: an enabled `ReconConfig` adds the reconstruction head (`self.recon_head`)."""
        super().__init__()
        self.config = config
        self.recon_config = None
        self.recon_head = None
        self.backbone = Backbone(config)
        width = config.expert.width
        self.action_in_proj = nn.Linear(config.max_action_dim, width)
        self.action_out_proj = nn.Linear(width, config.max_action_dim)
        if config.type == "pi0":
            self.state_proj = nn.Linear(config.max_state_dim, width)
            self.action_time_mlp_in = nn.Linear(2 * width, width)
            self.action_time_mlp_out = nn.Linear(width, width)
        else:
            self.time_mlp_in = nn.Linear(width, width)
            self.time_mlp_out = nn.Linear(width, width)
        self._init_embeddings()
        if recon is not None and recon.enable:
            self.add_recon_head(recon)
        self.apply_dtype(config.torch_dtype)
        self.apply_freeze()
        self.backbone.set_gradient_checkpointing(config.gradient_checkpointing)

    def add_recon_head(self, recon) -> None:
        """Attach a freshly initialised reconstruction head (trains in full, kept in float32)."""
        device = next(self.backbone.parameters()).device
        self.recon_config = recon
        self.recon_head = ReconHead(recon, self.config).to(device)

    # -- set-up ------------------------------------------------------------------------------------
    def _init_embeddings(self) -> None:
        emb = self.backbone.vlm.embed_tokens
        if emb.weight.device.type != "meta":
            nn.init.normal_(emb.weight, std=1.0 / math.sqrt(emb.weight.shape[1]))

    def float32_modules(self) -> list[nn.Module]:
        """Modules the reference keeps in float32 under bf16: patch/position embeddings, norms,
        and the projections around the action expert."""
        keep = [self.backbone.vision.patch_embed, self.backbone.vision.pos_embed,
                self.action_in_proj, self.action_out_proj]
        keep += [getattr(self, name) for name in ("state_proj", "action_time_mlp_in", "action_time_mlp_out",
                                                  "time_mlp_in", "time_mlp_out") if hasattr(self, name)]
        keep += [m for m in self.modules() if isinstance(m, (RMSNorm, AdaRMSNorm, FP32LayerNorm))]
        if self.recon_head is not None:
            keep.append(self.recon_head)
        return keep

    def apply_dtype(self, dtype: torch.dtype) -> "Pi0Policy":
        """Cast the backbone's big matrices to `dtype`, keeping the float32 modules in float32 (how
        the model is built and loaded; where and how it computes is `pirecon.model.placement`'s)."""
        self.backbone.to(dtype)
        for module in self.float32_modules():
            module.float()
        return self

    def apply_freeze(self) -> None:
        """`freeze_vision_encoder` freezes SigLIP; `train_expert_only` freezes the whole VLM side."""
        if self.config.freeze_vision_encoder or self.config.train_expert_only:
            self.backbone.vision.requires_grad_(False)
        if self.config.train_expert_only:
            self.backbone.projector.requires_grad_(False)
            self.backbone.vlm.requires_grad_(False)

    # -- embedding --------------------------------------------------------------------------------
    def embed_prefix(self, batch: Batch) -> Prefix:
        """Images (all views, image tokens first) followed by the language tokens."""
        images = batch.images
        b, v = images.shape[:2]
        img = self.backbone.embed_images(images.flatten(0, 1))  # (B*V, N, W)
        n = img.shape[1]
        img = img.reshape(b, v * n, img.shape[-1])
        img_pad = batch.image_masks.bool()[:, :, None].expand(b, v, n).reshape(b, v * n)
        lang = self.backbone.vlm.embed(batch.tokens.long())
        embs = torch.cat([img.to(lang.dtype), lang], dim=1)
        pads = torch.cat([img_pad, batch.token_masks.bool()], dim=1)
        starts = torch.zeros_like(pads, dtype=torch.long)  # the prefix attends bidirectionally
        return Prefix(embs, pads, starts, v * n)

    def embed_suffix(self, state: torch.Tensor, noisy_actions: torch.Tensor, time: torch.Tensor) -> Suffix:
        """state: (B, S), noisy_actions: (B, H, A), time: (B,) or per action token (B, H) -> suffix tokens."""
        b, horizon, _ = noisy_actions.shape
        width = self.config.expert.width
        act = self.action_in_proj(noisy_actions.to(self.action_in_proj.weight.dtype))  # (B, H, W)
        temb = sinusoidal_time_embedding(time, width).to(act.dtype)  # (B, W) or (B, H, W)
        device = act.device
        if self.config.type == "pi0":
            state_tok = self.state_proj(state.to(self.state_proj.weight.dtype))[:, None]  # (B, 1, W)
            per_token = temb if temb.dim() == 3 else temb[:, None].expand(b, horizon, width)
            mixed = torch.cat([act, per_token], dim=-1)
            act = self.action_time_mlp_out(F.silu(self.action_time_mlp_in(mixed)))
            embs = torch.cat([state_tok, act], dim=1)
            # The state token and the first action token each start a block.
            starts = torch.tensor([1, 1] + [0] * (horizon - 1), device=device)
            cond = None
        else:
            embs = act
            starts = torch.tensor([1] + [0] * (horizon - 1), device=device)
            cond = F.silu(self.time_mlp_out(F.silu(self.time_mlp_in(temb))))
        pads = torch.ones(b, embs.shape[1], dtype=torch.bool, device=device)
        expert_dtype = self.backbone.expert.layers[0].q_proj.weight.dtype
        return Suffix(embs.to(expert_dtype), pads, starts[None].expand(b, -1), cond)

    # -- forward passes ----------------------------------------------------------------------------
    def _rtc_target(self, prefix_actions: torch.Tensor, delay: int, execution_horizon: int | None,
                    x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(target Y (B, H, A) zero-padded, soft mask W (H,)) of real-time chunking."""
        horizon = self.config.chunk_size
        length = prefix_actions.shape[1]
        if prefix_actions.dim() != 3 or prefix_actions.shape[0] != x.shape[0] or not 0 < length <= horizon:
            raise InputError(f"prefix_actions has shape {tuple(prefix_actions.shape)}; expected (batch {x.shape[0]}, "
                             f"1..{horizon} steps, action dims)")
        s = horizon - length if execution_horizon is None else execution_horizon
        if not 0 <= delay <= length or not 0 <= s < horizon:
            raise InputError(f"inference_delay={delay}, execution_horizon={s}: expected 0 <= delay <= "
                             f"{length} (the previous actions given) and 0 <= execution_horizon < {horizon}")
        target = torch.zeros_like(x)
        width = min(prefix_actions.shape[2], x.shape[2])
        target[:, :length, :width] = prefix_actions[:, :, :width].to(x.device, x.dtype)
        return target, rtc.soft_mask(horizon, delay, s, length)

    def _trained_prefix(self, prefix_actions: torch.Tensor, delay: int, execution_horizon: int | None,
                        x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(target (B, H, A) zero-padded, clean (H,) bool) for rtc_mode="trained"; None for delay 0."""
        max_delay = self.config.rtc_training_max_delay
        if max_delay <= 0:
            raise InputError("rtc_mode='trained' conditions on a clean action prefix, which this policy never "
                             "learnt (rtc_training_max_delay=0); use rtc_mode='guided' or a policy trained with "
                             "--policy.rtc_training_max_delay > 0")
        if execution_horizon is not None:
            raise InputError(f"execution_horizon={execution_horizon}: the trained mode keeps the first "
                             f"inference_delay actions and has no execution horizon (guided mode's soft mask)")
        horizon = self.config.chunk_size
        length = prefix_actions.shape[1] if prefix_actions.dim() == 3 else 0
        if prefix_actions.dim() != 3 or prefix_actions.shape[0] != x.shape[0] or not 0 < length <= horizon:
            raise InputError(f"prefix_actions has shape {tuple(prefix_actions.shape)}; expected (batch {x.shape[0]}, "
                             f"1..{horizon} steps, action dims)")
        if not 0 <= delay <= min(length, max_delay):
            raise InputError(f"inference_delay={delay}: expected 0 <= delay <= {min(length, max_delay)} (the "
                             f"{length} previous actions given; the policy was trained with delays up to "
                             f"rtc_training_max_delay={max_delay})")
        if delay == 0:
            return None
        target = torch.zeros_like(x)
        width = min(prefix_actions.shape[2], x.shape[2])
        target[:, :delay, :width] = prefix_actions[:, :delay, :width].to(x.device, x.dtype)
        return target, torch.arange(horizon, device=x.device) < delay

    def _pad_to(self, x: torch.Tensor, width: int) -> torch.Tensor:
        return F.pad(x, (0, width - x.shape[-1])) if x.shape[-1] < width else x

    def velocity_joint(self, prefix: Prefix, state: torch.Tensor, x_t: torch.Tensor, time: torch.Tensor):
        """One joint pass (training): returns (v_t (B, H, A) float32, prefix_out (B, Lp, Wvlm))."""
        suffix = self.embed_suffix(state, x_t, time)
        pads = torch.cat([prefix.pad_masks, suffix.pad_masks], dim=1)
        starts = torch.cat([prefix.block_starts, suffix.block_starts], dim=1)
        mask = make_attention_mask(pads, starts)
        prefix_out, suffix_out, _ = self.backbone(prefix.embs, suffix.embs, mask, position_ids(pads),
                                                  adarms_cond=suffix.adarms_cond)
        horizon = x_t.shape[1]
        v_t = self.action_out_proj(suffix_out[:, -horizon:].to(self.action_out_proj.weight.dtype))
        return v_t.float(), prefix_out

    def prefix_cache(self, prefix: Prefix) -> KVCache:
        """Run the prefix alone and return its per-layer K/V."""
        mask = make_attention_mask(prefix.pad_masks, prefix.block_starts)
        _, _, kv = self.backbone(prefix.embs, None, mask, position_ids(prefix.pad_masks), return_kv=True)
        return kv

    def velocity_cached(self, prefix: Prefix, kv: KVCache, state: torch.Tensor, x_t: torch.Tensor,
                        time: torch.Tensor) -> torch.Tensor:
        """The suffix against a cached prefix: returns v_t (B, H, A) float32."""
        suffix = self.embed_suffix(state, x_t, time)
        b, ls = suffix.pad_masks.shape
        to_prefix = prefix.pad_masks[:, None, :].expand(b, ls, prefix.pad_masks.shape[1])
        mask = torch.cat([to_prefix, make_attention_mask(suffix.pad_masks, suffix.block_starts)], dim=2)
        # Suffix positions continue after the number of valid prefix tokens.
        positions = prefix.pad_masks.long().sum(-1, keepdim=True) + position_ids(suffix.pad_masks)
        _, suffix_out, _ = self.backbone(None, suffix.embs, mask, positions, past_kv=kv,
                                         adarms_cond=suffix.adarms_cond)
        horizon = x_t.shape[1]
        return self.action_out_proj(suffix_out[:, -horizon:].to(self.action_out_proj.weight.dtype)).float()

    # -- public API --------------------------------------------------------------------------------
    def sample_time(self, batch_size: int, device) -> torch.Tensor:
        """t = Beta(1.5, 1.0) * 0.999 + 0.001, (B,)."""
        beta = torch.distributions.Beta(torch.tensor(self.config.time_beta_alpha),
                                        torch.tensor(self.config.time_beta_beta))
        return (beta.sample((batch_size,)) * 0.999 + 0.001).to(device)

    def sample_delays(self, batch_size: int, device, generator: torch.Generator | None = None) -> torch.Tensor:
        """Training-time real-time chunking: one delay per example, uniform in 0 .. rtc_training_max_delay
        (as LeRobot samples it), (B,) int64 on `device`."""
        return rtc.sample_delays(batch_size, self.config.rtc_training_max_delay, generator).to(device)

    def compute_loss(self, batch: Batch, noise: torch.Tensor | None = None, time: torch.Tensor | None = None,
                     recon_weight: float | None = None, trim: bool | TrimPlan = True,
                     delays: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Flow-matching loss: with `loss_reduction="real"` averaged over the real action dims and the
        non-padded chunk steps; with "all" over every (padded) dim and step, as openpi averages it.

        Training-time real-time chunking (`rtc_training_max_delay` D > 0, or `delays` (B,) given):
        each example's first d actions (d drawn by `sample_delays` after the noise and time) are
        given clean, at time 0, the others are noised at the example's time, and the loss averages
        over the others only. With D = 0 and no `delays` this is the plain loss, bit for bit.

        Returns {"loss", "action_loss"} (scalars) and "prefix_out" (B, Lp, Wvlm), the VLM's
        normed last-layer states laid out as the full batch's prefix. With a reconstruction head,
        "recon_loss" is computed from those same states (no second backbone pass) and
        loss = action_loss + recon_weight * recon_loss (`recon_weight` defaults to `--recon.weight`;
        the trainer passes its warmed-up value).

        `trim` skips the views every sample masks and the prompt padding past the longest prompt, as
        `sample_actions` does (the loss agrees to float rounding; "prefix_out" has zeros at the
        skipped tokens). True reads the masks on the host (on a GPU that waits for the device), a
        `model.trim.TrimPlan` made from the batch beforehand does not; False computes everything,
        as openpi does (the "reference work").
        """
        cfg = self.config
        batch.validate(cfg)
        if batch.actions is None:
            raise ValueError("compute_loss needs batch.actions")
        real_dim = batch.action_dim or batch.actions.shape[-1]
        actions = self._pad_to(batch.actions.float(), cfg.max_action_dim)
        state = self._pad_to(batch.state.float(), cfg.max_state_dim)
        b = actions.shape[0]
        if noise is None:
            noise = torch.randn_like(actions)
        if time is None:
            time = self.sample_time(b, actions.device)
        if delays is None and cfg.rtc_training_max_delay > 0:
            delays = self.sample_delays(b, actions.device)  # in range by construction: no host check
        elif delays is not None:
            rtc.check_delays(delays, actions.shape[1])
        clean = None if delays is None else rtc.prefix_mask(delays, actions.shape[1])  # (B, H) bool
        if clean is None:
            t = time[:, None, None]
        else:
            time = rtc.per_token_time(time, clean)  # (B, H): 0 on the clean prefix
            t = time[:, :, None]
        x_t = t * noise + (1 - t) * actions
        u_t = noise - actions
        plan = trim_plan(batch.image_masks, batch.token_masks) if trim is True else trim or None
        prefix = self.embed_prefix(apply_plan(batch, plan) if plan else batch)
        v_t, prefix_out = self.velocity_joint(prefix, state, x_t, time)
        num_image_tokens = len(cfg.camera_names) * cfg.tokens_per_image
        if plan:
            prefix_out = untrim_prefix(prefix_out, plan, cfg.tokens_per_image)
        losses = (u_t - v_t) ** 2  # (B, H, A)
        keep = torch.zeros_like(losses, dtype=torch.bool)
        keep[..., :real_dim] = True
        if batch.action_is_pad is not None:
            keep &= ~batch.action_is_pad.bool()[:, :, None]
        if clean is not None:
            keep &= ~clean[:, :, None]
        if cfg.loss_reduction == "all" and clean is not None:
            postfix = (~clean[:, :, None]).expand_as(losses)
            action_loss = (losses * postfix).sum() / postfix.sum().clamp(min=1)
        elif cfg.loss_reduction == "all":
            action_loss = losses.mean()
        else:
            action_loss = (losses * keep).sum() / keep.sum().clamp(min=1)
        out = {"loss": action_loss, "action_loss": action_loss, "prefix_out": prefix_out,
               "num_image_tokens": num_image_tokens}
        if self.recon_head is not None:
            # With train_expert_only the backbone is frozen: the head trains on detached features.
            features = prefix_out.detach() if cfg.train_expert_only else prefix_out
            recon_loss = self.recon_head(features.float(), num_image_tokens, batch)["recon_loss"]
            weight = self.recon_config.weight if recon_weight is None else recon_weight
            out["recon_loss"] = recon_loss
            out["loss"] = action_loss + weight * recon_loss
        return out

    def forward(self, batch: Batch, noise: torch.Tensor | None = None, time: torch.Tensor | None = None,
                recon_weight: float | None = None, trim: bool | TrimPlan = True,
                delays: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Training forward = `compute_loss` (so DDP / PEFT / torch.compile wrappers see it)."""
        return self.compute_loss(batch, noise=noise, time=time, recon_weight=recon_weight, trim=trim, delays=delays)

    @torch.no_grad()
    def sample_actions(self, batch: Batch, noise: torch.Tensor | None = None, num_steps: int | None = None,
                       use_cache: bool = True, prefix_actions: torch.Tensor | None = None, inference_delay: int = 0,
                       execution_horizon: int | None = None,
                       max_guidance_weight: float = rtc.DEFAULT_MAX_GUIDANCE, trim: bool = True,
                       rtc_mode: str = "guided") -> torch.Tensor:
        """Euler integration of the learned velocity from t=1 (noise) to t=0.

        Returns (B, chunk_size, action_dim) float32, normalised, cut to `batch.action_dim`.
        `use_cache=False` recomputes the prefix at every step (for testing the cache).

        Real-time chunking (model/rtc.py): `prefix_actions` (B, P, a) are the previous chunk's
        actions still to run, aligned to this chunk's first step (normalised, as this returns
        them); the first `inference_delay` are executed while this chunk is computed, and
        `execution_horizon` (default: the chunk minus P) is the paper's s. Without them the
        sampling is the plain one. `rtc_mode` (LeRobot's `rtc.mode`): "guided" steers the sample
        toward them by guidance; "trained", for a policy trained with rtc_training_max_delay D > 0,
        fixes the first `inference_delay` (<= D) actions to `prefix_actions` at time 0 in every step
        (their values are returned exactly) and needs no guidance, nor `execution_horizon`.

        `trim` skips what every sample of the batch masks (camera views without an image, prompt
        padding past the longest prompt): attention never reads those tokens and positions count
        real tokens only, so the result is the same up to float rounding; `trim=False` computes
        everything, as openpi does (the "reference work" the benchmarks compare against).

        `--policy.compile_model` runs the denoising step (the suffix against the cached prefix)
        through `torch.compile` with `--policy.compile_mode`: compiled once, reused at every step
        and call of the same shapes.
        """
        cfg = self.config
        batch.validate(cfg)
        if rtc_mode not in rtc.MODES:
            raise InputError(f"rtc_mode={rtc_mode!r}: expected one of {list(rtc.MODES)}")
        steps = num_steps or cfg.num_inference_steps
        b = batch.batch_size
        device = batch.images.device
        state = self._pad_to(batch.state.float(), cfg.max_state_dim)
        x = noise.float() if noise is not None else torch.randn(b, cfg.chunk_size, cfg.max_action_dim, device=device)
        prefix = self.embed_prefix(trimmed(batch) if trim else batch)
        kv = self.prefix_cache(prefix) if use_cache else None
        velocity_cached = self.velocity_cached
        if cfg.compile_model:  # the denoising step, run `steps` times, through torch.compile
            velocity_cached = functools.partial(compiled_velocity_cached(cfg.compile_mode), self)
        guide = hard = None
        if prefix_actions is not None and rtc_mode == "trained":
            hard = self._trained_prefix(prefix_actions, inference_delay, execution_horizon, x)
        elif prefix_actions is not None:
            guide = self._rtc_target(prefix_actions, inference_delay, execution_horizon, x)
        dt = -1.0 / steps
        for step in range(steps):
            time = torch.full((b,), 1.0 + step * dt, device=device)
            if hard is not None:  # the clean prefix, at time 0
                x = torch.where(hard[1][None, :, None], hard[0], x)
                time = rtc.per_token_time(time, hard[1].expand(b, -1))

            def velocity(x_t: torch.Tensor, time=time) -> torch.Tensor:
                if use_cache:
                    return velocity_cached(prefix, kv, state, x_t, time)
                return self.velocity_joint(prefix, state, x_t, time)[0]
            if guide is None:
                v = velocity(x)
            else:
                v = rtc.guided_velocity(velocity, x, 1.0 + step * dt, *guide, max_guidance_weight)
            x = x + dt * v
        if hard is not None:
            x = torch.where(hard[1][None, :, None], hard[0], x)
        return x[..., :batch.action_dim or cfg.max_action_dim]
