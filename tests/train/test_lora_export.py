import pytest
import torch

import pirecon
from pirecon import PolicyConfig
from pirecon.batch import synthetic_batch
from pirecon.model.pi0 import Pi0Policy
from pirecon.model.placement import place
from pirecon.train.checkpoint import last_checkpoint, load_checkpoint_model
from pirecon.train.command import parse_train_flags
from pirecon.configs.train import PeftConfig
from pirecon.train.export import export
from pirecon.train.peft_plan import apply_lora
from pirecon.train.loop import train
from tests.train.helpers import tiny_train_flags


def _trainable(model):
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_openpi_preset_adapts_both_gemma_stacks_and_trains_vision_and_projections():
    policy = Pi0Policy(PolicyConfig(type="pi05", variant="tiny"))
    model = apply_lora(policy, PeftConfig(preset="openpi"))
    adapted = {n.split(".lora_A")[0] for n in _trainable(model) if ".lora_A" in n}
    depth = policy.config.vlm.depth
    assert len(adapted) == 2 * depth * 7  # q, k, v, o, gate, up, down in VLM and expert layers
    assert not any(".vision." in n for n in adapted)
    trainable = _trainable(model)
    # Projections around the expert and the time MLPs train in full; Gemma weights are frozen.
    for name in ("action_in_proj.weight", "action_out_proj.weight", "time_mlp_in.weight", "time_mlp_out.weight"):
        assert f"base_model.model.{name}" in trainable
    assert not any("base_layer" in n for n in trainable)
    assert "base_model.model.backbone.vlm.embed_tokens.weight" not in trainable
    assert "base_model.model.backbone.vision.layers.0.fc1.weight" in trainable
    # openpi's ranks: 16 on the VLM (gemma_2b_lora), 32 on the expert (gemma_300m_lora), alpha = rank.
    layers = model.get_base_model().backbone
    assert layers.vlm.layers[0].q_proj.r["default"] == 16 and layers.expert.layers[0].q_proj.r["default"] == 32
    assert layers.expert.layers[0].q_proj.scaling["default"] == 1.0


def test_openpi_preset_respects_freeze_flags():
    policy = Pi0Policy(PolicyConfig(variant="tiny", freeze_vision_encoder=True))
    trainable = _trainable(apply_lora(policy, PeftConfig(preset="openpi", r=4)))
    assert not any(".vision." in n for n in trainable)
    assert "base_model.model.state_proj.weight" in trainable and "base_model.model.backbone.projector.weight" in trainable


def test_bf16_frozen_base_keeps_fp32_trainable_copies():
    model = apply_lora(Pi0Policy(PolicyConfig(variant="tiny")), PeftConfig(preset="openpi"))
    place(model, "cpu", torch.bfloat16, train=True)
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.dtype == torch.float32, name
    base = model.get_base_model()
    assert base.backbone.vlm.layers[0].q_proj.base_layer.weight.dtype == torch.bfloat16
    assert base.backbone.vlm.layers[0].input_norm.weight.dtype == torch.float32
    batch = synthetic_batch(base.config, 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(batch)["loss"]
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for n, p in model.named_parameters() if "lora_A" in n and ".expert." in n)


@pytest.mark.parametrize("use_ema", [False, True])
def test_export_merged_equals_adapter_model(sim_dataset, sim_tokenizer, tmp_path, use_ema):
    out = tmp_path / "run"
    train(parse_train_flags(tiny_train_flags(sim_dataset, sim_tokenizer, out, "--steps=3", "--policy.use_peft",
                                             "--ema_decay=0.5", kind="pi05")))
    folder = last_checkpoint(out)
    adapter_model = load_checkpoint_model(folder, use_ema=use_ema).eval()
    exported = export(folder, tmp_path / "exported", merge_lora=True, use_ema=use_ema)
    merged = pirecon.load_policy(exported).eval()
    assert not any(".lora_" in k for k in merged.state_dict())
    batch = synthetic_batch(merged.config, 2)
    noise = torch.randn(2, merged.config.chunk_size, merged.config.max_action_dim)
    expected = adapter_model.sample_actions(batch, noise=noise)
    assert torch.allclose(merged.sample_actions(batch, noise=noise), expected, atol=1e-4)
    assert {"norm_stats.json", "tokenizer.model", "data_info.json"} <= {p.name for p in exported.iterdir()}
    # The EMA weights differ from the raw ones, so the flag really switched weights.
    if use_ema:
        raw = load_checkpoint_model(folder).eval()
        assert not torch.allclose(raw.sample_actions(batch, noise=noise), expected, atol=1e-4)


def test_load_policy_reads_a_lora_checkpoint(sim_dataset, sim_tokenizer, tmp_path):
    out = tmp_path / "run"
    train(parse_train_flags(tiny_train_flags(sim_dataset, sim_tokenizer, out, "--steps=1", "--policy.use_peft")))
    policy = pirecon.load_policy(last_checkpoint(out))
    assert isinstance(policy, Pi0Policy) and not any(".lora_" in k for k in policy.state_dict())
