"""FSDP2 training through `accelerate launch --config_file examples/accelerate/fsdp.yaml` on CPU
(gloo, 2 processes), against one process computing the same effective batch (`AsTwoProcesses`).

Tolerances: losses agree to 1e-5 and weights / optimizer moments to 5e-5 between FSDP and one
process (measured: at most 2.4e-7 and 4.8e-6 after 4 steps of full fine-tuning): both average the
same two per-batch gradients, in another order of float additions (reduce-scatter vs
accumulation), which Adam's normalisation can magnify for gradients near zero. A resumed run with
the same number of processes repeats the straight run's losses to 1e-6.
"""

import json

import pytest
import torch
from safetensors.torch import load_file

from pirecon.checkpoint import sharded
from pirecon.checkpoint.layout import DCP_MODEL_DIR, DCP_OPTIMIZER_DIR, holds_dcp
from pirecon.train.command import parse_train_command
from pirecon.train.loop import Trainer
from tests.train.fsdp_helpers import AsTwoProcesses, launch, truncated_copy
from tests.train.helpers import logged, tiny_train_flags

LOSS_TOL, STATE_TOL, RESUME_TOL = 1e-5, 5e-5, 1e-6


def one_process(argv: list[str], state: dict | None = None) -> None:
    """Train in this process, standing in for two (`AsTwoProcesses`)."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)  # one Accelerator setting per process otherwise
    try:
        parsed = parse_train_command(argv)
        trainer = Trainer(parsed.config, parsed.typed)
        AsTwoProcesses(trainer, state)
        trainer.run()
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)


def assert_close_curves(fsdp: dict, single: dict, steps, tol: float) -> None:
    for step in steps:
        assert abs(fsdp[step] - single[step]) <= tol, (step, fsdp[step], single[step])


@pytest.mark.slow
def test_full_finetune_under_fsdp_equals_one_process(sim_dataset, sim_tokenizer, tmp_path):
    """Full fine-tuning with gradient checkpointing, checkpoints gathered (safetensors): the same loss
    curve, weights and optimizer state as one process; a checkpoint of the 2-process run resumes in
    one process and goes on as the 2-process run did."""
    common = ("--steps=4", "--save_freq=2", "--batch_size=2", "--policy.gradient_checkpointing=true",
              "--policy.scheduler_decay_steps=4")
    fsdp, single = tmp_path / "fsdp", tmp_path / "single"
    res = launch(["-m", "pirecon", "train", *tiny_train_flags(sim_dataset, sim_tokenizer, fsdp, *common)])
    assert "sharding    FSDP2 (fully_shard), one unit per GemmaLayer / SiglipLayer" in res.stdout
    one_process(tiny_train_flags(sim_dataset, sim_tokenizer, single, *common, "--grad_accum_steps=2"))

    a, b = logged(fsdp), logged(single)
    assert sorted(a) == sorted(b) == [1, 2, 3, 4]
    assert_close_curves(a, b, range(1, 5), LOSS_TOL)
    assert len({round(v, 3) for v in a.values()}) == 4  # the curve moves: the comparison is not trivial

    # The gathered checkpoint is the one a single process writes: same files, weights, optimizer state.
    mine, theirs = fsdp / "checkpoints" / "000004", single / "checkpoints" / "000004"
    assert sorted(p.name for p in mine.iterdir()) == sorted(p.name for p in theirs.iterdir())
    wa, wb = load_file(str(mine / "model.safetensors")), load_file(str(theirs / "model.safetensors"))
    assert wa.keys() == wb.keys() and all(wa[k].dtype == wb[k].dtype for k in wa)
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) <= STATE_TOL
    sa = torch.load(mine / "training_state.pt", weights_only=False)
    sb = torch.load(theirs / "training_state.pt", weights_only=False)
    oa, ob = sa["optimizer"], sb["optimizer"]
    assert oa["param_groups"] == ob["param_groups"] and oa["state"].keys() == ob["state"].keys()
    for index, moments in oa["state"].items():
        assert torch.equal(moments["step"], ob["state"][index]["step"])
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.allclose(moments[key], ob["state"][index][key], atol=STATE_TOL, rtol=1e-3), (index, key)
    assert len(sa["loader"]) == len(sa["rng"]) == 2  # every rank's data position and random state

    # Stopped after step 2, resumed in one process (standing in for both ranks): steps 3 and 4 as before.
    resumed = truncated_copy(fsdp, tmp_path / "resumed", 2)
    state = torch.load(resumed / "checkpoints" / "000002" / "training_state.pt", weights_only=False)
    one_process([f"--output_dir={resumed}", "--resume=true", "--grad_accum_steps=2"], state)
    assert_close_curves(a, logged(resumed), (3, 4), LOSS_TOL)


LAUNCHED_RUNS = """
import sys
from pathlib import Path

import torch.distributed as dist
from pirecon.model import cpu_bf16
from pirecon.train.command import parse_train_command
from pirecon.train.loop import Trainer
from tests.train.fsdp_helpers import truncated_copy


def train(*argv):
    parsed = parse_train_command(list(argv))
    Trainer(parsed.config, parsed.typed).run()


out, flags = Path(sys.argv[1]), sys.argv[2:]
cpu_bf16.cpu_has_bf16_arithmetic = lambda: False  # the frozen bfloat16 layers multiply in float32 (as on CI)
# LoRA on a bfloat16 base, EMA, sharded checkpoints at every step.
train(*flags, f"--output_dir={out / 'straight'}", "--checkpoint_format=dcp")
if dist.get_rank() == 0:
    truncated_copy(out / "straight", out / "resumed", 2)
dist.barrier()
# Stopped after step 2: resumed from the sharded checkpoint, checkpoint 3 gathered (safetensors) ...
train(f"--output_dir={out / 'resumed'}", "--resume=true", "--steps=3", "--checkpoint_format=safetensors")
# ... and resumed again from that one.
train(f"--output_dir={out / 'resumed'}", "--resume=true", "--steps=4")
# Full fine-tuning (frozen bfloat16 SigLIP, the rest trained in float32), both weight forms.
full = [f for f in flags if f not in ("--policy.use_peft=true", "--ema_decay=0.9", "--steps=4")]
train(*full, f"--output_dir={out / 'full'}", "--steps=1", "--policy.freeze_vision_encoder=true",
      "--checkpoint_format=safetensors_dcp")
"""


@pytest.mark.slow
def test_lora_under_fsdp_sharded_checkpoints(sim_dataset, sim_tokenizer, tmp_path, monkeypatch):
    """LoRA over a frozen bfloat16 base with EMA under FSDP, sharded (DCP) checkpoints: a stop and
    --resume repeats the losses exactly (from a sharded and from a gathered checkpoint), a sharded
    checkpoint resumes in one process, the adapter loads in one process, export consolidates it.
    As on a CPU without bfloat16 arithmetic (CI's), the frozen bfloat16 layers multiply in float32."""
    from pirecon.model import cpu_bf16
    monkeypatch.setattr(cpu_bf16, "cpu_has_bf16_arithmetic", lambda: False)
    # A constant learning rate: a run's schedule does not depend on its --steps.
    flags = tiny_train_flags(sim_dataset, sim_tokenizer, tmp_path / "unused", "--steps=4", "--save_freq=1",
                             "--keep_last_checkpoints=4", "--batch_size=2", "--policy.use_peft=true",
                             "--policy.dtype=bfloat16", "--ema_decay=0.9", "--policy.gradient_checkpointing=true",
                             "--policy.scheduler_warmup_steps=0", "--policy.scheduler_decay_lr=1e-3")
    flags = [f for f in flags if not f.startswith("--output_dir=")]
    script = tmp_path / "runs.py"
    script.write_text(LAUNCHED_RUNS)
    launch([str(script), str(tmp_path), *flags])
    straight, resumed, full = tmp_path / "straight", tmp_path / "resumed", tmp_path / "full"

    # Sharded checkpoints: DCP folders, no weight files, every shard in the manifest.
    step2 = straight / "checkpoints" / "000002"
    names = {p.name for p in step2.iterdir()}
    assert {DCP_MODEL_DIR, DCP_OPTIMIZER_DIR, "ema_0", "adapter", "training_state.pt"} <= names
    assert not names & {"trainable.safetensors", "ema.safetensors", "model.safetensors"}
    assert (step2 / "adapter" / "adapter_config.json").is_file()
    assert not (step2 / "adapter" / "adapter_model.safetensors").exists()
    manifest = json.loads((step2 / "manifest.json").read_text())["files"]
    assert {f"{DCP_MODEL_DIR}/__0_0.distcp", f"{DCP_MODEL_DIR}/__1_0.distcp", f"{DCP_MODEL_DIR}/.metadata"} <= \
        set(manifest)
    assert "optimizer" not in torch.load(step2 / "training_state.pt", weights_only=False)
    # Only the trained weights are sharded (the frozen base stays in base/).
    trained = sharded.read(step2 / DCP_MODEL_DIR, "model")
    assert trained and all(".lora_" in k for k in trained) and all(v.dtype == torch.float32 for v in trained.values())

    # Stop + --resume under FSDP: exact, from the sharded checkpoint 2 and from the gathered checkpoint 3.
    a, b = logged(straight), logged(resumed)
    assert sorted(b) == [1, 2, 3, 4]
    assert_close_curves(a, b, (3, 4), RESUME_TOL)
    assert (resumed / "checkpoints" / "000003" / "adapter" / "adapter_model.safetensors").is_file()

    # The sharded checkpoint 2 resumed in one process (standing in for both ranks).
    alone = truncated_copy(straight, tmp_path / "alone", 2)
    state = torch.load(alone / "checkpoints" / "000002" / "training_state.pt", weights_only=False)
    one_process([f"--output_dir={alone}", "--resume=true", "--grad_accum_steps=2"], state)
    assert_close_curves(a, logged(alone), (3, 4), LOSS_TOL)

    # The adapters of steps 3 and 4, sharded (straight) or gathered (resumed), load in one process, the
    # same; so do their EMA weights.
    from pirecon.checkpoint.load import load, load_model
    for step in ("000003", "000004"):
        from_dcp, gathered = load_model(straight / "checkpoints" / step), load_model(resumed / "checkpoints" / step)
        pa, pb = dict(from_dcp.named_parameters()), dict(gathered.named_parameters())
        assert pa.keys() == pb.keys()
        assert all(torch.allclose(pa[k].float(), pb[k].float(), atol=RESUME_TOL) for k in pa), step
        assert any(".lora_B" in k and pa[k].abs().sum() > 0 for k in pa)  # the adapters learned something
        ema_a = load(straight / "checkpoints" / step, use_ema=True).policy.state_dict()
        ema_b = load(resumed / "checkpoints" / step, use_ema=True).policy.state_dict()
        assert all(torch.allclose(ema_a[k].float(), ema_b[k].float(), atol=RESUME_TOL) for k in ema_a), step

    # `pirecon export` consolidates a sharded checkpoint into an ordinary folder.
    from pirecon import load_policy
    from pirecon.checkpoint.export import export
    exported = export(straight / "checkpoints" / "000004", tmp_path / "exported")
    merged = load_model(straight / "checkpoints" / "000004", merge_lora=True).state_dict()
    plain = load_policy(exported).state_dict()
    assert plain.keys() == merged.keys() and all(torch.equal(plain[k], merged[k]) for k in plain)

    # Full fine-tuning: the sharded weights are the gathered ones, dtypes included (frozen SigLIP
    # in bfloat16, trained weights in float32).
    step1 = full / "checkpoints" / "000001"
    assert (step1 / "model.safetensors").is_file() and holds_dcp(step1, DCP_MODEL_DIR)
    gathered = load_file(str(step1 / "model.safetensors"))
    consolidated = sharded.read_policy(step1).state_dict()
    assert gathered.keys() == consolidated.keys()
    assert all(torch.equal(gathered[k], consolidated[k]) for k in gathered)
    assert gathered["backbone.vision.layers.0.fc1.weight"].dtype == torch.bfloat16
    assert gathered["backbone.vlm.layers.0.q_proj.weight"].dtype == torch.float32
