"""`pirecon plan` against measurements: FLOPs planned vs counted by PyTorch's FLOP counter on a real
pass, and peak memory planned vs the peak RSS of the real CPU training step and of inference.

    .venv/bin/python benchmarks/plan.py [--skip-full] [--workdir DIR] [--serve-steps 2]

Settings of benchmarks/train.py: LoRA (openpi preset) r=16, batch 1, 3 camera views, frozen weights in
bfloat16 with bfloat16 autocast, gradient checkpointing, frozen vision encoder, AdamW; the plan is
asked for `--plan.gpu=cpu` (this machine: float32 products for frozen bfloat16 layers where the CPU
has no bfloat16 arithmetic, the optimizer one tensor at a time). Every plan and every measurement
runs in its own process; a measured peak is VmHWM after resetting it (/proc/self/clear_refs) just
before the measured call, so loading the model does not count: the second training step (the
optimizer state exists) and the second `sample_actions` call; a third one counts the FLOPs (a step
under the counter holds more, and glibc's heap keeps what a step grew to). The weights are copied out of the memory-mapped safetensors file
first, so that RSS counts all of them as a GPU would hold them. The plan's CPU total is its peak
plus the RSS of a pirecon process before any model (measured by the plan in its own process) and
the library code a first pass pages in.

Targets: FLOPs within 5 %, memory within 15 %. A full-size training step takes several minutes
on a 2-core CPU (two are run) and about 7 GiB; --skip-full runs the tiny rows only.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

FLAGS = ["--policy.dtype=bfloat16", "--policy.use_peft=true", "--peft.preset=openpi", "--peft.r=16",
         "--policy.gradient_checkpointing=true", "--policy.freeze_vision_encoder=true", "--batch_size=1"]

PLAN = r"""
import json, sys
from pirecon.train.command import parse_train_command
from pirecon.configs.plan import PlanConfig
from pirecon.train.plan import make_plan
mode, flags = sys.argv[1], sys.argv[2:]
parsed = parse_train_command(flags)
planner, result, notes, cfg = make_plan(parsed.config, parsed.typed, PlanConfig(gpu="cpu", mode=mode))
if mode == "train":
    e = result.estimate
    out = {"peak": e.peak, "forward": e.flops_forward, "backward": e.flops_backward, "prefix": result.sample_flops[0],
           "denoise": result.sample_flops[1]}
else:
    out = {"peak": result.peak, "prefix": result.flops_prefix, "denoise": result.flops_denoise}
print(json.dumps({**out, "baseline": planner.baseline, "seconds": planner.elapsed()}))
"""

MEASURE = r"""
import contextlib, json, sys
import torch
import pirecon.train.loop  # what `pirecon train` imports (the baseline of a pirecon process)
from torch.utils.flop_counter import FlopCounterMode
from pirecon import PolicyConfig, load_policy
from pirecon.batch import synthetic_batch
from pirecon.configs.train import PeftConfig
from pirecon.model.placement import place
from pirecon.train.peft_plan import apply_lora
from pirecon.train.plan_count import FLOP_FORMULAS

def rss(field):
    return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith(field))

def reset_peak():
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")

def counter():  # PyTorch's counter with the plan's one addition, the fused CPU attention (as raw formulas)
    extra = {k: v.__wrapped__ for k, v in FLOP_FORMULAS.items() if k not in FlopCounterMode(display=False).flop_registry}
    return FlopCounterMode(display=False, custom_mapping=extra)

def materialise(model):
    # Weights read from safetensors are memory-mapped: RSS would count only the pages a pass touches
    # (not the embedding rows no prompt looks up) and the kernel may drop them under memory pressure.
    # Copied into anonymous memory they count in full, as on a GPU.
    with torch.no_grad():
        for t in list(model.parameters()) + list(model.buffers()):
            t.data = t.data.clone()

mode, kind, source, steps = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
baseline = rss("VmRSS")
runtime = dict(dtype="bfloat16", gradient_checkpointing=True, freeze_vision_encoder=True, num_inference_steps=steps)
policy = load_policy(PolicyConfig(type=kind, variant="tiny", **runtime) if source == "tiny" else source,
                     **({} if source == "tiny" else runtime))
out = {"baseline": baseline}
if mode == "train":
    model = apply_lora(policy, PeftConfig(r=16, preset="openpi"))
    place(model, "cpu", torch.bfloat16, train=True)
    materialise(model)
    policy.backbone.set_gradient_checkpointing(True)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-4)
    batch = synthetic_batch(policy.config, 1, action_dim=7)
    def step(flops=None):
        forward, backward = (counter(), counter()) if flops is not None else (None, None)
        with forward or contextlib.nullcontext(), torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(batch)["loss"]
        with backward or contextlib.nullcontext():
            loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if flops is not None:
            flops.update(forward=forward.get_total_flops(), backward=backward.get_total_flops())
        print("step done", file=sys.stderr, flush=True)

    # The first step creates the optimizer state and pages the kernels in; the second is measured; the
    # third counts FLOPs (measured under the counter a full-size step held 4 GiB more, which glibc's
    # heap then kept).
    step()
    out["resident"] = rss("VmRSS")
    reset_peak()
    step()
    out["peak_rss"] = rss("VmHWM")
    step(out)
else:
    policy.eval()
    materialise(policy)
    batch = synthetic_batch(policy.config, 1, action_dim=7)
    policy.sample_actions(batch, trim=False)  # pages the kernels in
    out["resident"] = rss("VmRSS")
    reset_peak()
    policy.sample_actions(batch, trim=False)
    out["peak_rss"] = rss("VmHWM")
    flops = counter()
    with flops:
        policy.sample_actions(batch, trim=False)
    out["sample"] = flops.get_total_flops()
print(json.dumps(out))
"""


def child(code: str, *args: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"benchmark child {args} failed with exit code {out.returncode}; its traceback is above")
    return json.loads(out.stdout.strip().splitlines()[-1])


def ratio(planned: float, measured: float) -> str:
    return f"{planned / measured:.3f}" if measured else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--skip-full", action="store_true", help="only the tiny rows")
    parser.add_argument("--workdir", type=Path, default=None, help="where to write the random full-size checkpoint")
    parser.add_argument("--serve-steps", type=int, default=2,
                        help="denoising steps of the measured sample_actions call (the peak does not depend on it; "
                             "10 take many minutes at full size on a CPU)")
    parser.add_argument("--kinds", default="pi0,pi05", help="tiny policies to run")
    parser.add_argument("--skip-tiny", action="store_true", help="only the full-size rows")
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).parent))
    from model import write_random_checkpoint

    flops_rows, memory_rows = [], []

    def compare(name: str, kind: str, source: str, variant: str) -> None:
        flags = [f"--policy.type={kind}", f"--policy.variant={variant}",
                 f"--policy.num_inference_steps={args.serve_steps}", *FLAGS]
        for mode in ("train", "serve"):
            if source != "tiny" and mode == "train" and args.skip_full:
                continue
            planned = child(PLAN, mode, *flags)
            measured = child(MEASURE, mode, kind, source, str(args.serve_steps))
            print(f"  {name} {mode}: planned {planned}\n    measured {measured}", flush=True)
            if mode == "train":
                flops_rows.append((f"{name}, training forward", planned["forward"], measured["forward"]))
                flops_rows.append((f"{name}, training backward", planned["backward"], measured["backward"]))
            else:
                flops_rows.append((f"{name}, sample_actions ({args.serve_steps} steps)",
                                   planned["prefix"] + planned["denoise"], measured["sample"]))
            memory_rows.append((f"{name}, {'training step' if mode == 'train' else 'sample_actions'}", planned,
                                measured, planned["seconds"]))

    for kind in [] if args.skip_tiny else args.kinds.split(","):
        compare(f"tiny {kind}", kind, "tiny", "tiny")
    if not args.skip_full:
        workdir = args.workdir or Path(tempfile.mkdtemp(prefix="pirecon-bench-"))
        folder = workdir / "pi05_full"
        write_random_checkpoint("pi05", folder)
        try:
            compare("full pi05", "pi05", str(folder), "full")
        finally:
            for file in folder.iterdir():
                file.unlink()
            folder.rmdir()

    print(f"\n{'FLOPs (PyTorch FLOP counter, + fused CPU attention)':<48} {'planned':>12} {'counted':>12} {'ratio':>7}")
    for name, planned, counted in flops_rows:
        print(f"{name:<48} {planned / 1e9:>10.2f} G {counted / 1e9:>10.2f} G {ratio(planned, counted):>7}")
    gib = 2 ** 30
    print(f"\n{'peak memory, CPU (GiB)':<36} {'planned':>8} {'measured':>9} {'ratio':>6}   "
          f"{'above the baseline: planned':>27} {'measured':>9} {'ratio':>6}  plan took")
    for name, planned, measured, seconds in memory_rows:
        total = planned["peak"] + planned["baseline"]
        above = measured["peak_rss"] - measured["baseline"]
        print(f"{name:<36} {total / gib:>8.2f} {measured['peak_rss'] / gib:>9.2f} "
              f"{ratio(total, measured['peak_rss']):>6}   {planned['peak'] / gib:>27.3f} {above / gib:>9.3f} "
              f"{ratio(planned['peak'], above):>6}  {seconds:.1f} s")
    print("(baseline: a pirecon process before any model; planned by the plan in its own process, measured in "
          "the measuring one)")


if __name__ == "__main__":
    main()
