"""Writes plain_path_golden.safetensors: what the plain (non-RTC-trained) paths computed before
training-time real-time chunking was added (pirecon main at 619928e). tests/model/test_rtc_training.py
compares today's code with it. Run once, from the commit whose values are to be kept:

    PYTHONPATH=src .venv/bin/python tests/model/data/make_plain_path_golden.py
"""

from __future__ import annotations

import inspect
from pathlib import Path

import torch
from safetensors.torch import save_file

from pirecon.batch import synthetic_batch
from pirecon.configs.policy import PolicyConfig
from pirecon.model.pi0 import Pi0Policy

OUT = Path(__file__).with_name("plain_path_golden.safetensors")
# The loss as 619928e computed it: every view and token (later commits trim what the whole batch
# masks by default, which agrees to float rounding only; tests/model/test_trim.py checks that).
REFERENCE_WORK = {"trim": False} if "trim" in inspect.signature(Pi0Policy.compute_loss).parameters else {}


def build(kind: str, dtype: str = "float32") -> Pi0Policy:
    torch.manual_seed(0)
    policy = Pi0Policy(PolicyConfig(type=kind, variant="tiny", chunk_size=10, n_action_steps=5, max_action_dim=8,
                                    num_inference_steps=5, dtype=dtype))
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # Pi0.5's adaRMS projections start at zero: give them values, as training would
        for module in policy.modules():
            if hasattr(module, "dense"):
                module.dense.weight.copy_(torch.randn(module.dense.weight.shape, generator=gen) * 0.2)
    return policy


def values(kind: str, dtype: str) -> dict[str, torch.Tensor]:
    policy = build(kind, dtype)
    batch = synthetic_batch(policy.config, 2, action_dim=6, seed=3)
    gen = torch.Generator().manual_seed(2)
    noise = torch.randn(2, 10, 8, generator=gen)
    time = torch.tensor([0.3, 0.8])
    previous = torch.randn(2, 6, 6, generator=gen)
    out = {}
    policy.train()
    loss = policy.compute_loss(batch, noise=noise, time=time, **REFERENCE_WORK)["loss"]
    loss.backward()
    out["loss"] = loss.detach()
    for name in ("action_in_proj.weight", "action_out_proj.weight", "backbone.expert.layers.0.q_proj.weight"):
        out[f"grad.{name}"] = policy.get_parameter(name).grad.float().clone()
    torch.manual_seed(5)  # noise and time drawn by compute_loss: the random stream it consumes
    out["loss_sampled"] = policy.compute_loss(batch, **REFERENCE_WORK)["loss"].detach()
    out["after_loss_rng"] = torch.rand(3)
    policy.eval()
    out["sample"] = policy.sample_actions(batch, noise=noise)
    out["sample_uncached"] = policy.sample_actions(batch, noise=noise, use_cache=False)
    out["sample_guided"] = policy.sample_actions(batch, noise=noise, prefix_actions=previous, inference_delay=2)
    return out


def main() -> None:
    tensors = {}
    for kind in ("pi0", "pi05"):
        for dtype in ("float32", "bfloat16"):
            for name, value in values(kind, dtype).items():
                tensors[f"{kind}.{dtype}.{name}"] = value.float().contiguous()
    cpu = torch.backends.cpu.get_cpu_capability()
    save_file(tensors, str(OUT), metadata={"torch": torch.__version__, "cpu_capability": cpu})
    print(f"{OUT}: {len(tensors)} tensors (torch {torch.__version__}, {cpu})")


if __name__ == "__main__":
    main()
