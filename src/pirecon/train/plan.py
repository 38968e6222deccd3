"""`pirecon plan`: will a `pirecon train` (or `pirecon serve`) run fit on a GPU, and how long
will it take? The counts come from `train/plan_count.py`; this module turns them into memory per
process, time per step or request, a verdict, and the cheapest changes that make a run fit.

What the plan assumes about a GPU (docs/lora-and-memory.md says the same): PyTorch's caching
allocator holds `ALLOCATOR_RESERVE` more than the tensors it serves at the peak, and the CUDA
context with cuBLAS/cuDNN takes `CUDA_CONTEXT`; communication between processes and data loading
take no time; the step time is the matrix-product FLOPs over the GPU's dense peak times
`--plan.utilization`. These are predictions until measured on the GPU. On a CPU (`--plan.gpu=cpu`)
the plan adds what this process holds before it counts (Python, torch and the libraries: the
baseline of a pirecon process) and the library code a first pass pages in (`CPU_KERNEL_CODE`), and
compares with the machine's RAM.

Under FSDP (`--plan.fsdp=true`) each process holds 1/N of the weights, gradients and optimizer
states, plus the unsharded weights outside the per-layer units (embeddings, projections, norms;
the root unit) and two layer units at a time (the one computing and the one prefetched), and the
unsharded gradients of two units before they are reduce-scattered. Under DDP (several processes
without FSDP) each process also holds DDP's gradient buckets, a copy of the gradients.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from pirecon.checkpoint.folder_config import read_recon_config
from pirecon.configs.parse import to_dict
from pirecon.configs.plan import GpuSpec, PlanConfig
from pirecon.configs.policy import PolicyConfig
from pirecon.configs.recon import merge_recon_with_folder
from pirecon.configs.train import PeftConfig, TrainConfig, resolve_optimization
from pirecon.errors import ConfigError
from pirecon.train import fsdp
from pirecon.train.loop import run_policy_config
from pirecon.train.plan_count import GPU, TOKEN_STEP, ModelCount, StepSpec, this_cpu

GiB = 2 ** 30
ALLOCATOR_RESERVE = 0.10  # the caching allocator's blocks beyond the live tensors at the peak (fragmentation)
CUDA_CONTEXT = 0.5 * GiB  # CUDA context, cuBLAS / cuDNN workspaces and kernels of one process
# On a CPU the first pass pages in the library code of its kernels (oneDNN, MKL, autograd), which
# counts in the resident memory: measured with torch 2.13 on x86 (benchmarks/plan.py, tiny models).
CPU_KERNEL_CODE = {"train": 96 * 2 ** 20, "serve": 32 * 2 ** 20}
PHASES = ("forward", "backward", "optimizer")
# The policy fields a served request depends on (the others shape training only).
SERVE_POLICY_FIELDS = ("type", "variant", "vision_variant", "paligemma_variant", "action_expert_variant", "chunk_size",
                       "n_action_steps", "max_state_dim", "max_action_dim", "num_inference_steps",
                       "tokenizer_max_length", "image_resolution", "camera_names", "empty_cameras", "dtype", "device",
                       "pretrained_path", "path", "tokenizer_path", "normalization_mode", "normalization_mapping",
                       "use_dataset_stats", "asset_id")
FSDP_OPTIONS = (2, 4, 8, 16)


@dataclass(frozen=True)
class Setting:
    """What one training estimate counts."""

    policy: PolicyConfig
    peft: PeftConfig
    step: StepSpec
    processes: int
    fsdp: bool
    shardable: bool = True  # FSDP can take this run


class Budget:
    """What a plan's memory comes to: `at_peak` (part -> bytes), `needed` and `capacity` in bytes."""

    at_peak: dict[str, float]
    needed: float
    capacity: float

    @property
    def peak(self) -> float:
        return sum(self.at_peak.values())

    @property
    def fits(self) -> bool:
        return self.needed <= self.capacity


@dataclass
class Estimate(Budget):
    """Memory per process (bytes) and FLOPs of one setting on the target."""

    setting: Setting
    at_peak: dict[str, float]  # what is live at the peak, by category; sums to the peak
    sizes: dict[str, float]  # each category on its own: all gradients, the activations saved by the forward, ...
    phase: str  # where the peak falls
    needed: float  # the peak with the allocator reserve and the CUDA context (GPU) or the process baseline (CPU)
    capacity: float
    flops_forward: float  # per micro-step (the whole per-process batch)
    flops_backward: float


@dataclass
class Suggestion:
    flags: list[str]
    why: str
    estimate: Estimate


@dataclass
class TrainPlan:
    estimate: Estimate
    weights: object  # plan_count.Weights of the planned model
    saved_other: float  # activations saved by the forward with the other gradient-checkpointing setting
    per_view: float
    per_token: float
    sample_flops: tuple[float, float]  # (prefix, all denoising steps) of one sample_actions call
    suggestions: list[Suggestion] = field(default_factory=list)
    combined: Suggestion | None = None


@dataclass
class ServePlan(Budget):
    at_peak: dict[str, float]
    weights: object
    kv_cache: float
    needed: float
    capacity: float
    flops_prefix: float
    flops_denoise: float
    steps: int
    per_view: float
    per_token: float


def process_rss() -> float:
    """This process's resident memory (bytes): Python, torch and the libraries pirecon loaded."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS"))


def machine_ram() -> float:
    with open("/proc/meminfo") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemTotal"))


# ---------------------------------------------------------------------------------------------
# The run `pirecon train` would make of these flags


def planned_policy(cfg: TrainConfig, typed: frozenset[str], plan: PlanConfig,
                   from_preset: frozenset[str] = frozenset(),
                   from_file: frozenset[str] = frozenset()) -> tuple[TrainConfig, list[str]]:
    """The run's config as the Trainer resolves it (the pretrained folder's config.json, never its
    weights; `from_preset`, `from_file` as parse_train_command gives them), and notes. Flags the
    plan cannot honour are errors naming them."""
    notes: list[str] = []
    policy_cfg, peft_note = run_policy_config(cfg, typed, notes, from_preset, from_file)
    notes += [peft_note] if peft_note else []
    cfg = dataclasses.replace(cfg, policy=policy_cfg)
    optimizer, scheduler = resolve_optimization(cfg, typed)
    cfg = dataclasses.replace(cfg, optimizer=optimizer, scheduler=scheduler)
    if plan.mode == "train":
        cfg = fsdp.check_sharded_run(cfg, plan.fsdp, typed)  # what a sharded (or unsharded) run refuses
    path = policy_cfg.pretrained_path
    held = read_recon_config(Path(path)) if path else None  # config.json's "recon" (pirecon folders)
    recon = merge_recon_with_folder(cfg.recon, held, typed, str(path))
    if recon is not None and recon.enable:
        where = "--recon.enable=true" if held is None else f"{path}'s reconstruction head"
        raise ConfigError(f"{where}: pirecon plan does not count the reconstruction head yet; plan the run without "
                          f"it (--recon.enable=false) and add the head's share by hand")
    device = policy_cfg.device
    target = plan.target
    if target.is_cpu and device.startswith("cuda"):
        raise ConfigError(f"--policy.device={device} but --plan.gpu=cpu plans for this machine's CPU; give one")
    if not target.is_cpu and device == "cpu":
        raise ConfigError(f"--policy.device=cpu but --plan.gpu={plan.gpu} plans for a GPU; for a CPU run pass "
                          f"--plan.gpu=cpu")
    if policy_cfg.compile_model:
        notes.append("--policy.compile_model=true: counted without torch.compile, which usually needs less memory")
    if plan.mode == "serve":
        training = sorted(name for name in typed if not name.startswith("policy.")
                          or name[len("policy."):] not in SERVE_POLICY_FIELDS)
        if training:
            notes.append(f"{', '.join('--' + n for n in training[:6])}{' ...' if len(training) > 6 else ''}: "
                         f"training flags; a served request (batch 1, the loaded weights) does not depend on them")
    return cfg, notes


def step_spec(cfg: TrainConfig) -> StepSpec:
    return StepSpec(batch_size=cfg.batch_size, grad_accum_steps=cfg.grad_accum_steps, optimizer=cfg.optimizer,
                    ema=cfg.ema_decay is not None, gradient_checkpointing=cfg.policy.gradient_checkpointing)


# ---------------------------------------------------------------------------------------------
# Estimates


class Planner:
    """Estimates on one target; models are built and counted once per configuration."""

    def __init__(self, target: GpuSpec, utilization: float, mode: str = "train"):
        self.target, self.utilization = target, utilization
        self.count_target = this_cpu() if target.is_cpu else GPU
        self.baseline = process_rss() + CPU_KERNEL_CODE[mode] if target.is_cpu else CUDA_CONTEXT
        self.capacity = machine_ram() if target.is_cpu else target.memory_mib * 2 ** 20
        self._models: dict[str, ModelCount] = {}
        self.started = time.perf_counter()

    def model(self, policy_cfg: PolicyConfig, peft: PeftConfig | None, train: bool = True) -> ModelCount:
        # Gradient checkpointing is a setting of the pass, not of the model.
        shape = dataclasses.replace(policy_cfg, gradient_checkpointing=False)
        key = json.dumps([to_dict(shape), to_dict(peft) if peft and train else None, train], sort_keys=True,
                         default=str)
        if key not in self._models:
            self._models[key] = ModelCount(shape, peft, self.count_target, train=train)
        return self._models[key]

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def needed(self, peak: float) -> float:
        if self.target.is_cpu:
            return peak + self.baseline
        return peak * (1 + ALLOCATOR_RESERVE) + self.baseline

    def estimate(self, setting: Setting) -> Estimate:
        model = self.model(setting.policy, setting.peft)
        counts = model.step(setting.step)
        weights = model.weights
        n = setting.processes if setting.fsdp else 1
        gathered = weights.fsdp_root_bytes + 2 * weights.fsdp_unit_bytes if setting.fsdp else 0
        unsharded_grads = 2 * weights.fsdp_unit_trainable_bytes if setting.fsdp else 0
        # DDP's buckets hold every trainable weight's gradient (also those the loss does not reach).
        buckets = weights.trainable_bytes if setting.processes > 1 and not setting.fsdp else 0
        phases = {}
        for phase in PHASES:
            snap = {k.rsplit(".", 1)[1]: v for k, v in counts.items() if k.startswith(f"peak.{phase}.")}
            # What the forward allocated is an activation if it outlives the forward, else temporary.
            kept = min(snap.get("activations", 0), counts["saved"])
            snap["temporary"] = snap.get("temporary", 0) + snap.get("activations", 0) - kept
            snap["activations"] = kept
            phases[phase] = {
                "weights": snap.get("weights", 0) / n + (gathered if phase != "optimizer" else 0),
                "gradients": snap.get("gradients", 0) / n + (unsharded_grads if phase == "backward" else 0),
                "optimizer states": snap.get("optimizer", 0) / n,
                "EMA weights": snap.get("ema", 0) / n,
                "DDP gradient buckets": buckets,
                "activations": snap.get("activations", 0) + snap.get("inputs", 0),
                "temporary buffers": snap.get("temporary", 0),
            }
        phase = max(phases, key=lambda p: sum(phases[p].values()))
        sizes = {"weights": counts["weights"] / n + gathered, "gradients": counts["gradients"] / n + unsharded_grads,
                 "optimizer states": counts["optimizer"] / n, "EMA weights": counts["ema"] / n,
                 "DDP gradient buckets": buckets, "activations": counts["saved"] + counts["inputs"],
                 "temporary buffers": max(phases[p]["temporary buffers"] for p in PHASES)}
        peak = sum(phases[phase].values())
        return Estimate(setting, phases[phase], sizes, phase, self.needed(peak), self.capacity,
                        counts["flops.forward"], counts["flops.backward"])

    def seconds(self, flops: float, dtype: str) -> float | None:
        """Time of `flops` matrix-product FLOPs at the stated utilisation (None: no figure for the target)."""
        peak = self.target.bf16_tflops if dtype == "bfloat16" else self.target.fp32_tflops
        return None if peak is None else flops / (peak * 1e12 * self.utilization)

    def read_seconds(self, nbytes: float) -> float | None:
        bandwidth = self.target.bandwidth_gbs
        return None if bandwidth is None else nbytes / (bandwidth * 1e9 * self.utilization)

    # -- training ------------------------------------------------------------------------------
    def train_plan(self, setting: Setting) -> TrainPlan:
        estimate = self.estimate(setting)
        model = self.model(setting.policy, setting.peft)
        step = setting.step
        other = dataclasses.replace(step, gradient_checkpointing=not step.gradient_checkpointing)
        counts = model.step(step)
        saved = counts["saved"]  # the deltas below compare what forwards save
        views, tokens = len(setting.policy.camera_names), setting.policy.max_token_len
        fewer_views = model.saved(step, views=views - 1) if views > 1 else None
        per_view = saved - fewer_views if fewer_views is not None else model.saved(step, views=views + 1) - saved
        removed = min(TOKEN_STEP, tokens - 1)
        per_token = (saved - model.saved(step, tokens=tokens - removed)) / removed if removed > 0 else 0.0
        sample = self.model(setting.policy, None, train=False).serve(peaks=False)
        plan = TrainPlan(estimate, model.weights, model.saved(other) + counts["inputs"], per_view, per_token,
                         (sample["flops.prefix"], sample["flops.denoise"]))
        if not estimate.fits:
            plan.suggestions, plan.combined = self.suggest(setting)
        return plan

    def suggest(self, setting: Setting) -> tuple[list[Suggestion], Suggestion | None]:
        """The single changes that make `setting` fit, cheapest first; when none does alone, the
        cheapest combination that does (None when even all of them together do not)."""
        found = []
        for change in CHANGES:
            tried = change(self, setting)
            if tried is not None and tried.estimate.fits:
                found.append(tried)
        if found:
            return found, None
        flags: list[str] = []
        current = setting
        for change in CHANGES:
            tried = change(self, current, strongest=True)
            if tried is None:
                continue
            flags = [f for f in flags if f.split("=")[0] not in {t.split("=")[0] for t in tried.flags}] + tried.flags
            current = tried.estimate.setting
            if tried.estimate.fits:
                return [], Suggestion(flags, "together", tried.estimate)
        return [], None

    # -- serving -------------------------------------------------------------------------------
    def serve_plan(self, policy_cfg: PolicyConfig) -> ServePlan:
        model = self.model(policy_cfg, None, train=False)
        counts = model.serve()
        phases = {}
        for phase in ("prefix", "denoise"):
            snap = {k.rsplit(".", 1)[1]: v for k, v in counts.items() if k.startswith(f"peak.{phase}.")}
            phases[phase] = {"weights": snap.get("weights", 0), "activations": snap.get("activations", 0)
                             + snap.get("inputs", 0), "temporary buffers": snap.get("temporary", 0)}
        at_peak = max(phases.values(), key=lambda p: sum(p.values()))
        views, tokens = len(policy_cfg.camera_names), policy_cfg.max_token_len
        peak = sum(at_peak.values())
        fewer = model.serve(views=views - 1) if views > 1 else None
        per_view = self._serve_peak(counts) - self._serve_peak(fewer) if fewer is not None else \
            self._serve_peak(model.serve(views=views + 1)) - self._serve_peak(counts)
        removed = min(TOKEN_STEP, tokens - 1)
        per_token = (self._serve_peak(counts) - self._serve_peak(model.serve(tokens=tokens - removed))) / removed \
            if removed > 0 else 0.0
        return ServePlan(at_peak, model.weights, counts["kv_cache"], self.needed(peak), self.capacity,
                         counts["flops.prefix"], counts["flops.denoise"], policy_cfg.num_inference_steps,
                         per_view, per_token)

    @staticmethod
    def _serve_peak(counts) -> float:
        return max(counts.get(f"peak.{phase}.total", 0) for phase in ("prefix", "denoise"))


# ---------------------------------------------------------------------------------------------
# Changes that make a run fit, cheapest first


def _gradient_checkpointing(planner: Planner, s: Setting, strongest: bool = False) -> Suggestion | None:
    if s.step.gradient_checkpointing:
        return None
    changed = dataclasses.replace(s, policy=dataclasses.replace(s.policy, gradient_checkpointing=True),
                                  step=dataclasses.replace(s.step, gradient_checkpointing=True))
    return Suggestion(["--policy.gradient_checkpointing=true"],
                      "recompute each layer in the backward pass (about a third more compute)",
                      planner.estimate(changed))


def _bfloat16(planner: Planner, s: Setting, strongest: bool = False) -> Suggestion | None:
    if s.policy.dtype == "bfloat16":
        return None
    changed = dataclasses.replace(s, policy=dataclasses.replace(s.policy, dtype="bfloat16"))
    return Suggestion(["--policy.dtype=bfloat16"], "frozen weights in bfloat16, bfloat16 autocast (trainable "
                      "weights keep float32 masters)", planner.estimate(changed))


def _smaller_batch(planner: Planner, s: Setting, strongest: bool = False) -> Suggestion | None:
    """The largest per-process batch (halving it) that fits, with as much more accumulation: the
    same effective batch in more micro-steps. Memory grows linearly with the batch, so the counts at
    the run's batch and at batch 1 say which batch to count; the suggestion is counted."""
    b0, total = s.step.batch_size, s.step.batch_size * s.step.grad_accum_steps
    options = []
    b = b0
    while b > 1:
        b = max(1, b // 2)
        if total % b == 0:
            options.append(b)
    if not options:
        return None

    def counted(b: int) -> Suggestion:
        changed = dataclasses.replace(s, step=dataclasses.replace(s.step, batch_size=b, grad_accum_steps=total // b))
        return Suggestion([f"--batch_size={b}", f"--grad_accum_steps={total // b}"],
                          f"the same effective batch in {total // b} micro-steps of {b}", planner.estimate(changed))

    smallest = counted(1)
    if strongest or not smallest.estimate.fits:
        return smallest
    largest = planner.estimate(s).needed
    for b in options[:-1]:
        if smallest.estimate.needed + (largest - smallest.estimate.needed) * (b - 1) / (b0 - 1) <= planner.capacity:
            tried = counted(b)
            if tried.estimate.fits:
                return tried
    return smallest


def _fsdp(planner: Planner, s: Setting, strongest: bool = False) -> Suggestion | None:
    """FSDP over the fewest processes that fit (on the current processes first)."""
    if not s.shardable:
        return None
    options = ([s.processes] if s.processes > 1 and not s.fsdp else []) + \
        [n for n in FSDP_OPTIONS if n > s.processes]
    if strongest:
        options = options[-1:]
    tried = None
    for n in options:
        changed = dataclasses.replace(s, processes=n, fsdp=True)
        flags = ([f"--plan.num_processes={n}"] if n != s.processes else []) + ["--plan.fsdp=true"]
        batch = s.step.batch_size * s.step.grad_accum_steps * n
        tried = Suggestion(flags, f"shard over {n} GPUs (effective batch {batch})", planner.estimate(changed))
        if tried.estimate.fits:
            return tried
    return tried


def _frozen_vision(planner: Planner, s: Setting, strongest: bool = False) -> Suggestion | None:
    if s.policy.freeze_vision_encoder or s.policy.train_expert_only:
        return None
    changed = dataclasses.replace(s, policy=dataclasses.replace(s.policy, freeze_vision_encoder=True))
    before = planner.model(s.policy, s.peft).weights.trainable_params
    if planner.model(changed.policy, changed.peft).weights.trainable_params == before:
        return None  # SigLIP does not train in this run
    return Suggestion(["--policy.freeze_vision_encoder=true"], "SigLIP stays as pretrained",
                      planner.estimate(changed))


def _lora(planner: Planner, s: Setting, strongest: bool = False) -> Suggestion | None:
    if s.policy.use_peft:
        return None
    changed = dataclasses.replace(s, policy=dataclasses.replace(s.policy, use_peft=True))
    estimate = planner.estimate(changed)
    return Suggestion(["--policy.use_peft=true"], f"LoRA ({s.peft.preset} preset): "
                      f"{planner.model(changed.policy, changed.peft).weights.trainable_params:,} trainable weights",
                      estimate)


CHANGES = (_gradient_checkpointing, _bfloat16, _smaller_batch, _fsdp, _frozen_vision, _lora)


def make_plan(cfg: TrainConfig, typed: frozenset[str], plan: PlanConfig, from_preset: frozenset[str] = frozenset(),
              from_file: frozenset[str] = frozenset()) -> tuple[Planner, object, list[str], TrainConfig]:
    """(planner, TrainPlan or ServePlan, notes, the resolved config) for `pirecon plan`'s flags."""
    cfg, notes = planned_policy(cfg, typed, plan, from_preset, from_file)
    planner = Planner(plan.target, plan.utilization, plan.mode)
    if plan.mode == "serve":
        return planner, planner.serve_plan(cfg.policy), notes, cfg
    # Runs FSDP cannot take (fsdp.check_sharded_run) get no FSDP suggestion.
    shardable = not cfg.policy.full_bf16 and not (cfg.env.type and cfg.env_eval_freq > 0)
    setting = Setting(cfg.policy, cfg.peft, step_spec(cfg), plan.num_processes, plan.fsdp, shardable)
    return planner, planner.train_plan(setting), notes, cfg
