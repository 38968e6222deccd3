"""`pirecon plan`: counts of tiny models against values worked out by hand from their sizes, the
FLOPs and bytes of a single linear layer, the extrapolation from shallow passes against a direct
count, and the command: train's flags, `--plan.*` errors, suggestions that make a run fit, no
weights read."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest
import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode

from pirecon.cli import main
from pirecon.configs.parse import to_dict
from pirecon.configs.plan import GPUS, PlanConfig, parse_gpu
from pirecon.configs.policy import PolicyConfig
from pirecon.configs.train import OptimizerConfig, PeftConfig
from pirecon.configs.variants import GEMMA_VARIANTS, VISION_VARIANTS
from pirecon.errors import ConfigError
from pirecon.train.plan import Planner, Setting
from pirecon.train.plan_count import GPU, PEAK_LAYERS, SUM_LAYERS, MemoryTracker, ModelCount, StepSpec, Weights, \
    build_model

TINY = ["--policy.variant=tiny"]


def linear(n_in: int, n_out: int, bias: bool = True) -> int:
    return n_in * n_out + (n_out if bias else 0)


def tiny_parameters(cfg: PolicyConfig) -> int:
    """The parameter count of a Pi0 / Pi0.5 policy, from the sizes alone."""
    v, g, e = cfg.vision, cfg.vlm, cfg.expert
    grid = cfg.image_resolution // v.patch_size
    siglip = (3 * v.patch_size ** 2 * v.width + v.width) + grid * grid * v.width + 2 * v.width  # patches, positions, post-norm
    siglip += v.depth * (2 * 2 * v.width + 4 * linear(v.width, v.width) + linear(v.width, v.mlp_dim)
                         + linear(v.mlp_dim, v.width))

    def gemma_layer(s, norm: int) -> int:
        attention = s.width * s.num_heads * s.head_dim * 2 + s.width * s.num_kv_heads * s.head_dim * 2
        return 2 * norm + attention + 3 * s.width * s.mlp_dim

    vlm = g.vocab_size * g.width + g.depth * gemma_layer(g, g.width) + g.width
    if cfg.type == "pi05":  # adaptive norms: Linear(width -> 3 width) each
        norm = linear(e.width, 3 * e.width)
        heads = 2 * linear(e.width, e.width)  # time_mlp_in, time_mlp_out
    else:
        norm = e.width
        heads = linear(cfg.max_state_dim, e.width) + linear(2 * e.width, e.width) + linear(e.width, e.width)
    expert = e.depth * gemma_layer(e, norm) + norm
    actions = linear(cfg.max_action_dim, e.width) + linear(e.width, cfg.max_action_dim)
    return siglip + linear(v.width, g.width) + vlm + expert + actions + heads


@pytest.mark.parametrize("kind", ["pi0", "pi05"])
def test_parameter_count_of_a_tiny_model_from_its_sizes(kind):
    cfg = PolicyConfig(type=kind, variant="tiny")
    weights = Weights.of(build_model(cfg, None, train=True))
    assert weights.params == tiny_parameters(cfg)
    assert weights.trainable_params == weights.params  # no LoRA: every weight trains, in float32
    assert weights.bytes == 4 * weights.params


def test_lora_trainable_count_for_a_known_rank():
    """LeRobot's default targets on Pi0.5: q_proj and v_proj of every expert layer, action_in_proj
    and action_out_proj; r(in + out) weights per adapted layer, all float32."""
    cfg = PolicyConfig(type="pi05", variant="tiny", use_peft=True, dtype="bfloat16")
    r, e = 4, cfg.expert
    expected = e.depth * r * ((e.width + e.num_heads * e.head_dim) + (e.width + e.num_kv_heads * e.head_dim))
    expected += r * (cfg.max_action_dim + e.width) * 2
    weights = Weights.of(build_model(cfg, PeftConfig(r=r), train=True))
    assert weights.trainable_params == expected
    assert weights.trainable_bytes == 4 * expected
    assert weights.params == tiny_parameters(cfg) + expected


def test_weights_bytes_in_bfloat16_and_float32():
    """Serving: float32 holds 4 bytes per weight; bfloat16 2, except the modules the reference keeps
    in float32 (SigLIP's patch and position embeddings and layer norms, the Gemma norms, the
    projections around the expert): Pi0, whose norms are plain RMSNorms."""
    cfg = PolicyConfig(type="pi0", variant="tiny")
    v, g, e = cfg.vision, cfg.vlm, cfg.expert
    grid = cfg.image_resolution // v.patch_size
    kept = 3 * v.patch_size ** 2 * v.width + v.width + grid * grid * v.width + (4 * v.depth + 2) * v.width
    kept += (2 * g.depth + 1) * g.width + (2 * e.depth + 1) * e.width
    kept += linear(cfg.max_action_dim, e.width) + linear(e.width, cfg.max_action_dim)
    kept += linear(cfg.max_state_dim, e.width) + linear(2 * e.width, e.width) + linear(e.width, e.width)
    full = Weights.of(build_model(cfg, None, train=False))
    half = Weights.of(build_model(dataclasses.replace(cfg, dtype="bfloat16"), None, train=False))
    n = tiny_parameters(cfg)
    assert full.bytes == 4 * n
    assert half.bytes == 2 * n + 2 * kept


def test_flops_and_bytes_of_a_single_linear_layer():
    tracker = MemoryTracker()
    with FakeTensorMode():
        layer = nn.Linear(64, 32)
        x = torch.zeros(8, 10, 64, requires_grad=True)
        tracker.hold(list(layer.parameters()) + [x], "weights")
        with tracker:
            tracker.phase, tracker.category = "forward", "activations"
            y = layer(x)
            assert tracker.live["activations"] == 8 * 10 * 32 * 4  # the output; x and the weight are saved, not copied
            tracker.phase, tracker.category = "backward", "temporary"
            y.sum().backward()
    assert tracker.flops["forward"] == 2 * 8 * 10 * 64 * 32
    assert tracker.flops["backward"] == 2 * (2 * 8 * 10 * 64 * 32)  # the input's and the weight's gradients
    assert tracker.live["weights"] == (64 * 32 + 32 + 8 * 10 * 64) * 4


def test_tracker_follows_storages_not_views():
    tracker = MemoryTracker()
    with FakeTensorMode(), tracker:
        a = torch.zeros(1000)
        b = a.view(10, 100)
        c = torch.zeros(500, dtype=torch.bfloat16)
        assert tracker.total == 4000 + 1000
        del a, b
        assert tracker.total == 1000
        del c
    assert tracker.total == 0 and tracker.peaks["setup"]["total"] == 5000


@pytest.fixture
def deeper_tiny(monkeypatch):
    """A tiny Pi0.5 with 4 Gemma and 4 SigLIP layers (deeper than the shallow passes)."""
    monkeypatch.setitem(GEMMA_VARIANTS, "gemma_tiny4", dataclasses.replace(GEMMA_VARIANTS["gemma_tiny"], depth=4))
    monkeypatch.setitem(GEMMA_VARIANTS, "gemma_tiny4_expert",
                        dataclasses.replace(GEMMA_VARIANTS["gemma_tiny_expert"], depth=4))
    monkeypatch.setitem(VISION_VARIANTS, "siglip_tiny4", dataclasses.replace(VISION_VARIANTS["siglip_tiny"], depth=4))
    return PolicyConfig(type="pi05", vision_variant="siglip_tiny4", paligemma_variant="gemma_tiny4",
                        action_expert_variant="gemma_tiny4_expert", dtype="bfloat16", use_peft=True,
                        camera_names=("base_0_rgb", "left_wrist_0_rgb"), tokenizer_max_length=24)


def test_extrapolated_counts_equal_a_direct_count(deeper_tiny):
    """With gradient checkpointing, where the backward's peak moves with the depth."""
    count = ModelCount(deeper_tiny, PeftConfig(r=4, preset="openpi"), GPU)
    spec = StepSpec(2, 1, OptimizerConfig(type="adamw"), ema=False, gradient_checkpointing=True)
    direct = count.direct(lambda: count.count_step(spec))
    from_peaks = count.extrapolated(lambda: count.count_step(spec), PEAK_LAYERS, 4, 4)
    from_sums = count.extrapolated(lambda: count.count_step(spec, forward_only=True), SUM_LAYERS, 4, 4)
    for key in ("weights", "optimizer", "gradients", "saved", "flops.forward", "flops.backward"):
        assert from_peaks[key] == pytest.approx(direct[key], rel=1e-9), key
    assert from_sums["saved"] == pytest.approx(direct["saved"], rel=1e-9)
    assert from_sums["flops.forward"] == pytest.approx(direct["flops.forward"], rel=1e-9)
    for phase in ("forward", "backward", "optimizer"):
        assert from_peaks[f"peak.{phase}.total"] == pytest.approx(direct[f"peak.{phase}.total"], rel=0.02), phase


def test_gpu_names_and_sizes():
    assert parse_gpu("H100") == GPUS["H100"] and parse_gpu("rtx-4090") == GPUS["RTX4090"]
    assert parse_gpu("a100 40gb") == GPUS["A100-40GB"]
    assert parse_gpu("24GB").memory_mib == 24 * 1024 and parse_gpu("24GB").bf16_tflops == GPUS["RTX4090"].bf16_tflops
    assert parse_gpu("32GB").bf16_tflops is None and parse_gpu("cpu").is_cpu
    for bad in ("12XB", "0GB", "B200"):
        with pytest.raises(ConfigError, match="--plan.gpu"):
            parse_gpu(bad)
    with pytest.raises(ConfigError, match="--plan.fsdp"):
        PlanConfig(fsdp=True)
    with pytest.raises(ConfigError, match="--plan.utilization"):
        PlanConfig(utilization=0)


def run_plan(capsys, *flags: str) -> tuple[int, str, str]:
    code = main(["plan", *flags])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_a_bad_gpu_flag_is_one_error_naming_it(capsys):
    code, _, err = run_plan(capsys, *TINY, "--plan.gpu=12XB")
    assert code == 2 and "--plan.gpu='12XB'" in err and "Traceback" not in err
    code, _, err = run_plan(capsys, *TINY, "--plan.gpux=H100")
    assert code == 2 and "unknown flag --plan.gpux" in err


def test_train_flags_mean_the_same_and_fail_the_same(capsys):
    for flags in (["--policy.gradient_checkpointng=true"], ["--use_policy_training_preset=false"],
                  ["--policy.dtype=float16"]):
        train_code, _, train_err = run_plan(capsys, *TINY, *flags)  # `plan` first: the same parser runs
        code = main(["train", *TINY, *flags])
        err = capsys.readouterr().err
        assert code == train_code == 2
        assert err.split("error: ", 1)[1] == train_err.split("error: ", 1)[1]


def first_suggestion(out: str) -> list[str]:
    lines = out.split("changes that make it fit, cheapest first (each on its own):\n", 1)[1].splitlines()
    return re.findall(r"--[\w.]+=\S+", lines[0].split(" peak ")[0])


def test_a_run_too_big_for_the_gpu_gets_changes_that_make_it_fit(capsys):
    flags = ["--policy.type=pi05", *TINY, "--batch_size=64", "--plan.gpu=2GB"]
    code, out, _ = run_plan(capsys, *flags)
    assert code == 0 and "does NOT fit" in out
    suggested = first_suggestion(out)
    assert suggested == ["--policy.gradient_checkpointing=true"]  # the cheapest: the same run, more compute
    peak = re.search(r"--policy.gradient_checkpointing=true\s+peak ([\d.]+) (GiB|MiB)", out)
    code, again, _ = run_plan(capsys, *flags, *suggested)
    assert code == 0 and "does NOT fit" not in again and ": fits" in again
    assert f"{peak.group(1)} {peak.group(2)}" in again.split("  peak")[1].splitlines()[0]


def test_plan_reads_the_folder_config_never_the_weights(tmp_path, capsys):
    folder = tmp_path / "pretrained"
    folder.mkdir()
    cfg = PolicyConfig(type="pi05", variant="tiny")
    (folder / "config.json").write_text(json.dumps({"format": "pirecon", "policy": to_dict(cfg)}))
    code, out, err = run_plan(capsys, f"--policy.pretrained_path={folder}", "--policy.use_peft=true",
                              "--plan.gpu=H100")
    assert code == 0, err
    assert "pi05 (siglip_tiny / gemma_tiny / gemma_tiny_expert), LoRA" in out
    (folder / "model.safetensors").write_bytes(b"not a safetensors file")
    code, again, err = run_plan(capsys, f"--policy.pretrained_path={folder}", "--policy.use_peft=true",
                                "--plan.gpu=H100")
    assert code == 0, err
    assert again.split("\n", 1)[1] == out.split("\n", 1)[1]  # all but the timing line


def test_fsdp_and_ddp_memory_per_process():
    """FSDP over 4: a quarter of the weights and optimizer states, plus the unsharded root (all but
    the layers) and two layer units; DDP: a replica plus the gradient buckets."""
    cfg = PolicyConfig(type="pi0", variant="tiny")
    v, g, e = cfg.vision, cfg.vlm, cfg.expert

    def gemma_layer(s) -> int:
        return 2 * s.width + 2 * s.width * s.num_heads * s.head_dim + 2 * s.width * s.num_kv_heads * s.head_dim \
            + 3 * s.width * s.mlp_dim

    siglip_layer = 4 * v.width + 4 * linear(v.width, v.width) + linear(v.width, v.mlp_dim) + linear(v.mlp_dim, v.width)
    pair = gemma_layer(g) + gemma_layer(e)
    total = 4 * tiny_parameters(cfg)  # every weight trains: float32
    root = total - 4 * (g.depth * pair + v.depth * siglip_layer)
    planner = Planner(parse_gpu("H100"), 0.4)
    step = StepSpec(2, 1, OptimizerConfig(type="adamw"), ema=False, gradient_checkpointing=False)
    one = planner.estimate(Setting(cfg, PeftConfig(), step, 1, False))
    ddp = planner.estimate(Setting(cfg, PeftConfig(), step, 4, False))
    fsdp = planner.estimate(Setting(cfg, PeftConfig(), step, 4, True))
    assert one.sizes["weights"] == ddp.sizes["weights"] == total
    assert fsdp.sizes["weights"] == total / 4 + root + 2 * 4 * max(pair, siglip_layer)
    tensors = len(list(build_model(cfg, None, train=True).parameters()))
    # AdamW: exp_avg and exp_avg_sq in float32, and a float32 step count per tensor.
    assert fsdp.sizes["optimizer states"] == one.sizes["optimizer states"] / 4 == (2 * total + 4 * tensors) / 4
    assert ddp.sizes["DDP gradient buckets"] == total
    # Pi0's loss never reaches the last VLM layer's o_proj, MLP and norm, nor the VLM's final norm.
    unused = 4 * (g.num_heads * g.head_dim * g.width + 3 * g.width * g.mlp_dim + 2 * g.width)
    assert one.sizes["gradients"] == total - unused
    assert one.sizes["DDP gradient buckets"] == fsdp.sizes["DDP gradient buckets"] == 0
    assert ddp.peak == pytest.approx(one.peak + total)


def test_serve_mode_prints_memory_and_latency(capsys):
    code, out, err = run_plan(capsys, "--policy.type=pi0", *TINY, "--plan.mode=serve", "--plan.gpu=L4",
                              "--batch_size=4", "--policy.num_inference_steps=4")
    assert code == 0, err
    for text in ("prefix's KV cache", "per request", "each denoising step", ": fits", "4 denoising steps"):
        assert text in out
    assert "note     --batch_size: training flags; a served request" in out  # typed, and said to change nothing
