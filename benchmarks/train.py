"""Training-step benchmark: step time and peak RSS, LoRA r=16, batch 1, frozen base in bf16,
gradient checkpointing on, for the tiny and the full-size Pi0 / Pi0.5, and the overhead of the
reconstruction head (default size) on Pi0.5.

    .venv/bin/python benchmarks/train.py [--skip-full] [--steps 3] [--workdir DIR]
    .venv/bin/python benchmarks/train.py --skip-tiny --kinds pi05 --views 1 --steps 2 --recon --dtype float32

Each configuration runs in its own process (so peak RSS is its own). Full-size models start from a
random openpi-layout bf16 checkpoint written to --workdir first. Prints a table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
import torch
from pirecon import PolicyConfig, load_policy
from pirecon.batch import synthetic_batch
from pirecon.configs.train import PeftConfig
from pirecon.model.recon import ReconConfig
from pirecon.model.placement import place
from pirecon.train.peft_plan import apply_lora

kind, source, steps, views, recon = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5] == "1"
dtype = sys.argv[6]
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
batch = synthetic_batch(policy.config, 1, action_dim=7)
times = []
for _ in range(steps):
    start = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
        loss = model(batch)["loss"]
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    times.append(time.perf_counter() - start)
    print(f"step {len(times)}: {times[-1]:.1f} s", file=sys.stderr, flush=True)  # progress of slow full-size runs
print(json.dumps({"load_s": load_s, "first_step_s": times[0], "step_s": sorted(times[1:] or times)[len(times[1:] or times) // 2],
                  # VmHWM, not ru_maxrss (which also counts the parent's pages copied at fork)
                  "peak_rss_gib": int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1]) / 2**20,
                  "trainable_m": sum(p.numel() for p in trainable) / 1e6, "loss": float(loss)}))
"""


def run_child(kind: str, source: str, steps: int, views: int, recon: bool = False, dtype: str = "bfloat16") -> dict:
    # The child's stderr (per-step progress, warnings, a traceback) goes straight to ours.
    out = subprocess.run([sys.executable, "-c", CHILD, kind, source, str(steps), str(views), str(int(recon)), dtype],
                         stdout=subprocess.PIPE, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{kind} ({source}) benchmark child failed with exit code {out.returncode}; "
                           f"its traceback is above")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--skip-full", action="store_true")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--views", type=int, default=3, help="camera views per sample (full size)")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--kinds", default="pi0,pi05", help="full-size policies to run")
    parser.add_argument("--recon", action="store_true", help="also time full-size Pi0.5 with the recon head")
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"),
                        help="full size: bfloat16 (frozen base in bf16, bf16 autocast; the memory target) or float32 "
                             "(about twice the memory; no bf16/float32 conversions on CPUs without bf16 arithmetic)")
    parser.add_argument("--skip-tiny", action="store_true")
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).parent))
    from model import write_random_checkpoint

    rows = []
    for kind in () if args.skip_tiny else ("pi0", "pi05"):
        r = run_child(kind, "tiny", 10, 3)
        rows.append((f"tiny {kind}, 3 views", r))
        print(f"  tiny {kind}: {r}", flush=True)
    if not args.skip_tiny:
        r = run_child("pi05", "tiny", 10, 3, recon=True)
        rows.append(("tiny pi05, 3 views, + recon head", r))
        print(f"  tiny pi05 + recon: {r}", flush=True)
    if not args.skip_full:
        workdir = args.workdir or Path(tempfile.mkdtemp(prefix="pirecon-bench-"))
        for kind in args.kinds.split(","):
            folder = workdir / f"{kind}_full"
            write_random_checkpoint(kind, folder)
            r = run_child(kind, str(folder), args.steps, args.views, dtype=args.dtype)
            name = f"full {kind}, {args.views} view(s), {args.dtype}" + (
                " (target peak RSS <= 10 GiB)" if kind == "pi05" and args.dtype == "bfloat16" else "")
            rows.append((name, r))
            print(f"  {name}: {r}", flush=True)
            if kind == "pi05" and args.recon:
                r = run_child(kind, str(folder), args.steps, args.views, recon=True, dtype=args.dtype)
                rows.append((f"full pi05, {args.views} view(s), {args.dtype}, + recon head", r))
                print(f"  full pi05 + recon: {r}", flush=True)
            for file in folder.iterdir():
                file.unlink()
            folder.rmdir()
    width = max(len(n) for n, _ in rows)
    print(f"\n{'LoRA r=16, batch 1, grad ckpt':<{width}}  {'step s':>8} {'1st step s':>10} "
          f"{'peak RSS GiB':>12} {'trainable M':>11} {'load s':>7}")
    for name, r in rows:
        print(f"{name:<{width}}  {r['step_s']:>8.2f} {r['first_step_s']:>10.2f} {r['peak_rss_gib']:>12.2f} "
              f"{r['trainable_m']:>11.2f} {r['load_s']:>7.1f}")


if __name__ == "__main__":
    main()
