"""The text `pirecon plan` prints: what is planned, memory per process, FLOPs and time, the
verdict and, when a run does not fit, the changes that make it fit."""

from __future__ import annotations

from pirecon.configs.plan import PlanConfig
from pirecon.configs.train import TrainConfig
from pirecon.train.plan import ALLOCATOR_RESERVE, Planner, ServePlan, TrainPlan

GiB, MiB = 2 ** 30, 2 ** 20
ORDER = ("weights", "gradients", "optimizer states", "EMA weights", "DDP gradient buckets", "activations",
         "temporary buffers")


def size(n: float) -> str:
    return f"{n / GiB:.2f} GiB" if abs(n) >= 0.1 * GiB else f"{n / MiB:.1f} MiB"


def count(n: float) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.4g} {unit}"
    return f"{n:g}"


def tflop(n: float) -> str:
    return f"{n / 1e12:.3g} TFLOP" if n >= 1e10 else f"{n / 1e9:.3g} GFLOP"


def duration(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1e3:.3g} ms"
    if seconds < 120:
        return f"{seconds:.3g} s"
    if seconds < 7200:
        return f"{seconds / 60:.3g} min"
    if seconds < 172800:
        return f"{seconds / 3600:.3g} h"
    return f"{seconds / 86400:.3g} days"


def target_line(planner: Planner, plan: PlanConfig) -> str:
    t = planner.target
    if t.is_cpu:
        return (f"target   this machine's CPU: {size(planner.capacity)} RAM; a pirecon process holds "
                f"{size(planner.baseline)} besides its tensors (Python, torch, the kernels' code); no FLOP/s figure")
    speed = (f"{t.bf16_tflops:g} TFLOP/s bfloat16, {t.fp32_tflops:g} float32, {t.bandwidth_gbs:g} GB/s"
             if t.bf16_tflops else "no throughput figure for a size alone: name the GPU for time estimates")
    return f"target   {t.name}: {t.memory_mib / 1024:.1f} GiB ({speed}); utilisation {plan.utilization:.0%}"


def verdict(planner: Planner, needed: float, capacity: float, peak: float) -> str:
    if planner.target.is_cpu:
        how = f"{size(peak)} + {size(planner.baseline)} process baseline"
    else:
        how = f"{size(peak)} + {ALLOCATOR_RESERVE:.0%} allocator reserve + {size(planner.baseline)} CUDA context"
    word = "fits" if needed <= capacity else "does NOT fit"
    return f"needs    {size(needed)} ({how}) of {size(capacity)}: {word}"


def describe_run(cfg: TrainConfig, plan: PlanConfig) -> str:
    p = cfg.policy
    training = "LoRA" + f" ({cfg.peft.preset} preset)" if p.use_peft else "every weight"
    frozen = [name for name, on in (("vision frozen", p.freeze_vision_encoder),
                                    ("VLM frozen", p.train_expert_only)) if on]
    views = f"{len(p.camera_names)} views of {p.image_resolution}px, {p.max_token_len} prompt tokens"
    if plan.mode == "serve":
        return (f"serve    {p.type} ({p.vision_variant} / {p.paligemma_variant} / {p.action_expert_variant}), "
                f"{p.dtype}; one request: batch 1, {views}, {p.num_inference_steps} denoising steps")
    run = (f"train    {p.type} ({p.vision_variant} / {p.paligemma_variant} / {p.action_expert_variant}), "
           f"{training}{', ' + ', '.join(frozen) if frozen else ''}, {p.dtype}, gradient checkpointing "
           f"{'on' if p.gradient_checkpointing else 'off'}, {cfg.optimizer.type}")
    batch = (f"         batch {cfg.batch_size} x {cfg.grad_accum_steps} micro-steps x {plan.num_processes} "
             f"process{'es' if plan.num_processes > 1 else ''}"
             f"{' (FSDP)' if plan.fsdp else ' (DDP)' if plan.num_processes > 1 else ''} = "
             f"{cfg.batch_size * cfg.grad_accum_steps * plan.num_processes} samples per optimizer step; {views}")
    return run + "\n" + batch


def train_report(planner: Planner, result: TrainPlan, cfg: TrainConfig, plan: PlanConfig, notes: list[str]) -> str:
    e, w = result.estimate, result.weights
    lines = [f"pirecon plan (counted in {planner.elapsed():.1f} s)", describe_run(cfg, plan), target_line(planner, plan)]
    lines += [f"note     {n}" for n in notes]
    lines += ["", f"memory per process{'':<16}{'size':>11}  {'at the peak (' + e.phase + ')':>24}"]
    frozen = ", ".join(f"{size(n)} {dtype}" for dtype, n in sorted(w.frozen_bytes_by_dtype.items()))
    details = {
        "weights": f"{count(w.params)} parameters, {count(w.trainable_params)} trainable "
                   f"({size(w.trainable_bytes)}); frozen: {frozen or 'none'}"
                   + (f"; FSDP: 1/{plan.num_processes} + unsharded root and two layers" if plan.fsdp else ""),
        "gradients": "of the trainable weights",
        "optimizer states": f"{cfg.optimizer.type}: exp_avg and exp_avg_sq",
        "EMA weights": "float32 copy of the trainable weights (--ema_decay)",
        "DDP gradient buckets": "DDP's copy of the gradients for the all-reduce",
        "activations": (f"saved by the forward: gradient checkpointing {'on' if cfg.policy.gradient_checkpointing else 'off'}; "
                        f"{'off' if cfg.policy.gradient_checkpointing else 'on'}: {size(result.saved_other)}"),
        "temporary buffers": "the largest transient (recomputed layer, backward products, optimizer step)",
    }
    for name in ORDER:
        if e.sizes.get(name, 0) == 0 and e.at_peak.get(name, 0) == 0:
            continue
        lines.append(f"  {name:<30} {size(e.sizes[name]):>11}  {size(e.at_peak[name]):>24}   {details[name]}")
    lines.append(f"  {'':<30} {'':>11}  {'per camera view':>24}   {'+' if result.per_view >= 0 else ''}"
                 f"{size(result.per_view)} activations; per prompt token {size(result.per_token)}")
    lines.append(f"  {'peak':<30} {'':>11}  {size(e.peak):>24}")
    lines.append(verdict(planner, e.needed, e.capacity, e.peak))
    lines += ["", "compute (matrix products, convolutions and attention)"]
    per_sample = (e.flops_forward + e.flops_backward) / cfg.batch_size
    lines.append(f"  per training sample     {tflop(per_sample)} (forward {tflop(e.flops_forward / cfg.batch_size)}, "
                 f"backward {tflop(e.flops_backward / cfg.batch_size)}"
                 f"{' with the recomputation' if cfg.policy.gradient_checkpointing else ''})")
    prefix, denoise = result.sample_flops
    lines.append(f"  per sample_actions call {tflop(prefix + denoise)} (prefix {tflop(prefix)}, "
                 f"{cfg.policy.num_inference_steps} denoising steps {tflop(denoise)}), batch 1")
    step_flops = (e.flops_forward + e.flops_backward) * cfg.grad_accum_steps
    seconds = planner.seconds(step_flops, cfg.policy.dtype)
    if seconds is None:
        lines.append(f"  step time               not estimated: no FLOP/s figure for {planner.target.name}")
    else:
        lines.append(f"  step time               {duration(seconds)} per optimizer step "
                     f"({tflop(step_flops)} per process); {cfg.steps} steps: {duration(seconds * cfg.steps)}")
    if not e.fits:
        lines += [""] + suggestion_lines(result)
    return "\n".join(lines)


def suggestion_lines(result: TrainPlan) -> list[str]:
    if result.suggestions:
        lines = ["changes that make it fit, cheapest first (each on its own):"]
        for s in result.suggestions:
            lines.append(f"  {' '.join(s.flags):<52} peak {size(s.estimate.peak)}, needs {size(s.estimate.needed)}: "
                         f"{s.why}")
        return lines
    if result.combined is not None:
        s = result.combined
        return ["no single change makes it fit; together:",
                f"  {' '.join(s.flags)}", f"  peak {size(s.estimate.peak)}, needs {size(s.estimate.needed)}: fits"]
    return ["no change pirecon knows of makes it fit on this GPU (gradient checkpointing, bfloat16, batch 1 with "
            "accumulation, FSDP over 16 GPUs, frozen vision, LoRA, all together): a larger GPU is needed"]


def serve_report(planner: Planner, result: ServePlan, cfg: TrainConfig, plan: PlanConfig, notes: list[str]) -> str:
    w = result.weights
    lines = [f"pirecon plan (counted in {planner.elapsed():.1f} s)", describe_run(cfg, plan), target_line(planner, plan)]
    lines += [f"note     {n}" for n in notes]
    lines += ["", "memory of the server process at the peak of one request"]
    lines.append(f"  {'weights':<26} {size(result.at_peak['weights']):>11}   {count(w.params)} parameters "
                 f"as loaded ({', '.join(f'{size(n)} {d}' for d, n in sorted(w.bytes_by_dtype.items()))})")
    transient = result.peak - result.at_peak["weights"]
    lines.append(f"  {'activations':<26} {size(transient):>11}   the passes' buffers at the peak, with the prefix's KV "
                 f"cache ({size(result.kv_cache)}); per camera view {size(result.per_view)}, per prompt token "
                 f"{size(result.per_token)}")
    lines.append(f"  {'peak':<26} {size(result.peak):>11}")
    lines.append(verdict(planner, result.needed, result.capacity, result.peak))
    lines += ["", "latency of one request (sample_actions, batch 1; preprocessing and network not counted)"]
    prefix_s = planner.seconds(result.flops_prefix, cfg.policy.dtype)
    if prefix_s is None:
        lines.append(f"  {tflop(result.flops_prefix + result.flops_denoise)} per call (prefix {tflop(result.flops_prefix)}, "
                     f"{result.steps} denoising steps {tflop(result.flops_denoise)}); no FLOP/s figure for "
                     f"{planner.target.name}")
        return "\n".join(lines)
    prefix_read = planner.read_seconds(w.prefix_read_bytes)
    step_flops = result.flops_denoise / result.steps
    step_s = planner.seconds(step_flops, cfg.policy.dtype)
    step_read = planner.read_seconds(w.step_read_bytes + result.kv_cache)
    prefix_t, step_t = max(prefix_s, prefix_read), max(step_s, step_read)
    lines.append(f"  prefix                  {tflop(result.flops_prefix)}, reads {size(w.prefix_read_bytes)} of weights: "
                 f"{duration(prefix_t)} ({'compute' if prefix_s >= prefix_read else 'memory'}-bound)")
    lines.append(f"  each denoising step     {tflop(step_flops)}, reads {size(w.step_read_bytes + result.kv_cache)} "
                 f"(expert weights and KV cache): {duration(step_t)} "
                 f"({'compute' if step_s >= step_read else 'memory'}-bound)")
    lines.append(f"  per request             {duration(prefix_t + result.steps * step_t)} "
                 f"({result.steps} steps; the larger of FLOPs and bytes read at {plan.utilization:.0%} of the peak)")
    if not result.fits and cfg.policy.dtype == "float32":
        lines += ["", "change that makes it smaller: --policy.dtype=bfloat16 (weights in bfloat16)"]
    return "\n".join(lines)
