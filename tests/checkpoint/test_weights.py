import json
import logging

import pytest
import torch
from safetensors.torch import load_file, save_file

from pirecon import PolicyConfig, load_policy, save_policy
from pirecon.batch import synthetic_batch
from pirecon.errors import CheckpointError
from pirecon.checkpoint.keys import openpi_key


def _policy(kind):
    policy = load_policy(PolicyConfig(type=kind, variant="tiny", chunk_size=4, n_action_steps=4))
    with torch.no_grad():
        for m in policy.modules():
            if hasattr(m, "dense"):
                m.dense.weight.normal_(std=0.2)
    return policy.eval()


def _write_foreign(policy, folder, layout, drop=(), extra=None):
    state = {openpi_key(k): v for k, v in policy.state_dict().items()}
    for key in drop:
        del state[key]
    state.update(extra or {})
    if layout == "lerobot":
        state = {"model." + k: v for k, v in state.items()}
        config = {"type": policy.config.type, "chunk_size": 4, "n_action_steps": 4, "max_state_dim": 32,
                  "max_action_dim": 32, "paligemma_variant": "gemma_tiny",
                  "action_expert_variant": "gemma_tiny_expert", "image_resolution": [224, 224],
                  "tokenizer_max_length": policy.config.max_token_len}
    else:
        config = {"action_dim": 32, "action_horizon": 4, "paligemma_variant": "gemma_tiny",
                  "action_expert_variant": "gemma_tiny_expert", "precision": "float32"}
    folder.mkdir()
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize("kind", ["pi0", "pi05"])
def test_save_load_is_bit_identical(kind, tmp_path):
    policy = _policy(kind)
    save_policy(policy, tmp_path / "ckpt")
    loaded = load_policy(tmp_path / "ckpt")
    assert loaded.config == policy.config
    a, b = policy.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a)
    assert not any(p.is_meta for p in loaded.parameters())
    save_policy(loaded, tmp_path / "again")
    assert load_file(tmp_path / "ckpt" / "model.safetensors").keys() == load_file(
        tmp_path / "again" / "model.safetensors").keys()
    assert (tmp_path / "ckpt" / "model.safetensors").read_bytes() == (tmp_path / "again" / "model.safetensors").read_bytes()


def test_bf16_checkpoint_round_trip(tmp_path):
    policy = load_policy(PolicyConfig(type="pi05", variant="tiny", dtype="bfloat16"))
    save_policy(policy, tmp_path / "c")
    loaded = load_policy(tmp_path / "c")
    assert loaded.backbone.vlm.layers[0].q_proj.weight.dtype == torch.bfloat16
    assert all(torch.equal(x, y) for x, y in zip(policy.state_dict().values(), loaded.state_dict().values()))


@pytest.mark.parametrize("kind", ["pi0", "pi05"])
def test_openpi_and_lerobot_layouts_give_identical_outputs(kind, tmp_path, caplog):
    policy = _policy(kind)
    expert_vocab = policy.config.expert.vocab_size
    unused = {"paligemma_with_expert.gemma_expert.lm_head.weight": torch.zeros(expert_vocab, policy.config.expert.width)}
    _write_foreign(policy, tmp_path / "openpi", "openpi", extra=unused)
    _write_foreign(policy, tmp_path / "lerobot", "lerobot")
    with caplog.at_level(logging.INFO, logger="pirecon.checkpoint.weights"):
        from_openpi = load_policy(tmp_path / "openpi").eval()
    assert "gemma_expert.lm_head.weight" in caplog.text
    from_lerobot = load_policy(tmp_path / "lerobot").eval()
    assert from_openpi.config.type == from_lerobot.config.type == kind
    batch = synthetic_batch(policy.config, 2, action_dim=7)
    noise = torch.randn(2, 4, 32)
    reference = policy.sample_actions(batch, noise=noise)
    assert torch.equal(from_openpi.sample_actions(batch, noise=noise), reference)
    assert torch.equal(from_lerobot.sample_actions(batch, noise=noise), reference)


def test_tied_lm_head_replaces_missing_embeddings(tmp_path):
    policy = _policy("pi0")
    embed = "paligemma_with_expert.paligemma.model.language_model.embed_tokens.weight"
    weight = policy.state_dict()["backbone.vlm.embed_tokens.weight"]
    _write_foreign(policy, tmp_path / "c", "lerobot", drop=[embed],
                   extra={"paligemma_with_expert.paligemma.lm_head.weight": weight})
    loaded = load_policy(tmp_path / "c")
    assert torch.equal(loaded.backbone.vlm.embed_tokens.weight, weight)


def test_missing_and_unexpected_keys_are_named(tmp_path):
    policy = _policy("pi0")
    missing = "paligemma_with_expert.gemma_expert.model.layers.1.mlp.up_proj.weight"
    _write_foreign(policy, tmp_path / "a", "openpi", drop=[missing])
    with pytest.raises(CheckpointError, match=r"missing keys: \['paligemma_with_expert.gemma_expert.model.layers.1.mlp.up_proj.weight'\]"):
        load_policy(tmp_path / "a")
    _write_foreign(policy, tmp_path / "b", "openpi", extra={"something.else": torch.zeros(2)})
    with pytest.raises(CheckpointError, match=r"unexpected keys: \['something.else'\]"):
        load_policy(tmp_path / "b")


def test_shape_mismatch_is_named(tmp_path):
    policy = _policy("pi0")
    key = "action_out_proj.bias"
    _write_foreign(policy, tmp_path / "a", "openpi", drop=[key], extra={key: torch.zeros(5)})
    with pytest.raises(CheckpointError, match=r"action_out_proj.bias has shape \(5,\)"):
        load_policy(tmp_path / "a")


def test_folder_without_weights_or_config(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint folder not found"):
        load_policy(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        load_policy(tmp_path / "empty")
    policy = _policy("pi0")
    save_policy(policy, tmp_path / "c")
    (tmp_path / "c" / "config.json").unlink()
    with pytest.raises(CheckpointError, match="no config.json"):
        load_policy(tmp_path / "c")


def test_dtype_override_on_load(tmp_path):
    policy = _policy("pi0")
    save_policy(policy, tmp_path / "c")
    loaded = load_policy(tmp_path / "c", dtype="bfloat16")
    assert loaded.config.dtype == "bfloat16"
    assert loaded.backbone.expert.layers[0].mlp.up_proj.weight.dtype == torch.bfloat16
    assert loaded.backbone.expert.layers[0].input_norm.weight.dtype == torch.float32


def test_the_shape_only_model_config_is_saved_with_the_weights(tmp_path):
    import json

    from pirecon.checkpoint.folder_config import policy_config
    from pirecon.checkpoint.load import load_policy
    from pirecon.checkpoint.write_pirecon import save_policy
    from pirecon.configs.policy import PolicyConfig
    from pirecon.errors import CheckpointError

    folder = save_policy(load_policy(PolicyConfig(type="pi05", variant="tiny", image_resolution=28,
                                                  max_action_dim=8, max_state_dim=8, chunk_size=4,
                                                  n_action_steps=4)), tmp_path / "f")
    config = json.loads((folder / "config.json").read_text())
    assert config["model"] == {"type": "pi05", "vision_variant": "siglip_tiny", "paligemma_variant": "gemma_tiny",
                               "action_expert_variant": "gemma_tiny_expert", "image_resolution": 28,
                               "max_state_dim": 8, "max_action_dim": 8}
    config["policy"]["max_action_dim"] = 16  # a hand edit the weights cannot follow
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"config.json: model.max_action_dim=8 but policy.max_action_dim=16"):
        policy_config(folder)
