"""`pirecon export --format=lerobot|openpi`: weights under their names, their config and statistics
files, read back by `load_policy` and by pirecon's own folder reader."""

import json
import re
import shutil

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from pirecon import load_policy, save_policy
from pirecon.batch import synthetic_batch
from pirecon.data.normalize import save_norm_stats_json
from pirecon.errors import CheckpointError, ConfigError
from pirecon.inference import preprocessor_from_checkpoint
from pirecon.checkpoint import folder_info
from pirecon.checkpoint.folder_config import policy_config
from pirecon import export as export_cmd
from pirecon.checkpoint.export import export
from tests.checkpoint.foreign_helpers import lerobot_folder, stats_arrays, tiny_policy

CAMERA_MAP = {"observation.images.top": "base_0_rgb", "observation.images.wrist": "left_wrist_0_rgb"}


def _source(folder, kind, sim_tokenizer, stats=None, mode=None):
    """A pirecon checkpoint folder as `pirecon train` leaves it (stats, data info, tokenizer copy)."""
    policy = tiny_policy(kind)
    save_policy(policy, folder, extra_config={"tokenizer": "tokenizer.model"})
    shutil.copyfile(sim_tokenizer, folder / "tokenizer.model")
    save_norm_stats_json(stats or stats_arrays(3, 3), folder / "norm_stats.json")
    (folder / "data_info.json").write_text(json.dumps({
        "camera_keys": ["observation.images.top", "observation.images.wrist"], "camera_map": CAMERA_MAP,
        "action_dims": None, "state_dims": None, "action_dim": 3, "normalization_mode": mode}))
    return policy


def _reference_keys(cfg) -> set[str]:
    """The tensor names of an openpi PyTorch checkpoint, from REFERENCE.md §2."""
    vis = "paligemma_with_expert.paligemma.model.vision_tower.vision_model."
    keys = {vis + "embeddings.patch_embedding.weight", vis + "embeddings.patch_embedding.bias",
            vis + "embeddings.position_embedding.weight", vis + "post_layernorm.weight", vis + "post_layernorm.bias"}
    for i in range(cfg.vision.depth):
        for part in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "mlp.fc1",
                     "mlp.fc2", "layer_norm1", "layer_norm2"):
            keys |= {f"{vis}encoder.layers.{i}.{part}.weight", f"{vis}encoder.layers.{i}.{part}.bias"}
    proj = "paligemma_with_expert.paligemma.model.multi_modal_projector.linear."
    keys |= {proj + "weight", proj + "bias"}
    lm = "paligemma_with_expert.paligemma.model.language_model."
    expert = "paligemma_with_expert.gemma_expert.model."
    keys |= {lm + "embed_tokens.weight", lm + "norm.weight", "paligemma_with_expert.gemma_expert.lm_head.weight"}
    norm = ".dense.weight" if cfg.type == "pi05" else ".weight"  # pi05: adaRMS everywhere in the expert
    keys |= {expert + "norm" + norm} | ({expert + "norm.dense.bias"} if cfg.type == "pi05" else set())
    for stack, depth in ((lm, cfg.vlm.depth), (expert, cfg.expert.depth)):
        for i in range(depth):
            for part in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                         "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"):
                keys.add(f"{stack}layers.{i}.{part}.weight")
            for n in ("input_layernorm", "post_attention_layernorm"):
                if stack == expert and cfg.type == "pi05":
                    keys |= {f"{stack}layers.{i}.{n}.dense.weight", f"{stack}layers.{i}.{n}.dense.bias"}
                else:
                    keys.add(f"{stack}layers.{i}.{n}.weight")
    heads = ["action_in_proj", "action_out_proj"] + (["time_mlp_in", "time_mlp_out"] if cfg.type == "pi05" else
                                                    ["state_proj", "action_time_mlp_in", "action_time_mlp_out"])
    keys |= {f"{h}.{p}" for h in heads for p in ("weight", "bias")}
    return keys


def _same_actions(a, b, cfg):
    batch = synthetic_batch(cfg, 2, action_dim=3)
    noise = torch.randn(2, cfg.chunk_size, cfg.max_action_dim)
    steps = cfg.num_inference_steps  # openpi's config.json does not carry it
    return torch.equal(a.eval().sample_actions(batch, noise=noise, num_steps=steps),
                       b.eval().sample_actions(batch, noise=noise, num_steps=steps))


@pytest.mark.parametrize("kind", ["pi0", "pi05"])
def test_lerobot_export_round_trip(kind, tmp_path, sim_tokenizer):
    stats = stats_arrays(3, 3)
    policy = _source(tmp_path / "src", kind, sim_tokenizer, stats)
    out = export(tmp_path / "src", tmp_path / "lerobot", format="lerobot")
    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        keys = set(f.keys())
    assert keys == {"model." + k for k in _reference_keys(policy.config)}
    loaded = load_policy(out)
    assert _same_actions(loaded, policy, policy.config)
    config = json.loads((out / "config.json").read_text())
    assert config["type"] == kind and (config["chunk_size"], config["n_action_steps"]) == (4, 4)
    assert (config["max_state_dim"], config["max_action_dim"], config["image_resolution"]) == (8, 8, [28, 28])
    assert config["input_features"] == {
        **{f"observation.images.{v}": {"type": "VISUAL", "shape": [3, 28, 28]} for v in policy.config.camera_names},
        "observation.state": {"type": "STATE", "shape": [3]}}
    assert config["output_features"] == {"action": {"type": "ACTION", "shape": [3]}}
    mode = "QUANTILES" if kind == "pi05" else "MEAN_STD"
    assert config["normalization_mapping"] == {"VISUAL": "IDENTITY", "STATE": mode, "ACTION": mode}
    assert config["tokenizer_max_length"] == policy.config.max_token_len
    assert ("train_expert_only" in config) == (kind == "pi0")

    pre = json.loads((out / "policy_preprocessor.json").read_text())
    names = [s["registry_name"] for s in pre["steps"]]
    if kind == "pi05":
        assert names == ["rename_observations_processor", "to_batch_processor", "normalizer_processor",
                         "pi05_prepare_state_tokenizer_processor_step", "tokenizer_processor", "device_processor"]
    else:
        assert names == ["rename_observations_processor", "to_batch_processor", "pi0_new_line_processor",
                         "tokenizer_processor", "device_processor", "normalizer_processor"]
    index = names.index("normalizer_processor")
    norm = pre["steps"][index]
    assert norm["state_file"] == f"policy_preprocessor_step_{index}_normalizer_processor.safetensors"
    assert pre["steps"][0]["config"]["rename_map"] == {
        "observation.images.top": "observation.images.base_0_rgb",
        "observation.images.wrist": "observation.images.left_wrist_0_rgb"}
    tok = pre["steps"][names.index("tokenizer_processor")]["config"]
    assert tok["tokenizer_name"] == "google/paligemma-3b-pt-224" and tok["max_length"] == policy.config.max_token_len
    flat = load_file(str(out / norm["state_file"]))
    assert set(flat) == {f"{f}.{s}" for f in ("observation.state", "action") for s in stats["state"]}
    np.testing.assert_array_equal(flat["action.q99"].numpy(), stats["actions"]["q99"])
    post = json.loads((out / "policy_postprocessor.json").read_text())
    assert post["steps"][0]["registry_name"] == "unnormalizer_processor"
    assert post["steps"][0]["state_file"] == "policy_postprocessor_step_0_unnormalizer_processor.safetensors"
    assert set(load_file(str(out / post["steps"][0]["state_file"]))) == {f"action.{s}" for s in stats["actions"]}

    # pirecon's reader gets the same preprocessing back; the tokenizer copy sits beside the weights.
    info = folder_info.read_folder_info(out)
    assert info.layout == "lerobot" and info.camera_map == CAMERA_MAP and info.action_dim == 3
    for key in stats:
        for stat, value in stats[key].items():
            np.testing.assert_allclose(info.stats[key][stat], value)
    assert folder_info.resolve_tokenizer(info) == str(out / "tokenizer.model")
    a = preprocessor_from_checkpoint(tmp_path / "src", policy.config)
    b = preprocessor_from_checkpoint(out, loaded.config)
    obs = {"observation.images.top": np.full((32, 32, 3), 200, np.uint8),
           "observation.images.wrist": np.zeros((32, 32, 3), np.uint8),
           "observation.state": np.array([0.5, -1.0, 2.0], np.float32), "task": "pick"}
    x, y = a.from_observation(obs), b.from_observation(obs)
    assert torch.equal(x.images, y.images) and torch.equal(x.state, y.state) and torch.equal(x.tokens, y.tokens)
    assert b.normalizer.mode == a.normalizer.mode


@pytest.mark.parametrize("kind", ["pi0", "pi05"])
def test_openpi_export_round_trip(kind, tmp_path, sim_tokenizer):
    stats = stats_arrays(3, 3)
    policy = _source(tmp_path / "src", kind, sim_tokenizer, stats)
    out = export(tmp_path / "src", tmp_path / "openpi", format="openpi", asset_id="physical-intelligence/sim")
    assert set(load_file(str(out / "model.safetensors"))) == _reference_keys(policy.config)
    assert json.loads((out / "config.json").read_text()) == {
        "action_dim": 8, "action_horizon": 4, "paligemma_variant": "gemma_tiny",
        "action_expert_variant": "gemma_tiny_expert", "precision": "float32"}
    norm_stats = json.loads((out / "assets/physical-intelligence/sim/norm_stats.json").read_text())["norm_stats"]
    assert sorted(norm_stats) == ["actions", "state"]
    np.testing.assert_allclose(norm_stats["state"]["q01"], stats["state"]["q01"], rtol=1e-6)
    loaded = load_policy(out)
    assert loaded.config.type == kind and _same_actions(loaded, policy, policy.config)
    info = folder_info.read_folder_info(out)
    assert info.asset_id == "physical-intelligence/sim" and info.action_dim == 3


def test_lerobot_folder_converts_to_openpi_and_pirecon(tmp_path, sim_tokenizer):
    policy = tiny_policy("pi05")
    stats = stats_arrays(8, 7)
    src = lerobot_folder(tmp_path / "lerobot", policy, stats, rename_map={
        "observation.images.image": "observation.images.base_0_rgb"})
    op = export(src, tmp_path / "openpi", format="openpi", asset_id="libero")
    assert _same_actions(load_policy(op), load_policy(src), policy_config(src))
    np.testing.assert_allclose(folder_info.read_folder_info(op).stats["actions"]["q99"], stats["actions"]["q99"])
    ours = export(src, tmp_path / "pirecon", tokenizer_path=str(sim_tokenizer))
    loaded = load_policy(ours)
    assert loaded.config == policy_config(src)
    info = folder_info.read_folder_info(ours)
    assert info.layout == "pirecon" and info.camera_map == {"observation.images.image": "base_0_rgb"}
    assert info.normalization_mode == "quantile" and info.action_dim == 7
    assert json.loads((ours / "config.json").read_text())["tokenizer"] == "tokenizer.model"
    np.testing.assert_allclose(info.stats["state"]["q01"], stats["state"]["q01"])
    # A LeRobot source keeps its tokenizer_name unless --tokenizer_name says otherwise.
    again = export(src, tmp_path / "again", format="lerobot", tokenizer_name="/models/paligemma")
    tok = [s for s in json.loads((again / "policy_preprocessor.json").read_text())["steps"]
           if s["registry_name"] == "tokenizer_processor"][0]
    assert tok["config"]["tokenizer_name"] == "/models/paligemma"


def test_export_flags_and_errors(tmp_path, sim_tokenizer):
    _source(tmp_path / "src", "pi0", sim_tokenizer)
    with pytest.raises(ConfigError, match=r"--asset_id: expected the name for assets/<asset_id>/norm_stats.json"):
        export(tmp_path / "src", tmp_path / "a", format="openpi")
    with pytest.raises(ConfigError, match=r"--format='onnx': expected one of \['pirecon', 'lerobot', 'openpi'\]"):
        export(tmp_path / "src", tmp_path / "b", format="onnx")
    with pytest.raises(ConfigError, match=r"--keep_recon_head=true: the lerobot layout"):
        export(tmp_path / "src", tmp_path / "c", format="lerobot", keep_recon_head=True)
    assert export_cmd.run([f"--policy.path={tmp_path / 'src'}", f"--output={tmp_path / 'd'}", "--format=openpi",
                           "--asset_id=org/sim"]) == 0
    assert (tmp_path / "d" / "assets" / "org" / "sim" / "norm_stats.json").is_file()
    assert not (tmp_path / "d.partial").exists()


def test_selected_dims_are_exported_as_cut_statistics(tmp_path, sim_tokenizer):
    stats = stats_arrays(5, 6)
    _source(tmp_path / "src", "pi0", sim_tokenizer, stats)
    info = json.loads((tmp_path / "src" / "data_info.json").read_text())
    info.update(action_dims=[0, 2, 4], state_dims=[1, 3], action_dim=3)
    (tmp_path / "src" / "data_info.json").write_text(json.dumps(info))
    out = export(tmp_path / "src", tmp_path / "out", format="lerobot")
    config = json.loads((out / "config.json").read_text())
    assert config["output_features"]["action"]["shape"] == [3]
    assert config["input_features"]["observation.state"]["shape"] == [2]
    read = folder_info.read_folder_info(out).stats
    np.testing.assert_allclose(read["actions"]["mean"], stats["actions"]["mean"][[0, 2, 4]])
    np.testing.assert_allclose(read["state"]["std"], stats["state"]["std"][[1, 3]])


def test_state_file_names_follow_lerobot(tmp_path, sim_tokenizer):
    _source(tmp_path / "src", "pi05", sim_tokenizer)
    out = export(tmp_path / "src", tmp_path / "out", format="lerobot")
    files = sorted(p.name for p in out.iterdir() if p.suffix == ".safetensors" and p.name != "model.safetensors")
    assert all(re.fullmatch(r"policy_(pre|post)processor_step_\d+_(un)?normalizer_processor\.safetensors", f)
               for f in files) and len(files) == 2


def test_lerobot_export_counts_empty_cameras(tmp_path):
    """--policy.empty_cameras views are LeRobot's `empty_cameras`, not VISUAL input features."""
    policy = tiny_policy("pi0", camera_names=("top",), empty_cameras=2)
    save_policy(policy, tmp_path / "src")
    out = export(tmp_path / "src", tmp_path / "lerobot", format="lerobot")
    written = json.loads((out / "config.json").read_text())
    assert written["empty_cameras"] == 2
    assert sorted(written["input_features"]) == ["observation.images.top", "observation.state"]
    assert policy_config(out).camera_names == ("top", "empty_camera_0", "empty_camera_1")


@pytest.mark.parametrize("kind", ["pi0", "pi05"])
def test_lerobot_export_keeps_rtc_training_max_delay_where_lerobot_has_it(kind, tmp_path, caplog):
    """LeRobot's PI05Config has rtc_training_max_delay (main branch); its PI0Config has not: a Pi0
    export drops it with a warning, and a LeRobot folder's value is read back."""
    save_policy(tiny_policy(kind, rtc_training_max_delay=2), tmp_path / "src")
    out = export(tmp_path / "src", tmp_path / "lerobot", format="lerobot")
    written = json.loads((out / "config.json").read_text())
    if kind == "pi05":
        assert written["rtc_training_max_delay"] == 2 and policy_config(out).rtc_training_max_delay == 2
        assert "rtc_training_max_delay" not in caplog.text
    else:
        assert "rtc_training_max_delay" not in written and policy_config(out).rtc_training_max_delay == 0
        assert "rtc_training_max_delay=2, which the lerobot layout of a pi0 policy cannot record" in caplog.text


def test_lerobot_export_writes_and_reads_back_the_compile_and_checkpointing_settings(tmp_path):
    save_policy(tiny_policy("pi0", compile_model=True, compile_mode="reduce-overhead", gradient_checkpointing=True),
                tmp_path / "src")
    out = export(tmp_path / "src", tmp_path / "lerobot", format="lerobot")
    written = json.loads((out / "config.json").read_text())
    assert (written["compile_model"], written["compile_mode"], written["gradient_checkpointing"]) == (
        True, "reduce-overhead", True)
    read = policy_config(out)
    assert (read.compile_model, read.compile_mode, read.gradient_checkpointing) == (True, "reduce-overhead", True)


def test_a_lerobot_folder_with_a_non_boolean_switch_is_refused_naming_the_key(tmp_path):
    save_policy(tiny_policy("pi0"), tmp_path / "src")
    out = export(tmp_path / "src", tmp_path / "lerobot", format="lerobot")
    config = json.loads((out / "config.json").read_text())
    config["compile_model"] = "false"
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"config.json: compile_model='false'; expected true or false"):
        policy_config(out)
