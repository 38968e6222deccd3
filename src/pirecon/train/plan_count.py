"""Counting for `pirecon plan`: the bytes and FLOPs of one training step and of one
`sample_actions` call, from the real model and from passes over tensors that hold no data.

- The model is built as `pirecon train` builds it (Pi0Policy; LoRA as `train/peft_plan.py` plans
  it; dtypes as `model/placement.py` sets them for training) on the `meta` device: the weights,
  their dtypes and which of them train are exact and cost no memory.
- Its parameters then become FakeTensors on the CPU (shapes and dtypes, no data) and the step runs
  as the Trainer runs it: the forward under bfloat16 autocast (with --policy.dtype=bfloat16), the
  backward, gradient clipping, the optimizer step. `MemoryTracker`, a dispatch mode, follows every
  storage from its allocation to its release (live bytes by category, and what is live at the peak
  of each phase) and adds up the FLOPs of the matrix products, convolutions and attention with
  torch.utils.flop_counter's formulas.
- The Gemma and SigLIP layers repeat, so a pass runs with a few of them and every count is
  extrapolated linearly to the model's depth: sums (FLOPs, the bytes a forward saves) from
  (1, 1), (2, 1) and (1, 2) Gemma and SigLIP layers, peaks from (2, 2), (3, 2) and (2, 3) (with one
  layer the backward's peak falls elsewhere than with several). A model that small (tiny) is
  counted directly; tests/train/test_plan.py holds the extrapolation to a direct count.

A `Target` says how the counted device computes. A GPU (or a CPU with bfloat16 arithmetic) runs
bfloat16 kernels, and on CUDA the Trainer's fused AdamW and PyTorch's multi-tensor gradient
clipping; a CPU without bfloat16 arithmetic multiplies frozen bfloat16 layers in float32
(`model/cpu_bf16.py`: transient float32 copies) and steps the optimizer one tensor at a time.
The counted batch holds every view and the whole prompt, so the Trainer's trimming (views no sample
has, padding past the longest prompt) would cut nothing: the pass runs untrimmed. Attention runs PyTorch's fused CPU
kernel, which keeps what CUDA's memory-efficient kernel keeps (the output and the log-sum-exp,
never the attention matrix).
"""

from __future__ import annotations

import contextlib
import dataclasses
import weakref
from collections import defaultdict
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
from torch.utils import flop_counter
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from pirecon.batch import Batch
from pirecon.checkpoint.keys import lerobot_module_name
from pirecon.configs.policy import PolicyConfig
from pirecon.configs.train import OptimizerConfig, PeftConfig
from pirecon.model import cpu_bf16, lora, placement
from pirecon.model.pi0 import Pi0Policy
from pirecon.train.peft_plan import lora_plan
from pirecon.train.steps import make_optimizer

aten = torch.ops.aten
# PyTorch's FLOP formulas, plus its fused CPU attention (absent from flop_counter's registry).
FLOP_FORMULAS = {**flop_counter.flop_registry,
                 aten._scaled_dot_product_flash_attention_for_cpu: flop_counter.sdpa_flop,
                 aten._scaled_dot_product_flash_attention_for_cpu_backward: flop_counter.sdpa_backward_flop}
# (Gemma layers, SigLIP layers) of the passes a count is extrapolated from: (base, one more Gemma, one more SigLIP).
SUM_LAYERS = ((1, 1), (2, 1), (1, 2))
PEAK_LAYERS = ((2, 2), (3, 2), (2, 3))
TOKEN_STEP = 8  # prompt tokens removed to measure the activations per prompt token

Counts = dict[str, float]


@dataclass(frozen=True)
class Target:
    """How the counted device computes."""

    native_bf16: bool  # bfloat16 kernels (GPU, or a CPU with AVX512-BF16 / AMX); False: float32 products
    device: str  # the device the Trainer's choices follow: "cuda" (fused AdamW, multi-tensor clipping) or "cpu"


GPU = Target(native_bf16=True, device="cuda")


def this_cpu() -> Target:
    return Target(native_bf16=cpu_bf16.cpu_has_bf16_arithmetic(), device="cpu")


@dataclass(frozen=True)
class StepSpec:
    """One optimizer step of `pirecon train`, as far as it shapes memory and FLOPs."""

    batch_size: int
    grad_accum_steps: int
    optimizer: OptimizerConfig
    ema: bool
    gradient_checkpointing: bool


# ---------------------------------------------------------------------------------------------
# The model


def build_model(policy_cfg: PolicyConfig, peft: PeftConfig | None, train: bool) -> nn.Module:
    """The policy on `meta`: for training as the Trainer builds it (LoRA from the plan, trainable
    weights in float32, the others in --policy.dtype), for serving as it is loaded."""
    with torch.device("meta"):
        policy = Pi0Policy(policy_cfg)
        model = policy
        if train and policy_cfg.use_peft:
            model = lora.add_lora(policy, lora_plan(policy, peft or PeftConfig(), lerobot_module_name),
                                  peft or PeftConfig())
    if train:
        placement.place(model, "meta", policy_cfg.torch_dtype, train=True, full_bf16=policy_cfg.full_bf16)
    return model


def nbytes(tensors) -> int:
    """Bytes of the distinct storages behind `tensors`."""
    seen = {}
    for t in tensors:
        seen[id(t.untyped_storage())] = t.untyped_storage().nbytes()
    return sum(seen.values())


@dataclass(frozen=True)
class Weights:
    """What the model holds before any pass, from the full-size meta model."""

    params: int  # parameter count
    trainable_params: int
    bytes: int  # parameters and buffers
    trainable_bytes: int
    frozen_bytes_by_dtype: dict[str, int]
    bytes_by_dtype: dict[str, int]  # every parameter
    fsdp_root_bytes: int  # weights outside the per-layer FSDP units (embeddings, projections, norms)
    fsdp_unit_bytes: int  # the largest unit: one VLM + expert layer pair, or one SigLIP layer
    fsdp_unit_trainable_bytes: int
    prefix_read_bytes: int  # weights the prefix pass reads (vision, projector, VLM layers)
    step_read_bytes: int  # weights each denoising step reads (expert layers, projections around it)

    @classmethod
    def of(cls, model: nn.Module) -> "Weights":
        policy = lora.base_policy(model)
        params = list(model.parameters())
        trainable = [p for p in params if p.requires_grad]
        frozen: dict[str, int] = defaultdict(int)
        every: dict[str, int] = defaultdict(int)
        for p in params:
            every[str(p.dtype).replace("torch.", "")] += p.nbytes
            if not p.requires_grad:
                frozen[str(p.dtype).replace("torch.", "")] += p.nbytes
        bb = policy.backbone
        units = [list(v.parameters()) + list(e.parameters()) for v, e in zip(bb.vlm.layers, bb.expert.layers)]
        units += [list(layer.parameters()) for layer in bb.vision.layers]
        biggest = max(units, key=lambda u: sum(p.nbytes for p in u), default=[])
        total = sum(p.nbytes for p in params) + sum(b.nbytes for b in model.buffers())
        expert_side = [bb.expert] + [m for m in (getattr(policy, n, None) for n in (
            "action_in_proj", "action_out_proj", "state_proj", "action_time_mlp_in", "action_time_mlp_out",
            "time_mlp_in", "time_mlp_out")) if m is not None]
        return cls(params=sum(p.numel() for p in params), trainable_params=sum(p.numel() for p in trainable),
                   bytes=total, trainable_bytes=sum(p.nbytes for p in trainable), frozen_bytes_by_dtype=dict(frozen),
                   bytes_by_dtype=dict(every),
                   fsdp_root_bytes=total - sum(p.nbytes for u in units for p in u),
                   fsdp_unit_bytes=sum(p.nbytes for p in biggest),
                   fsdp_unit_trainable_bytes=sum(p.nbytes for p in biggest if p.requires_grad),
                   prefix_read_bytes=sum(p.nbytes for m in (bb.vision, bb.projector, bb.vlm.layers)
                                         for p in m.parameters()),
                   step_read_bytes=sum(p.nbytes for m in expert_side for p in m.parameters()))


def layer_counts(policy: Pi0Policy) -> tuple[int, int]:
    bb = policy.backbone
    return len(bb.vlm.layers), len(bb.vision.layers)


@contextlib.contextmanager
def shallow(policy: Pi0Policy, gemma_layers: int, vision_layers: int):
    """The policy with only its first Gemma layer pairs and SigLIP layers, for the block."""
    bb = policy.backbone
    kept = bb.vlm.layers, bb.expert.layers, bb.vision.layers
    bb.vlm.layers = nn.ModuleList(list(kept[0])[:gemma_layers])
    bb.expert.layers = nn.ModuleList(list(kept[1])[:gemma_layers])
    bb.vision.layers = nn.ModuleList(list(kept[2])[:vision_layers])
    try:
        yield
    finally:
        bb.vlm.layers, bb.expert.layers, bb.vision.layers = kept


@contextlib.contextmanager
def with_views(policy: Pi0Policy, views: int):
    """The policy taking `views` camera views (its config's names cut or extended), for the block."""
    names = tuple(policy.config.camera_names)
    names = names[:views] + tuple(f"plan_view_{i}" for i in range(views - len(names)))
    kept = policy.config
    policy.config = dataclasses.replace(kept, camera_names=names)
    try:
        yield
    finally:
        policy.config = kept


def fake_parameters(model: nn.Module, mode: FakeTensorMode) -> None:
    """Replace every parameter and buffer of `model` that is not one yet by a FakeTensor of its
    shape and dtype on the CPU (shared ones stay shared; trainability is kept)."""
    made: dict[int, torch.Tensor] = {}
    with mode:
        for module in model.modules():
            for store in (module._parameters, module._buffers):
                for name, t in store.items():
                    if t is None or isinstance(t, FakeTensor):
                        continue
                    if id(t) not in made:
                        fake = torch.empty(t.shape, dtype=t.dtype)
                        made[id(t)] = nn.Parameter(fake, requires_grad=t.requires_grad) \
                            if isinstance(t, nn.Parameter) else fake
                    store[name] = made[id(t)]


# ---------------------------------------------------------------------------------------------
# The tracker


class MemoryTracker(TorchDispatchMode):
    """Live bytes by category (storages created while `category` was current, until released),
    what is live at each phase's peak, and the FLOPs of each phase."""

    def __init__(self):
        super().__init__()
        self.live: dict[str, int] = defaultdict(int)
        self.total = 0
        self.records: dict[int, list] = {}
        self.category = "temporary"
        self.phase = "setup"
        self.peaks: dict[str, dict[str, int]] = {}
        self.flops: dict[str, int] = defaultdict(int)

    def hold(self, tensors, category: str) -> None:
        """Count tensors that exist already (weights, optimizer state, inputs) under `category`."""
        for t in tensors:
            self._add(t, category)

    def recategorize(self, t: torch.Tensor, category: str) -> None:
        record = self.records.get(id(t.untyped_storage()))
        if record is not None and record[1] != category:
            self.live[record[1]] -= record[0]
            self.live[category] += record[0]
            record[1] = category

    def _add(self, t: torch.Tensor, category: str) -> None:
        storage = t.untyped_storage()
        key = id(storage)
        if key in self.records:
            return
        record = [storage.nbytes(), category]
        self.records[key] = record
        weakref.finalize(storage, self._release, key, record)
        self.live[category] += record[0]
        self.total += record[0]
        if self.total > self.peaks.get(self.phase, {}).get("total", -1):
            self.peaks[self.phase] = {"total": self.total, **self.live}

    def _release(self, key: int, record: list) -> None:
        self.records.pop(key, None)
        self.live[record[1]] -= record[0]
        self.total -= record[0]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = FLOP_FORMULAS.get(func.overloadpacket)
        if formula is not None:
            self.flops[self.phase] += formula(*args, **kwargs, out_val=out)
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self._add(t, self.category)
        return out


def _inputs(cfg: PolicyConfig, batch_size: int, views: int, tokens: int, train: bool):
    """A batch of zeros of the shapes the data loader gives (every view, the padded prompt), the
    flow-matching noise and time (inside a fake mode: no data)."""
    b, r = batch_size, cfg.image_resolution
    batch = Batch(images=torch.zeros(b, views, 3, r, r), image_masks=torch.ones(b, views, dtype=torch.bool),
                  tokens=torch.zeros(b, tokens, dtype=torch.long), token_masks=torch.ones(b, tokens, dtype=torch.bool),
                  state=torch.zeros(b, cfg.max_state_dim),
                  actions=torch.zeros(b, cfg.chunk_size, cfg.max_action_dim) if train else None,
                  action_is_pad=torch.zeros(b, cfg.chunk_size, dtype=torch.bool) if train else None,
                  action_dim=cfg.max_action_dim)
    return batch, torch.zeros(b, cfg.chunk_size, cfg.max_action_dim), torch.full((b,), 0.5)


def _batch_tensors(batch: Batch, *more) -> list[torch.Tensor]:
    found = [getattr(batch, f.name) for f in dataclasses.fields(batch)]
    return [t for t in (*found, *more) if isinstance(t, torch.Tensor)]


def extrapolate(counted: list[Counts], depths: tuple, gemma_layers: int, vision_layers: int) -> Counts:
    """Counts at (g, s) layers from those at `depths` (base, one more Gemma layer, one more SigLIP
    layer), linearly in each kind of layer."""
    base, more_gemma, more_vision = counted
    (g0, s0), (g1, _), (_, s1) = depths
    keys = set(base) | set(more_gemma) | set(more_vision)
    return {k: base.get(k, 0) + (more_gemma.get(k, 0) - base.get(k, 0)) * (gemma_layers - g0) / (g1 - g0)
            + (more_vision.get(k, 0) - base.get(k, 0)) * (vision_layers - s0) / (s1 - s0) for k in keys}


# ---------------------------------------------------------------------------------------------
# The counts of one model


class ModelCount:
    """The counts of one model (policy config, LoRA settings, training or serving) on a target."""

    def __init__(self, policy_cfg: PolicyConfig, peft: PeftConfig | None, target: Target, train: bool = True):
        self.cfg, self.target, self.train = policy_cfg, target, train
        self.model = build_model(policy_cfg, peft, train)
        self.policy = lora.base_policy(self.model)
        self.weights = Weights.of(self.model)
        self.layers = layer_counts(self.policy)
        self.fake = FakeTensorMode()
        deepest = max(n for depths in (SUM_LAYERS, PEAK_LAYERS) for depth in depths for n in depth)
        with shallow(self.policy, deepest, deepest):  # the layers no pass runs stay on meta
            fake_parameters(self.model, self.fake)
        decision = placement.decide_placement("cpu", policy_cfg.torch_dtype, cpu_has_bf16=target.native_bf16)
        if decision.float32_products:
            cpu_bf16.route_frozen_bf16_linears(self.model)
        self._cache: dict = {}

    def counted(self, key, run: Callable[[], Counts], depths: tuple = PEAK_LAYERS) -> Counts:
        """`run()` at the model's depth: extrapolated from passes at `depths`, or directly when
        the model is no deeper than those passes."""
        if key not in self._cache:
            g, s = self.layers
            if g <= depths[1][0] and s <= depths[2][1]:
                self._cache[key] = self.direct(run)
            else:
                self._cache[key] = self.extrapolated(run, depths, g, s)
        return self._cache[key]

    def direct(self, run: Callable[[], Counts]) -> Counts:
        """`run()` on the whole model."""
        fake_parameters(self.model, self.fake)
        return self._run(run)

    def extrapolated(self, run: Callable[[], Counts], depths: tuple, gemma_layers: int, vision_layers: int) -> Counts:
        """`run()` at `depths`, extrapolated to (gemma_layers, vision_layers)."""
        found = []
        for depth in depths:
            with shallow(self.policy, *depth):
                found.append(self._run(run))
        return extrapolate(found, depths, gemma_layers, vision_layers)

    def _run(self, run: Callable[[], Counts]) -> Counts:
        with self.fake, cpu_bf16.assume_bf16_arithmetic(self.target.native_bf16):
            return run()

    # -- training --------------------------------------------------------------------------------
    def step(self, spec: StepSpec) -> Counts:
        """One optimizer step: `weights`, `optimizer`, `ema`, `gradients`, `saved` (activations
        at the end of the first forward), `peak.<phase>.<category>` for the phases forward,
        backward and optimizer, and `flops.forward` / `flops.backward` per micro-step."""
        return self.counted(("step", spec), lambda: self.count_step(spec))

    def saved(self, spec: StepSpec, views: int | None = None, tokens: int | None = None) -> float:
        """Bytes the forward of `spec` leaves for the backward (with `views` camera views and
        `tokens` prompt tokens instead of the config's)."""
        views = views or len(self.cfg.camera_names)
        tokens = tokens or self.cfg.max_token_len
        return self.counted(("saved", spec, views, tokens),
                            lambda: self.count_step(spec, views, tokens, forward_only=True), SUM_LAYERS)["saved"]

    def count_step(self, spec: StepSpec, views: int | None = None, tokens: int | None = None,
                   forward_only: bool = False) -> Counts:
        """One pass of `spec` over the model as it is now (`step` counts at the model's depth)."""
        cfg, model = self.cfg, self.model
        views = views or len(cfg.camera_names)
        self.policy.backbone.set_gradient_checkpointing(spec.gradient_checkpointing)
        model.train()
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = make_optimizer(spec.optimizer, trainable, self.target.device)
        if not forward_only and trainable:  # the optimizer's state exists from the first step on
            for p in trainable:
                p.grad = torch.zeros_like(p)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        shadow = [p.detach().float().clone() for p in trainable] if spec.ema else []
        tracker = MemoryTracker()
        tracker.hold(list(model.parameters()) + list(model.buffers()), "weights")
        tracker.hold([t for state in optimizer.state.values() for t in state.values()
                      if isinstance(t, torch.Tensor)], "optimizer")
        tracker.hold(shadow, "ema")
        with contextlib.ExitStack() as stack:
            hooks = [p.register_post_accumulate_grad_hook(lambda p: tracker.recategorize(p.grad, "gradients"))
                     for p in trainable]
            stack.callback(lambda: [h.remove() for h in hooks])
            batch, noise, time = _inputs(cfg, spec.batch_size, views, tokens or cfg.max_token_len, train=True)
            with with_views(self.policy, views):
                counts = self._tracked_step(spec, tracker, batch, noise, time, trainable, optimizer, shadow,
                                            forward_only)
        return counts

    def _tracked_step(self, spec, tracker, batch, noise, time, trainable, optimizer, shadow, forward_only) -> Counts:
        tracker.hold(_batch_tensors(batch, noise, time), "inputs")
        counts: Counts = {name: tracker.live[name] for name in ("weights", "optimizer", "ema", "inputs")}
        autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.cfg.torch_dtype == torch.bfloat16)
        micro_steps = min(spec.grad_accum_steps, 2)  # the second one runs beside the first one's gradients
        out = None
        with tracker:
            for micro in range(1 if forward_only else micro_steps):
                tracker.phase, tracker.category = "forward", "activations"
                with autocast:
                    out = self.model(batch, noise=noise, time=time, trim=False)
                if micro == 0:
                    counts["saved"] = tracker.live["activations"]
                if forward_only:
                    break
                tracker.phase, tracker.category = "backward", "temporary"
                (out["loss"] / spec.grad_accum_steps).backward()
            del out
            if not forward_only:
                counts["gradients"] = nbytes(p.grad for p in trainable if p.grad is not None)
                tracker.phase = "optimizer"
                clip = spec.optimizer.grad_clip_norm
                if trainable:
                    nn.utils.clip_grad_norm_(trainable, clip if clip > 0 else float("inf"),
                                             foreach=self.target.device == "cuda")
                optimizer.step()
                with torch.no_grad():
                    for value, p in zip(shadow, trainable):
                        value.mul_(0.999).add_(p.detach().float(), alpha=0.001)
                optimizer.zero_grad(set_to_none=True)
        for phase, peak in tracker.peaks.items():
            counts.update({f"peak.{phase}.{k}": v for k, v in peak.items()})
        micro = 1 if forward_only else micro_steps
        counts["flops.forward"] = tracker.flops["forward"] / micro
        counts["flops.backward"] = tracker.flops["backward"] / micro
        return counts

    # -- serving -----------------------------------------------------------------------------------
    def serve(self, views: int | None = None, tokens: int | None = None, peaks: bool = True) -> Counts:
        """One `sample_actions` call at batch 1 with every view and the padded prompt: `weights`,
        `kv_cache`, `peak.<prefix|denoise>.<category>`, `flops.prefix`, `flops.denoise` (all
        --policy.num_inference_steps steps). `peaks=False`: only the sums (FLOPs, KV cache) are needed."""
        views = views or len(self.cfg.camera_names)
        tokens = tokens or self.cfg.max_token_len
        return self.counted(("serve", views, tokens, peaks), lambda: self.count_serve(views, tokens),
                            PEAK_LAYERS if peaks else SUM_LAYERS)

    def count_serve(self, views: int, tokens: int) -> Counts:
        """One `sample_actions` pass over the model as it is now (`serve` counts at its depth)."""
        policy = self.policy
        policy.eval()
        tracker = MemoryTracker()
        tracker.hold(list(policy.parameters()) + list(policy.buffers()), "weights")
        batch, noise, _ = _inputs(self.cfg, 1, views, tokens, train=False)
        tracker.hold(_batch_tensors(batch, noise), "inputs")
        counts: Counts = {"weights": tracker.live["weights"]}
        prefix_cache = policy.prefix_cache

        def cached(prefix):
            kv = prefix_cache(prefix)
            counts["kv_cache"] = nbytes(t for pair in kv for t in pair)
            tracker.phase = "denoise"
            return kv

        policy.prefix_cache = cached
        try:
            with with_views(policy, views), tracker:
                tracker.phase, tracker.category = "prefix", "activations"
                # Every denoising step runs the same shapes: one is counted, the FLOPs times the steps.
                policy.sample_actions(batch, noise=noise, trim=False, num_steps=1)
        finally:
            del policy.prefix_cache
        for phase, peak in tracker.peaks.items():
            counts.update({f"peak.{phase}.{k}": v for k, v in peak.items()})
        counts["flops.prefix"] = tracker.flops["prefix"]
        counts["flops.denoise"] = tracker.flops["denoise"] * self.cfg.num_inference_steps
        return counts
