"""Placement: one decision of device, dtypes, autocast and the float32-products routing."""

import re

import pytest
import torch
from torch import nn

from pirecon import PolicyConfig
from pirecon.batch import synthetic_batch
from pirecon.cli import main
from pirecon.configs.train import PeftConfig
from pirecon.errors import ConfigError
from pirecon.model import cpu_bf16
from pirecon.model.cpu_bf16 import _linear_forward
from pirecon.model.pi0 import Pi0Policy
from pirecon.model.placement import Placement, decide_placement, place, resolve_device
from pirecon.model.weights import load_policy, save_policy
from pirecon.train.peft_plan import apply_lora

BF16, F32 = torch.bfloat16, torch.float32
CPU = torch.device("cpu")

# sample_actions(_sample) of _tiny(kind), first sample, as commit 72559ec (before placement existed)
# computed them on a 2-core AVX512-BF16/AMX machine; bit-identical there, other CPUs round differently.
RECORDED_AT_72559EC = {
    "pi0": [[-1.361095905303955, 0.25639045238494873, -1.4635831117630005, -1.4519890546798706],
            [-1.0861769914627075, 1.3748475313186646, 0.6703709363937378, -0.5612315535545349],
            [0.6017400026321411, -1.33113431930542, -1.0069479942321777, -0.4826551079750061],
            [-0.4065432548522949, -0.6485851407051086, 0.8600459694862366, 0.3249529004096985]],
    "pi05": [[-1.2700421810150146, 0.8174178004264832, -1.466984748840332, -0.7783210277557373],
             [-1.5814735889434814, 1.6347854137420654, 0.03424106538295746, -0.5669906735420227],
             [1.2688287496566772, 0.6901074647903442, -1.7858352661132812, 0.14765532314777374],
             [-0.032730527222156525, 0.11554187536239624, 0.6752739548683167, 0.23517648875713348]],
}


def _tiny(kind: str, dtype: str = "float32") -> Pi0Policy:
    """A tiny policy built directly (never placed), its adaRMS gates opened."""
    torch.manual_seed(0)
    policy = Pi0Policy(PolicyConfig(type=kind, variant="tiny", chunk_size=4, n_action_steps=4, image_resolution=56,
                                    dtype=dtype)).eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in policy.modules():
            if hasattr(m, "dense"):
                m.dense.weight.copy_(torch.randn(m.dense.weight.shape, generator=gen) * 0.2)
    return policy


def _sample(policy: Pi0Policy) -> torch.Tensor:
    batch = synthetic_batch(policy.config, 2, action_dim=4, seed=3)
    noise = torch.randn(2, 4, policy.config.max_action_dim, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        return policy.sample_actions(batch, noise=noise, num_steps=3)


def _routed(model: nn.Module) -> list[str]:
    return [name for name, m in model.named_modules()
            if isinstance(m, nn.Linear) and getattr(m.forward, "__func__", None) is _linear_forward]


def _linears(model: nn.Module) -> list[str]:
    return [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]


@pytest.fixture(params=["emulated", "native"])
def cpu_kind(request, monkeypatch):
    monkeypatch.setattr(cpu_bf16, "cpu_has_bf16_arithmetic", lambda: request.param == "native")
    return request.param


# ---------------------------------------------------------------------------------------------
# The decision


@pytest.mark.parametrize("device, dtype, cpu_has_bf16, expected", [
    ("cuda", BF16, False, Placement(torch.device("cuda"), BF16, autocast_dtype=BF16, float32_products=False)),
    ("cuda:1", F32, False, Placement(torch.device("cuda", 1), F32, autocast_dtype=None, float32_products=False)),
    ("cpu", BF16, False, Placement(CPU, BF16, autocast_dtype=BF16, float32_products=True)),
    ("cpu", BF16, True, Placement(CPU, BF16, autocast_dtype=BF16, float32_products=False)),
    ("cpu", F32, False, Placement(CPU, F32, autocast_dtype=None, float32_products=False)),
    ("cpu", F32, True, Placement(CPU, F32, autocast_dtype=None, float32_products=False)),
])
def test_the_decision_needs_no_hardware(device, dtype, cpu_has_bf16, expected):
    assert decide_placement(device, dtype, cpu_has_bf16=cpu_has_bf16) == expected


def test_a_gpu_decision_never_asks_the_cpu(monkeypatch):
    def probe():
        raise AssertionError("the CPU was asked about a GPU placement")

    monkeypatch.setattr(cpu_bf16, "cpu_has_bf16_arithmetic", probe)
    assert decide_placement("cuda", BF16) == Placement(torch.device("cuda"), BF16, BF16, False)
    assert decide_placement("cpu", F32) == Placement(CPU, F32, None, False)


# ---------------------------------------------------------------------------------------------
# Placing a model


def test_on_a_gpu_no_linear_is_patched(monkeypatch):
    monkeypatch.setattr(cpu_bf16, "cpu_has_bf16_arithmetic", lambda: False)
    policy = load_policy(PolicyConfig(variant="tiny", dtype="bfloat16"))  # on this emulating CPU: routed
    assert _routed(policy) == _linears(policy) != []
    moved = []
    policy.to = lambda device: moved.append(device) or policy  # no GPU here: record the move
    placement = place(policy, "cuda", BF16)
    assert moved == [torch.device("cuda")]
    assert placement == Placement(torch.device("cuda"), BF16, autocast_dtype=BF16, float32_products=False)
    assert _routed(policy) == []
    fresh = Pi0Policy(PolicyConfig(variant="tiny", dtype="bfloat16"))
    fresh.to = lambda device: fresh
    place(fresh, "cuda:0", BF16)
    assert _routed(fresh) == []


def test_on_the_cpu_only_a_bf16_model_without_bf16_arithmetic_is_routed(cpu_kind):
    for dtype, routed in (("bfloat16", cpu_kind == "emulated"), ("float32", False)):
        policy = Pi0Policy(PolicyConfig(variant="tiny", dtype=dtype))
        assert _routed(policy) == []  # building decides nothing
        placement = place(policy, "cpu", policy.config.torch_dtype)
        assert placement.float32_products == routed
        assert _routed(policy) == (_linears(policy) if routed else [])
        assert next(policy.parameters()).device == CPU


def test_placing_again_follows_the_new_decision(monkeypatch):
    monkeypatch.setattr(cpu_bf16, "cpu_has_bf16_arithmetic", lambda: False)
    policy = load_policy(PolicyConfig(variant="tiny", dtype="bfloat16"))
    assert _routed(policy)
    monkeypatch.setattr(cpu_bf16, "cpu_has_bf16_arithmetic", lambda: True)
    assert not place(policy, "cpu", BF16).float32_products
    assert _routed(policy) == []
    assert all(type(m).forward is nn.Linear.forward and "forward" not in vars(m)
               for m in policy.modules() if isinstance(m, nn.Linear))


def test_training_placement_keeps_float32_masters_of_the_trained_weights():
    model = apply_lora(Pi0Policy(PolicyConfig(type="pi05", variant="tiny")), PeftConfig(preset="openpi"))
    model.get_base_model().action_in_proj.requires_grad_(False)  # a float32 module stays float32 when frozen
    placement = place(model, "cpu", BF16, train=True)
    assert (placement.device, placement.dtype, placement.autocast_dtype) == (CPU, BF16, BF16)

    def expected(name: str) -> torch.dtype:
        if ".lora_" in name:
            return F32
        if ".dense." in name:  # a frozen AdaRMSNorm's condition layer: only the norms' own weights stay float32
            return BF16
        if "norm" in name:
            return F32
        trained_in_full = ("action_in_proj", "action_out_proj", "time_mlp_in", "time_mlp_out", ".vision.",
                           ".projector.")
        return F32 if any(part in name for part in trained_in_full) else BF16

    dtypes = {name: p.dtype for name, p in model.named_parameters()}
    assert dtypes == {name: expected(name) for name in dtypes}
    assert dtypes["base_model.model.backbone.vlm.layers.0.q_proj.base_layer.weight"] == BF16
    assert dtypes["base_model.model.backbone.expert.layers.0.input_norm.dense.weight"] == BF16


@pytest.mark.parametrize("kind", ["pi0", "pi05"])
def test_sample_actions_of_a_float32_model_are_unchanged(kind, tmp_path):
    built = _tiny(kind)  # an independent float32 build that no placement touched
    expected = _sample(built)
    torch.testing.assert_close(expected[0], torch.tensor(RECORDED_AT_72559EC[kind]), rtol=0, atol=1e-4)
    save_policy(built, tmp_path)
    assert torch.equal(_sample(load_policy(tmp_path).eval()), expected)
    placed = _tiny(kind)
    place(placed, "cpu", F32)
    assert torch.equal(_sample(placed), expected)


# ---------------------------------------------------------------------------------------------
# --policy.device


def test_device_flags_resolve_against_the_machine(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == CPU
    assert resolve_device("cpu") == CPU
    with pytest.raises(ConfigError, match=r"^--policy.device=cuda:1: found no CUDA device \(.+\); available: auto, cpu$"):
        resolve_device("cuda:1")
    with pytest.raises(ConfigError, match=re.escape("--policy.device='gpu': expected auto, cpu, cuda or cuda:N")):
        resolve_device("gpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    message = "--policy.device=cuda:2: found 2 CUDA devices; available: auto, cpu, cuda, cuda:0, cuda:1"
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        resolve_device("cuda:2")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
@pytest.mark.parametrize("command, args", [
    ("train", ["--output_dir={tmp}/out", "--policy.variant=tiny"]),
    ("eval", ["--policy.path={tmp}", "--output_dir={tmp}/out"]),
    ("eval-offline", ["--policy.path={tmp}"]),
    ("serve", ["--policy.path={tmp}"]),
    ("recon-viz", ["--policy.path={tmp}", "--dataset.root={tmp}"]),
])
def test_a_missing_gpu_is_one_clear_error(command, args, tmp_path, capsys):
    code = main([command, *(a.format(tmp=tmp_path) for a in args), "--policy.device=cuda"])
    err = capsys.readouterr().err
    assert code == 2
    assert re.fullmatch(rf"pirecon {command}: error: --policy.device=cuda: found no CUDA device \(.+\); "
                        r"available: auto, cpu\n", err), err
    assert not (tmp_path / "out").exists()


def test_training_autocast_follows_the_decision(sim_dataset, sim_tokenizer, tmp_path):
    from accelerate.state import AcceleratorState

    from pirecon.train.command import parse_train_flags
    from pirecon.train.loop import Trainer
    from tests.train.helpers import tiny_train_flags

    for dtype, mixed in (("bfloat16", "bf16"), ("float32", "no")):
        AcceleratorState._reset_state(reset_partial_state=True)  # one Accelerator setting per process otherwise
        try:
            trainer = Trainer(parse_train_flags(tiny_train_flags(
                sim_dataset, sim_tokenizer, tmp_path / dtype, f"--policy.dtype={dtype}", "--peft.preset=openpi",
                "--policy.device=cpu")))
            assert trainer.accelerator.mixed_precision == mixed
        finally:
            AcceleratorState._reset_state(reset_partial_state=True)
        assert trainer.placement.device == CPU
        assert trainer.placement.autocast_dtype == (BF16 if dtype == "bfloat16" else None)
        assert trainer.placement.float32_products == (dtype == "bfloat16" and not cpu_bf16.cpu_has_bf16_arithmetic())
        base = trainer.model.get_base_model()
        assert base.backbone.vlm.layers[0].q_proj.base_layer.weight.dtype == getattr(torch, dtype)
        assert base.backbone.vlm.layers[0].q_proj.lora_A["default"].weight.dtype == F32
