"""Training-step benchmark: step time, FLOPs per step and achieved FLOP/s, peak RSS; LoRA r=16 (openpi
preset), batch 1, frozen base in bf16, frozen vision encoder, gradient checkpointing on, for the tiny and
the full-size Pi0 / Pi0.5, and the overhead of the reconstruction head (default size) on Pi0.5.

The batch is issue 15's setting: 3 camera views with the third masked, a 20-token prompt padded to 48
(Pi0) / 200 (Pi0.5). Each row runs in two modes: `trim` (the training forward skips the masked view and
the prompt padding, as `pirecon train` does) and `reference` (every view and all padding: the work
openpi does, `compute_loss(trim=False)`); the ratio trim / reference closes the table (target <= 0.6).

    .venv/bin/python benchmarks/train.py [--skip-full] [--steps 3] [--workdir DIR]
    .venv/bin/python benchmarks/train.py --skip-tiny --kinds pi05 --views 1 --steps 2 --recon --dtype float32

Each configuration runs in its own process (so peak RSS is its own). FLOPs are counted once, on the
first (warm-up) step, with torch.utils.flop_counter.FlopCounterMode (matrix products, convolutions and
attention, forward and backward, recomputation included); FLOP/s = those FLOPs / the median step time.
Full-size models start from a random openpi-layout bf16 checkpoint written to --workdir first; their
FLOPs per step are also counted without weights or compute on the meta device (seconds, always
printed), so the trim / reference ratio at full size shows even where a full-size step takes minutes.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import contextlib, json, sys, time
import torch
from torch.utils.flop_counter import FlopCounterMode
from pirecon import PolicyConfig, load_policy
from pirecon.batch import synthetic_batch
from pirecon.configs.train import PeftConfig
from pirecon.model.recon import ReconConfig
from pirecon.model.placement import place
from pirecon.train.peft_plan import apply_lora

kind, source, steps, views, recon = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5] == "1"
dtype, trim = sys.argv[6], sys.argv[7] == "trim"
cameras = ("base_0_rgb", "left_wrist_0_rgb", "right_wrist_0_rgb")[:views]
runtime = dict(dtype=dtype, gradient_checkpointing=True, freeze_vision_encoder=True, camera_names=cameras)
t0 = time.perf_counter()
if source == "tiny":
    policy = load_policy(PolicyConfig(type=kind, variant="tiny", **runtime))
else:
    policy = load_policy(source, **runtime)
load_s = time.perf_counter() - t0
if recon:
    policy.add_recon_head(ReconConfig(enable=True))
model = apply_lora(policy, PeftConfig(r=16, preset="openpi"))
place(model, "cpu", policy.config.torch_dtype, train=True)
policy.backbone.set_gradient_checkpointing(True)
model.train()
trainable = [p for p in model.parameters() if p.requires_grad]
opt = torch.optim.AdamW(trainable, lr=1e-4)
# Issue 15's batch: the last view masked (when there are 3), a 20-token prompt in the padded length.
batch = synthetic_batch(policy.config, 1, action_dim=7, missing_views=1 if views == 3 else 0, text_lengths=[20])
times, flops = [], 0
for step in range(steps):
    counter = FlopCounterMode(display=False) if step == 0 else None
    start = time.perf_counter()
    with counter or contextlib.nullcontext():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
            loss = model(batch, trim=trim)["loss"]
        loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    times.append(time.perf_counter() - start)
    if counter is not None:
        flops = counter.get_total_flops()
    print(f"step {len(times)}: {times[-1]:.1f} s", file=sys.stderr, flush=True)  # progress of slow full-size runs
rest = sorted(times[1:] or times)
print(json.dumps({"load_s": load_s, "first_step_s": times[0], "step_s": rest[len(rest) // 2], "flops": flops,
                  # VmHWM, not ru_maxrss (which also counts the parent's pages copied at fork)
                  "peak_rss_gib": int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1]) / 2**20,
                  "trainable_m": sum(p.numel() for p in trainable) / 1e6, "loss": loss.item()}))
"""


META_FLOPS = r"""
import json, sys
import torch
from torch.utils.flop_counter import FlopCounterMode
from pirecon import PolicyConfig
from pirecon.batch import synthetic_batch
from pirecon.configs.train import PeftConfig
from pirecon.model.pi0 import Pi0Policy
from pirecon.model.trim import trim_plan
from pirecon.train.peft_plan import apply_lora

kind, views = sys.argv[1], int(sys.argv[2])
cameras = ("base_0_rgb", "left_wrist_0_rgb", "right_wrist_0_rgb")[:views]
config = PolicyConfig(type=kind, variant="full", dtype="bfloat16", gradient_checkpointing=True,
                      freeze_vision_encoder=True, camera_names=cameras)
with torch.device("meta"):
    model = apply_lora(Pi0Policy(config), PeftConfig(r=16, preset="openpi")).train()
host = synthetic_batch(config, 1, action_dim=7, missing_views=1 if views == 3 else 0, text_lengths=[20])
out = {}
for mode, trim in (("trim", trim_plan(host.image_masks, host.token_masks)), ("reference", False)):
    with FlopCounterMode(display=False) as counter:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(host.to("meta"), trim=trim)["loss"]
        loss.backward()
    out[mode] = counter.get_total_flops()
print(json.dumps(out))
"""


def meta_flops(kind: str, views: int) -> dict:
    out = subprocess.run([sys.executable, "-c", META_FLOPS, kind, str(views)], stdout=subprocess.PIPE, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_child(kind: str, source: str, steps: int, views: int, recon: bool = False, dtype: str = "bfloat16",
              mode: str = "trim") -> dict:
    # The child's stderr (per-step progress, warnings, a traceback) goes straight to ours.
    out = subprocess.run([sys.executable, "-c", CHILD, kind, source, str(steps), str(views), str(int(recon)), dtype,
                          mode], stdout=subprocess.PIPE, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{kind} ({source}) benchmark child failed with exit code {out.returncode}; "
                           f"its traceback is above")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--skip-full", action="store_true")
    parser.add_argument("--steps", type=int, default=3, help="steps per full-size row (tiny rows: --tiny-steps)")
    parser.add_argument("--tiny-steps", type=int, default=10)
    parser.add_argument("--views", type=int, default=3, help="camera views per sample (full size; 3 masks the third)")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--kinds", default="pi0,pi05", help="full-size policies to run")
    parser.add_argument("--modes", default="trim,reference",
                        help="trim (skip what the batch masks, as pirecon train does) and/or reference (openpi's work)")
    parser.add_argument("--recon", action="store_true", help="also time full-size Pi0.5 with the recon head")
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"),
                        help="full size: bfloat16 (frozen base in bf16, bf16 autocast; the memory target) or float32 "
                             "(about twice the memory; no bf16/float32 conversions on CPUs without bf16 arithmetic)")
    parser.add_argument("--skip-tiny", action="store_true")
    args = parser.parse_args()
    modes = args.modes.split(",")
    if not set(modes) <= {"trim", "reference"}:
        parser.error(f"--modes={args.modes}: expected trim and/or reference")
    sys.path.insert(0, str(Path(__file__).parent))
    from model import write_random_checkpoint

    rows = []  # (name, mode, result)

    def run(name: str, kind: str, source: str, steps: int, views: int, **kw) -> None:
        for mode in modes:
            r = run_child(kind, source, steps, views, mode=mode, **kw)
            rows.append((name, mode, r))
            print(f"  {name} [{mode}]: {r}", flush=True)

    if not args.skip_tiny:
        for kind in ("pi0", "pi05"):
            run(f"tiny {kind}, 3 views", kind, "tiny", args.tiny_steps, 3)
        run("tiny pi05, 3 views, + recon head", "pi05", "tiny", args.tiny_steps, 3, recon=True)
    if not args.skip_full:
        workdir = args.workdir or Path(tempfile.mkdtemp(prefix="pirecon-bench-"))
        for kind in args.kinds.split(","):
            folder = workdir / f"{kind}_full"
            write_random_checkpoint(kind, folder)
            name = f"full {kind}, {args.views} view(s), {args.dtype}" + (
                " (target peak RSS <= 10 GiB)" if kind == "pi05" and args.dtype == "bfloat16" else "")
            run(name, kind, str(folder), args.steps, args.views, dtype=args.dtype)
            if kind == "pi05" and args.recon:
                run(f"full pi05, {args.views} view(s), {args.dtype}, + recon head", kind, str(folder), args.steps,
                    args.views, recon=True, dtype=args.dtype)
            for file in folder.iterdir():
                file.unlink()
            folder.rmdir()
    width = max(len(n) for n, _, _ in rows) + 12
    print(f"\n{'LoRA r=16, batch 1, grad ckpt':<{width}}  {'step s':>8} {'1st step s':>10} {'GFLOP/step':>10} "
          f"{'GFLOP/s':>8} {'peak RSS GiB':>12} {'trainable M':>11} {'load s':>7}")
    for name, mode, r in rows:
        print(f"{name + ' [' + mode + ']':<{width}}  {r['step_s']:>8.3f} {r['first_step_s']:>10.3f} "
              f"{r['flops'] / 1e9:>10.2f} {r['flops'] / 1e9 / r['step_s']:>8.2f} {r['peak_rss_gib']:>12.2f} "
              f"{r['trainable_m']:>11.2f} {r['load_s']:>7.1f}")
    by_name = {}
    for name, mode, r in rows:
        by_name.setdefault(name, {})[mode] = r
    print(f"\n{'full size, counted on the meta device':<{width}}  {'TFLOP/step':>10} {'trim/ref':>8}")
    for kind in args.kinds.split(","):
        counted = meta_flops(kind, args.views)
        for mode in ("trim", "reference"):
            print(f"{f'full {kind}, {args.views} view(s) [{mode}]':<{width}}  {counted[mode] / 1e12:>10.2f}"
                  + (f" {counted['trim'] / counted['reference']:>8.2f}" if mode == "trim" else ""))
    pairs = [(name, m) for name, m in by_name.items() if len(m) == 2]
    if pairs:
        print(f"\n{'trim / reference work (target <= 0.6)':<{width}}  {'step':>8} {'FLOPs':>10}")
        for name, m in pairs:
            print(f"{name:<{width}}  {m['trim']['step_s'] / m['reference']['step_s']:>8.2f} "
                  f"{m['trim']['flops'] / max(m['reference']['flops'], 1):>10.2f}")


if __name__ == "__main__":
    main()
