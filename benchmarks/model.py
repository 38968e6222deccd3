"""Model benchmarks: checkpoint load time and memory at full size, sample_actions latency, FLOPs per
call and achieved FLOP/s.

    .venv/bin/python benchmarks/model.py [--skip-full] [--workdir DIR] [--kinds pi0,pi05]
        [--file-dtypes bfloat16,float32] [--no-full-sampling]

Prints a table. Full-size checkpoints are random (openpi layout, stored as each --file-dtypes),
written to a temporary folder first; each load runs in a fresh process so its memory is its own:
peak RSS while loading, steady RSS once loaded, and how much of the file the process still maps
(0 when every tensor owns its memory). A float32 file is loaded both as float32 and as bfloat16.
FLOPs are counted on the warm-up call with torch.utils.flop_counter.FlopCounterMode (matrix
products, convolutions, attention); FLOP/s = those FLOPs / the median time of a call. The "issue 15
batch" rows compare trimmed sampling (the default: views the whole batch masks and prompt padding
skipped) with the reference work (`trim=False`, what openpi computes) for 3 views with the third
masked and a 20-token prompt padded to 48 (Pi0) / 200 (Pi0.5); at full size also the largest
difference between the two action chunks (same noise).
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode


def write_random_checkpoint(kind: str, folder: Path, dtype: str = "bfloat16") -> float:
    """Random weights under openpi key names, stored as `dtype`, written tensor by tensor (a
    float32 Pi0.5 file is 13.5 GiB; it is never whole in memory). Returns billions of params."""
    from pirecon import PolicyConfig
    from pirecon.model.pi0 import Pi0Policy
    from pirecon.checkpoint.keys import openpi_key

    config = PolicyConfig(type=kind, variant="full", dtype="bfloat16")
    with torch.device("meta"):
        shapes = {openpi_key(k): tuple(v.shape) for k, v in Pi0Policy(config).state_dict().items()}
    torch_dtype = getattr(torch, dtype)
    size = torch.tensor([], dtype=torch_dtype).element_size()
    header, offset = {}, 0
    for name, shape in shapes.items():
        nbytes = math.prod(shape) * size
        header[name] = {"dtype": {"bfloat16": "BF16", "float32": "F32"}[dtype], "shape": list(shape),
                        "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    gen = torch.Generator().manual_seed(0)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "model.safetensors", "wb") as f:
        f.write(len(head).to_bytes(8, "little") + head)
        for shape in shapes.values():
            tensor = ((torch.rand(shape, generator=gen) - 0.5) * 0.04).to(torch_dtype)
            f.write(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
            del tensor
    (folder / "config.json").write_text(json.dumps({
        "action_dim": config.max_action_dim, "action_horizon": config.chunk_size,
        "paligemma_variant": "gemma_2b", "action_expert_variant": "gemma_300m", "precision": dtype}))
    return sum(math.prod(s) for s in shapes.values()) / 1e9


def load_in_child(folder: Path, dtype: str | None = None) -> dict:
    """Time `load_policy` in a fresh interpreter; its peak RSS (VmHWM), its RSS once loaded (VmRSS,
    after a garbage collection) and how much of the file it still has memory-mapped."""
    code = f"""
import gc, json, time
t0 = time.perf_counter()
import pirecon
policy = pirecon.load_policy({str(folder)!r}, dtype={dtype!r})
seconds = time.perf_counter() - t0
gc.collect()
def status(key):  # KiB
    return int(next(l for l in open("/proc/self/status") if l.startswith(key)).split()[1])
def mapped(path):  # bytes of this process's mappings of `path`
    total = 0
    for line in open("/proc/self/maps"):
        parts = line.split(maxsplit=5)
        if len(parts) == 6 and parts[5].strip() == path:
            start, end = (int(x, 16) for x in parts[0].split("-"))
            total += end - start
    return total
# VmHWM, not ru_maxrss: the latter also counts the parent's pages copied at fork, before exec.
print(json.dumps({{"seconds": seconds, "peak_rss_gib": status("VmHWM") / 2**20,
                  "steady_rss_gib": status("VmRSS") / 2**20,
                  "mapped_gib": mapped({str((folder / "model.safetensors").resolve())!r}) / 2**30,
                  "params_b": sum(p.numel() for p in policy.parameters()) / 1e9}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def time_sampling(policy, batch, use_cache: bool, num_steps: int, repeats: int, trim: bool = True
                  ) -> tuple[float, int]:
    """(median seconds per call, FLOPs per call) after one warm-up call, whose FLOPs are counted."""
    with FlopCounterMode(display=False) as counter:
        policy.sample_actions(batch, use_cache=use_cache, num_steps=num_steps, trim=trim)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        policy.sample_actions(batch, use_cache=use_cache, num_steps=num_steps, trim=trim)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2], counter.get_total_flops()


def compare_trim(policy, batch, num_steps: int) -> dict:
    """One trimmed and one reference-work (`trim=False`) call on the same batch and noise, each timed
    while its FLOPs are counted (the counter's bookkeeping is small next to a full-size call):
    seconds, FLOPs and the largest absolute difference between the two action chunks."""
    config = policy.config
    noise = torch.randn(batch.state.shape[0], config.chunk_size, config.max_action_dim,
                        generator=torch.Generator().manual_seed(0))
    out = {}
    for trim in (True, False):
        with FlopCounterMode(display=False) as counter:
            start = time.perf_counter()
            actions = policy.sample_actions(batch, noise=noise.clone(), num_steps=num_steps, trim=trim)
            seconds = time.perf_counter() - start
        out[trim] = (seconds, counter.get_total_flops(), actions.float())
    (ts, tf, ta), (rs, rf, ra) = out[True], out[False]
    return {"trim_s": ts, "ref_s": rs, "trim_flops": tf, "ref_flops": rf, "max_diff": (ta - ra).abs().max().item()}


def flops_text(seconds: float, flops: int) -> str:
    return f"{flops / 1e9:.2f} GFLOP, {flops / 1e9 / seconds:.1f} GFLOP/s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--skip-full", action="store_true", help="only the tiny model")
    parser.add_argument("--workdir", type=Path, default=None, help="where to write the random checkpoints")
    parser.add_argument("--no-full-sampling", action="store_true",
                        help="full size: only write and load (sampling takes many minutes on a CPU)")
    parser.add_argument("--full-dtype", default="bfloat16", choices=["bfloat16", "float32"],
                        help="precision of the full-size latency rows (CPUs without native bf16 run float32 faster)")
    parser.add_argument("--kinds", default="pi0,pi05", help="full-size models to write and load")
    parser.add_argument("--file-dtypes", default="bfloat16",
                        help="precisions to store the full-size files in (float32: 13.5 GiB for pi05)")
    parser.add_argument("--full-views", type=int, default=3)
    parser.add_argument("--full-steps", type=int, default=2,
                        help="denoising steps for the full-size latency rows (10 takes minutes on a CPU)")
    parser.add_argument("--full-issue-steps", type=int, default=10,
                        help="denoising steps of the full-size trim / reference-work rows (0: skip them)")
    parser.add_argument("--repeats", type=int, default=9, help="timed calls per tiny row (the median is shown)")
    args = parser.parse_args()

    from pirecon import PolicyConfig, load_policy
    from pirecon.batch import synthetic_batch

    rows = []

    def report(name: str, value: str) -> None:  # printed as it comes: the full-size rows take minutes
        rows.append((name, value))
        print(f"  {name}: {value}", flush=True)

    torch.set_grad_enabled(False)
    for kind in ("pi0", "pi05"):
        policy = load_policy(PolicyConfig(type=kind, variant="tiny")).eval()
        batch = synthetic_batch(policy.config, 1, action_dim=7)  # 3 views at 224
        (with_cache, flops), (without, _) = (time_sampling(policy, batch, cache, 10, args.repeats)
                                             for cache in (True, False))
        report(f"sample_actions tiny {kind}, 3 views, 10 steps", f"{with_cache * 1e3:.0f} ms cached / "
               f"{without * 1e3:.0f} ms uncached = {without / with_cache:.1f}x; cached {flops_text(with_cache, flops)}")
        issue = synthetic_batch(policy.config, 1, action_dim=7, missing_views=1, text_lengths=[20])
        (trimmed, flops_t), (reference, flops_r) = (time_sampling(policy, issue, True, 10, args.repeats, trim=trim)
                                                    for trim in (True, False))
        report(f"sample_actions tiny {kind}, issue 15 batch, 10 steps: trim / reference work",
               f"{trimmed * 1e3:.0f} / {reference * 1e3:.0f} ms = {trimmed / reference:.2f}x (FLOPs "
               f"{flops_t / flops_r:.2f}x); trim {flops_text(trimmed, flops_t)}")

    if not args.skip_full:
        workdir = args.workdir or Path(tempfile.mkdtemp(prefix="pirecon-bench-"))
        for kind, file_dtype in ((k, d) for k in args.kinds.split(",") for d in args.file_dtypes.split(",")):
            folder = workdir / f"{kind}_full"
            start = time.perf_counter()
            billions = write_random_checkpoint(kind, folder, file_dtype)
            short = {"bfloat16": "bf16", "float32": "f32"}
            report(f"write random {kind} checkpoint ({billions:.2f}B params, {short[file_dtype]})",
                   f"{time.perf_counter() - start:.1f} s")
            for dtype in dict.fromkeys([file_dtype, "bfloat16"]):
                result = load_in_child(folder, dtype)
                report(f"load_policy full {kind}, {short[file_dtype]} file as {short[dtype]} (target <= 30 s)",
                       f"{result['seconds']:.1f} s, peak RSS {result['peak_rss_gib']:.2f} GiB, steady "
                       f"{result['steady_rss_gib']:.2f} GiB, file still mapped {result['mapped_gib']:.2f} GiB")
            if not args.no_full_sampling and file_dtype == "bfloat16":
                cameras = ("base_0_rgb", "left_wrist_0_rgb", "right_wrist_0_rgb")[:args.full_views]
                policy = load_policy(folder, dtype=args.full_dtype, camera_names=cameras).eval()
                batch = synthetic_batch(policy.config, 1, action_dim=7)
                steps = args.full_steps
                with_cache, flops = time_sampling(policy, batch, True, steps, 1)
                without, _ = time_sampling(policy, batch, False, steps, 1)
                report(f"sample_actions full {kind} {args.full_dtype}, {args.full_views} view(s), {steps} steps",
                       f"{with_cache:.1f} s cached / {without:.1f} s uncached = {without / with_cache:.1f}x; "
                       f"cached {flops_text(with_cache, flops)}")
                if args.full_issue_steps > 0 and args.full_views == 3:
                    issue = synthetic_batch(policy.config, 1, action_dim=7, missing_views=1, text_lengths=[20])
                    c = compare_trim(policy, issue, args.full_issue_steps)
                    report(f"sample_actions full {kind} {args.full_dtype}, issue 15 batch, {args.full_issue_steps} "
                           f"steps: trim / reference work",
                           f"{c['trim_s']:.1f} / {c['ref_s']:.1f} s = {c['trim_s'] / c['ref_s']:.2f}x (FLOPs "
                           f"{c['trim_flops'] / 1e12:.2f} / {c['ref_flops'] / 1e12:.2f} T = "
                           f"{c['trim_flops'] / c['ref_flops']:.2f}x); max |actions diff| {c['max_diff']:.2e}")
                del policy
            for file in folder.iterdir():
                file.unlink()
            folder.rmdir()

    width = max(len(r[0]) for r in rows)
    print(f"{'measurement':<{width}}  result")
    print("-" * (width + 40))
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    print(f"(this process peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads)")


if __name__ == "__main__":
    main()
