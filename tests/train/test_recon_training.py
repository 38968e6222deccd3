"""The reconstruction head wired into the policy, checkpoints and training."""

import json

import torch

import pirecon
from pirecon import PolicyConfig
from pirecon.batch import synthetic_batch
from pirecon.model.pi0 import Pi0Policy
from pirecon.configs.recon import ReconConfig
from pirecon.checkpoint.layout import last_checkpoint
from pirecon.checkpoint.load import load_model
from pirecon.train.command import parse_train_flags
from pirecon.checkpoint.export import export
from pirecon.train.loop import train
from tests.train.helpers import tiny_train_flags


def _pair(weight):
    torch.manual_seed(0)
    plain = Pi0Policy(PolicyConfig(type="pi05", variant="tiny", image_resolution=56))
    with_head = Pi0Policy(plain.config, recon=ReconConfig(enable=True, weight=weight))
    with_head.load_state_dict({**with_head.state_dict(), **plain.state_dict()})
    return plain, with_head


def test_weight_zero_leaves_action_gradients_identical():
    plain, with_head = _pair(0.0)
    batch = synthetic_batch(plain.config, 2)
    noise, time = torch.randn_like(batch.actions), torch.tensor([0.3, 0.6])
    grads = []
    for policy in (plain, with_head):
        out = policy.compute_loss(batch, noise=noise, time=time)
        out["loss"].backward()
        grads.append({n: p.grad for n, p in policy.named_parameters() if p.grad is not None and "recon" not in n})
    assert "recon_loss" in out and torch.isfinite(out["recon_loss"])
    assert grads[0].keys() <= grads[1].keys()
    assert all(torch.equal(grads[0][k], grads[1][k]) for k in grads[0])
    # The head also reaches the VLM's last layer (unused by actions), with zero gradient at lambda = 0.
    assert all(not grads[1][k].any() for k in grads[1].keys() - grads[0].keys())


def test_sample_actions_never_runs_the_head():
    _, with_head = _pair(1.0)
    calls = []
    with_head.recon_head.register_forward_hook(lambda *a: calls.append(1))
    with_head.eval().sample_actions(synthetic_batch(with_head.config, 1))
    assert calls == []


def test_head_round_trips_through_save_and_load(tmp_path):
    _, policy = _pair(1.0)
    pirecon.save_policy(policy, tmp_path / "c")
    assert json.loads((tmp_path / "c" / "config.json").read_text())["recon"]["enable"]
    loaded = pirecon.load_policy(tmp_path / "c")
    assert loaded.recon_head is not None
    a, b = policy.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_lora_training_with_recon_logs_both_losses_and_resumes(sim_dataset, sim_tokenizer, tmp_path):
    out = tmp_path / "run"
    flags = tiny_train_flags(sim_dataset, sim_tokenizer, out, "--steps=3", "--policy.use_peft", "--recon.enable=true",
                             "--recon.views=[base_0_rgb,left_wrist_0_rgb]", "--recon.warmup_steps=2", kind="pi05")
    train(parse_train_flags(flags))
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert all("recon_loss" in r and "action_loss" in r for r in records)
    # Warm-up: lambda = 0 at the first step, so loss == action_loss there; later it includes the head.
    assert abs(records[0]["loss"] - records[0]["action_loss"]) < 1e-6
    assert records[2]["loss"] > records[2]["action_loss"]
    folder = last_checkpoint(out)
    model = load_model(folder)
    head = model.get_base_model().recon_head
    assert head is not None and head.cfg.views == ("base_0_rgb", "left_wrist_0_rgb")
    exported = pirecon.load_policy(export(folder, tmp_path / "exported"))
    assert exported.recon_head is None  # export drops the head by default


def test_recon_viz_writes_a_grid(sim_dataset, sim_tokenizer, tmp_path):
    from PIL import Image

    from pirecon.configs.recon import ReconVizConfig, VizDatasetFlags, VizPolicyFlags
    from pirecon.recon_viz import recon_viz

    out = tmp_path / "run"
    train(parse_train_flags(tiny_train_flags(sim_dataset, sim_tokenizer, out, "--steps=1", "--recon.enable=true",
                                             "--recon.region=gaze")))
    path = recon_viz(ReconVizConfig(policy=VizPolicyFlags(str(last_checkpoint(out))),
                                    dataset=VizDatasetFlags(str(sim_dataset)), output=str(tmp_path / "g.png"),
                                    frames=3, steps=5))
    width, height = Image.open(path).size
    assert height > width / 3 > 0  # 3 rows, 3 columns (input | target | reconstruction)
