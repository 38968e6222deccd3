"""`pirecon smoke`: build a tiny Pi0 and a tiny Pi0.5 with random weights and the reconstruction
head, take one optimiser step on a synthetic batch, sample actions, print each loss (action and
reconstruction: "both losses obtained"). Exit 0 only when every loss is finite and the step
changed the weights."""

from __future__ import annotations

import math
import time

import torch

from pirecon.batch import synthetic_batch
from pirecon.configs.demo import SmokeConfig
from pirecon.configs.policy import PolicyConfig
from pirecon.configs.parse import format_help, parse_flags, wants_help
from pirecon.model.pi0 import Pi0Policy
from pirecon.configs.recon import ReconConfig


def smoke_one(policy_type: str, cfg: SmokeConfig) -> dict:
    torch.manual_seed(cfg.seed)
    config = PolicyConfig(type=policy_type, variant=cfg.variant)
    policy = Pi0Policy(config, recon=ReconConfig(enable=cfg.recon, views=config.camera_names[:2]))
    batch = synthetic_batch(config, cfg.batch_size, action_dim=cfg.action_dim, seed=cfg.seed, missing_views=1)
    before = {k: v.detach().clone() for k, v in policy.named_parameters() if v.requires_grad}
    optimizer = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=cfg.lr)
    start = time.perf_counter()
    out = policy.compute_loss(batch)
    out["loss"].backward()
    # Tensors the loss reaches. (Some get no gradient by design: the VLM's last-layer MLP and
    # final norm feed no action token, and Pi0.5's zero-initialised adaRMS gates close the
    # backbone until the first step has opened them.)
    reached = {k for k, v in policy.named_parameters() if v.grad is not None and v.grad.abs().max() > 0}
    optimizer.step()
    step_s = time.perf_counter() - start
    changed_keys = {k for k, v in policy.named_parameters() if k in before and not torch.equal(before[k], v)}
    changed = len(changed_keys)
    policy.eval()
    start = time.perf_counter()
    actions = policy.sample_actions(batch)
    sample_s = time.perf_counter() - start
    return {
        "type": policy_type,
        "params": sum(p.numel() for p in policy.parameters()),
        "action_loss": out["action_loss"].item(),
        "recon_loss": out["recon_loss"].item() if "recon_loss" in out else float("nan"),
        "changed": changed,
        "trainable": len(before),
        "all_reached_changed": bool(reached) and reached <= changed_keys,
        "actions_finite": bool(torch.isfinite(actions).all()),
        "actions_shape": tuple(actions.shape),
        "step_s": step_s,
        "sample_s": sample_s,
    }


def run(argv: list[str]) -> int:
    if wants_help(argv):
        print(format_help("smoke", __doc__, SmokeConfig), end="")
        return 0
    cfg = parse_flags(argv, SmokeConfig)
    ok = True
    print(f"{'policy':<6} {'params':>9} {'action_loss':>12} {'recon_loss':>11} {'changed':>9} {'actions':>14} "
          f"{'step s':>7} {'sample s':>8}")
    for policy_type in ("pi0", "pi05"):
        r = smoke_one(policy_type, cfg)
        good = (math.isfinite(r["action_loss"]) and r["all_reached_changed"] and r["actions_finite"]
                and (math.isfinite(r["recon_loss"]) or not cfg.recon))
        ok &= good
        print(f"{r['type']:<6} {r['params']:>9,} {r['action_loss']:>12.4f} {r['recon_loss']:>11.4f} "
              f"{r['changed']:>4}/{r['trainable']:<4} "
              f"{str(r['actions_shape']):>14} {r['step_s']:>7.3f} {r['sample_s']:>8.3f}  {'OK' if good else 'FAILED'}")
    print("smoke: all losses finite, the step changed the weights" if ok else "smoke: FAILED")
    return 0 if ok else 1
