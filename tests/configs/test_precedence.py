"""Precedence: typed flags > --config_path file > the pretrained folder's config > defaults.

A folder with non-default values is written; then every PolicyConfig field is typed with a value
different from the folder's. It must land in the resolved config, be adapted into the weights, or
fail with one error naming the flag, the folder and both values. Nothing is dropped."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from pirecon.configs.policy import FOLDER_RULES, PolicyConfig
from pirecon.errors import ConfigError
from pirecon.checkpoint.load import load_policy
from pirecon.checkpoint.weights import overrides_for
from pirecon.checkpoint.write_pirecon import save_policy
from pirecon.train.command import parse_train_command
from pirecon.train.loop import resolve_policy_config

FOLDER_VALUES = dict(type="pi0", variant="tiny", chunk_size=4, n_action_steps=3, image_resolution=28,
                     max_state_dim=8, max_action_dim=8, num_inference_steps=5, tokenizer_max_length=20,
                     camera_names=("cam_a", "cam_b"), dtype="bfloat16", freeze_vision_encoder=True,
                     gradient_checkpointing=True, time_beta_alpha=2.0, normalization_mode="quantile",
                     optimizer_lr=1e-3, scheduler_decay_steps=500)

# field: (typed text, expected resolved value, or "error" / "adapt")
TYPED = {
    "type": ("pi05", "error"),
    "variant": ("full", "error"),
    "vision_variant": ("siglip_so400m_14", "error"),
    "paligemma_variant": ("gemma_2b", "error"),
    "action_expert_variant": ("gemma_300m", "error"),
    "chunk_size": ("50", 50),  # the default: typed, so it wins over the folder's 4
    "n_action_steps": ("1", 1),
    "max_state_dim": ("16", 16),
    "max_action_dim": ("16", 16),
    "num_inference_steps": ("10", 10),  # the default again
    "tokenizer_max_length": ("30", 30),
    "image_resolution": ("56", 56),
    "camera_names": ("[x,y,z]", ("x", "y", "z")),
    "dtype": ("float32", "float32"),  # the default; the folder holds bf16
    "full_bf16": ("true", True),  # the folder's dtype (bf16) goes with it
    "device": ("cpu", "cpu"),
    "freeze_vision_encoder": ("false", False),  # the default
    "train_expert_only": ("true", True),
    "gradient_checkpointing": ("false", False),  # the default
    "compile_model": ("true", True),
    "time_beta_alpha": ("1.5", 1.5),  # the default
    "time_beta_beta": ("2.0", 2.0),
    "pretrained_path": (None, None),  # always typed here: checked below
    "tokenizer_path": ("/somewhere/tok.model", "/somewhere/tok.model"),
    "use_peft": ("true", True),
    "normalization_mode": ("mean_std", "mean_std"),
    "use_dataset_stats": ("true", True),
    "asset_id": ("some/asset", "some/asset"),
    "push_to_hub": ("true", True),
    "repo_id": ("me/model", "me/model"),
    "optimizer_lr": ("2.5e-5", 2.5e-5),  # the default; the folder holds 1e-3
    "optimizer_betas": ("[0.9,0.99]", (0.9, 0.99)),
    "optimizer_eps": ("1e-6", 1e-6),
    "optimizer_weight_decay": ("0.0", 0.0),
    "optimizer_grad_clip_norm": ("10", 10.0),
    "scheduler_warmup_steps": ("10", 10),
    "scheduler_decay_steps": ("30000", 30000),  # the default; the folder holds 500
    "scheduler_decay_lr": ("1e-6", 1e-6),
    "empty_cameras": ("1", 1),
    "compile_mode": ("default", "default"),
    "loss_reduction": ("all", "all"),
    "rtc_training_max_delay": ("2", 2),
    "normalization_mapping": ('{"VISUAL": "IDENTITY", "STATE": "MEAN_STD", "ACTION": "MEAN_STD"}',
                              {"VISUAL": "IDENTITY", "STATE": "MEAN_STD", "ACTION": "MEAN_STD"}),
    "n_obs_steps": ("2", "refused"),
    "input_features": ("null", None),
    "output_features": ("{}", {}),
    "use_amp": ("true", True),
    "path": (None, None),  # checked below
}
# Fields that move with a typed one (LeRobot's spellings of ours).
ALSO = {"empty_cameras": {"camera_names": ("cam_a", "cam_b", "empty_camera_0")},
        "normalization_mapping": {"normalization_mode": "mean_std"}}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("precedence") / "pi0_tiny"
    save_policy(load_policy(PolicyConfig(**FOLDER_VALUES)), path)
    return path


def resolve(argv):
    parsed = parse_train_command(argv)
    return resolve_policy_config(parsed.config.policy, parsed.typed)


def test_the_table_covers_every_field():
    names = {f.name for f in dataclasses.fields(PolicyConfig)}
    assert set(TYPED) == names, "a new PolicyConfig field needs a row here"
    assert set(FOLDER_RULES) == names, "a new PolicyConfig field needs a rule in configs.policy.FOLDER_RULES"


def test_untyped_fields_come_from_the_folder(folder):
    resolved = resolve([f"--policy.pretrained_path={folder}"])
    for name, value in FOLDER_VALUES.items():
        if name != "variant":
            assert getattr(resolved, name) == value, name
    assert resolved.pretrained_path == str(folder)


@pytest.mark.parametrize("name", [n for n in TYPED if n not in ("pretrained_path", "path")])
def test_a_typed_field_lands_or_fails_naming_flag_folder_and_values(folder, name):
    text, expected = TYPED[name]
    argv = [f"--policy.pretrained_path={folder}", f"--policy.{name}={text}"]
    if expected == "error":
        with pytest.raises(ConfigError) as info:
            resolve(argv)
        message = str(info.value)
        assert f"--policy.{name}={text}" in message and str(folder) in message
        if name != "variant":
            assert f"{name}={FOLDER_VALUES.get(name, getattr(PolicyConfig(**FOLDER_VALUES), name))}" in message
        return
    if expected == "refused":  # a value no Pi0 / Pi0.5 can take, folder or not
        with pytest.raises(ConfigError, match=f"--policy.{name}={text}: "):
            resolve(argv)
        return
    resolved = resolve(argv)
    assert getattr(resolved, name) == expected
    also = ALSO.get(name, {})
    for other, value in also.items():
        assert getattr(resolved, other) == value
    # ... and only that field moved away from the folder's values.
    for other, value in FOLDER_VALUES.items():
        if other not in (name, "variant", *also):
            assert getattr(resolved, other) == value, f"typing --policy.{name} changed {other}"


def test_policy_path_is_pretrained_path_as_in_lerobot(folder):
    assert resolve([f"--policy.path={folder}"]) == resolve([f"--policy.pretrained_path={folder}"])
    with pytest.raises(ConfigError, match="--policy.path=.* and --policy.pretrained_path=elsewhere: give one"):
        resolve([f"--policy.path={folder}", "--policy.pretrained_path=elsewhere"])
    with pytest.raises(ConfigError, match="--policy.input_features: pirecon reads the features from the dataset"):
        resolve([f"--policy.path={folder}", '--policy.input_features={"observation.state": {}}'])
    with pytest.raises(ConfigError, match=r"normalization_mapping=\{'ACTION': 'MEAN_STD'\}: no STATE \(LeRobot would"):
        resolve(['--policy.normalization_mapping={"ACTION": "MEAN_STD"}'])
    with pytest.raises(ConfigError, match="STATE=QUANTILES, ACTION=MEAN_STD; pirecon normalises both alike"):
        resolve(['--policy.normalization_mapping={"STATE": "QUANTILES", "ACTION": "MEAN_STD"}'])


def test_narrower_padding_is_refused(folder):
    with pytest.raises(ConfigError, match=r"--policy.max_action_dim=4 but .* max_action_dim=8; only a wider"):
        resolve([f"--policy.pretrained_path={folder}", "--policy.max_action_dim=4"])


def test_config_file_sits_between_folder_and_typed_flags(folder, tmp_path):
    config = tmp_path / "train_config.json"
    config.write_text(json.dumps({"policy": {"chunk_size": 6, "n_action_steps": 2}, "steps": 9}))
    resolved = resolve([f"--config_path={config}", f"--policy.pretrained_path={folder}"])
    assert (resolved.chunk_size, resolved.n_action_steps, resolved.num_inference_steps) == (6, 2, 5)
    resolved = resolve([f"--config_path={config}", f"--policy.pretrained_path={folder}", "--policy.chunk_size=7"])
    assert (resolved.chunk_size, resolved.n_action_steps) == (7, 2)


def test_a_checkpoint_config_json_is_a_config_file(folder, tmp_path):
    # The folder's own config.json ({"format": "pirecon", "policy": ...}) read as --config_path.
    parsed = parse_train_command([f"--config_path={folder / 'config.json'}"])
    assert parsed.config.policy.chunk_size == 4 and "policy.chunk_size" in parsed.typed
    run = {"format": "pirecon", "policy": {}, "train": {"steps": 12, "policy": {"type": "pi05"}}, "step": 3}
    (tmp_path / "config.json").write_text(json.dumps(run))
    parsed = parse_train_command([f"--config_path={tmp_path / 'config.json'}"])
    assert (parsed.config.steps, parsed.config.policy.type) == (12, "pi05")
    (tmp_path / "bad.json").write_text(json.dumps({"format": "pirecon", "train": {"stepz": 1}}))
    with pytest.raises(ConfigError, match=r"bad.json: unknown key 'stepz'; did you mean steps"):
        parse_train_command([f"--config_path={tmp_path / 'bad.json'}"])


def test_adapted_weights(folder):
    notes: list[str] = []
    parsed = parse_train_command([f"--policy.pretrained_path={folder}", "--policy.image_resolution=56",
                                  "--policy.max_action_dim=12", "--policy.max_state_dim=10",
                                  "--policy.dtype=float32"])
    cfg = resolve_policy_config(parsed.config.policy, parsed.typed, notes)
    assert any("interpolated from 28px to 56px (4 -> 16 tokens" in n for n in notes)
    assert any("max_action_dim widened from 8 to 12" in n for n in notes)
    assert any("max_state_dim widened from 8 to 10" in n for n in notes)
    original = load_policy(folder)
    policy = load_policy(folder, **overrides_for(cfg))
    assert policy.config.image_resolution == 56 and policy.backbone.vision.pos_embed.weight.shape[0] == 16
    assert policy.action_in_proj.weight.dtype == torch.float32
    assert policy.backbone.vlm.layers[0].mlp.up_proj.weight.dtype == torch.float32  # --policy.dtype=float32 took
    old_in = original.action_in_proj.weight.float()
    assert torch.equal(policy.action_in_proj.weight[:, :8], old_in)
    assert torch.equal(policy.action_in_proj.weight[:, 8:], torch.zeros(old_in.shape[0], 4))
    assert torch.equal(policy.action_out_proj.weight[8:], torch.zeros(4, old_in.shape[0]))
    assert torch.equal(policy.action_out_proj.bias[8:], torch.zeros(4))
    assert torch.equal(policy.state_proj.weight[:, 8:], torch.zeros(old_in.shape[0], 2))
    # A constant position table stays constant when resampled; the corners of a 2x2 grid keep their values.
    from pirecon.model.adapt import interpolate_positions
    constant = torch.full((4, 3), 0.5)
    assert torch.allclose(interpolate_positions(constant, 4), torch.full((16, 3), 0.5))
    ramp = torch.arange(4.0)[:, None]  # grid [[0, 1], [2, 3]]
    big = interpolate_positions(ramp, 4).reshape(4, 4)
    assert big[0, 0] < big[0, 3] < big[3, 3] and big[0, 0] < big[3, 0]


def test_a_run_on_a_folder_trains_with_the_typed_values_and_says_so(sim_dataset, sim_tokenizer, tmp_path, capsys):
    from pirecon.train.loop import train
    from tests.train.helpers import tiny_train_flags

    base = tmp_path / "base"
    save_policy(load_policy(PolicyConfig(type="pi0", variant="tiny", chunk_size=4, n_action_steps=4,
                                         image_resolution=28, max_state_dim=8, max_action_dim=8,
                                         gradient_checkpointing=True)), base)
    argv = tiny_train_flags(sim_dataset, sim_tokenizer, tmp_path / "run", f"--policy.pretrained_path={base}",
                            "--policy.chunk_size=6", "--policy.image_resolution=56",
                            "--policy.gradient_checkpointing=false", "--peft.r=8", "--steps=1")
    parsed = parse_train_command(argv)
    result = train(parsed.config, typed=parsed.typed)
    captured = capsys.readouterr()
    saved = json.loads((result.checkpoint / "config.json").read_text())["policy"]
    assert (saved["chunk_size"], saved["image_resolution"], saved["gradient_checkpointing"]) == (6, 56, False)
    assert "interpolated from 28px to 56px" in captured.out and f"weights     {base} (pirecon layout)" in captured.out
    assert '"policy": {' not in captured.out
    # --peft.r alone turns LoRA on, as in lerobot-train, and the summary says so once.
    assert "training    LoRA (lerobot preset) r=8 alpha=8" in captured.out
    assert captured.out.count("LoRA turned on by --peft.* (as lerobot-train does)") == 1


def test_a_folder_reconstruction_head_follows_the_same_precedence(tmp_path):
    from pirecon.configs.recon import ReconConfig, merge_recon_with_folder

    held = ReconConfig(enable=True, depth=2, weight=0.5, views=("cam_a",))
    # Untyped: the folder's head and settings, even though the flags' default says enable=false.
    assert merge_recon_with_folder(ReconConfig(), held, set(), "F") == held
    # Typed settings that do not shape the weights take effect.
    merged = merge_recon_with_folder(ReconConfig(weight=2.0, noise_repeats=3), held,
                                     {"recon.weight", "recon.noise_repeats"}, "F")
    assert (merged.weight, merged.noise_repeats, merged.depth) == (2.0, 3, 2)
    # --recon.enable=false drops the head; a shape-changing value is refused.
    assert merge_recon_with_folder(ReconConfig(enable=False), held, {"recon.enable"}, "F") is None
    with pytest.raises(ConfigError, match=r"--recon.depth=3 but the reconstruction head in F was built with depth=2"):
        merge_recon_with_folder(ReconConfig(depth=3), held, {"recon.depth"}, "F")
    # A folder without a head: the typed config as it is.
    assert merge_recon_with_folder(ReconConfig(enable=True), None, {"recon.enable"}, "F") == ReconConfig(enable=True)


def test_rename_map_joins_the_camera_map_as_lerobot_means_it():
    cfg = parse_train_command(['--rename_map={"observation.images.image": "observation.images.base_0_rgb", '
                               '"observation.images.image2": "observation.images.left_wrist_0_rgb"}',
                               '--dataset.camera_map={"observation.images.top": "right_wrist_0_rgb"}']).config
    assert cfg.dataset.camera_map == {"observation.images.top": "right_wrist_0_rgb",
                                      "observation.images.image": "base_0_rgb",
                                      "observation.images.image2": "left_wrist_0_rgb"}
    with pytest.raises(ConfigError, match="--rename_map sends 'a' to 'base_0_rgb' but --dataset.camera_map sends it "
                                          "to 'left_wrist_0_rgb'; give one"):
        parse_train_command(['--rename_map={"a": "observation.images.base_0_rgb"}',
                             '--dataset.camera_map={"a": "left_wrist_0_rgb"}'])
    with pytest.raises(ConfigError, match="--rename_map: 'observation.state' -> 'state'; pirecon renames cameras only"):
        parse_train_command(['--rename_map={"observation.state": "state"}'])


def test_a_train_config_of_an_earlier_pirecon_loads_with_its_lora_meaning(tmp_path):
    old = {"steps": 5, "peft": {"method_type": "lora", "r": 16, "lora_alpha": None, "lora_dropout": 0.0,
                                "target_modules": None, "fully_trained": None}}
    (tmp_path / "train_config.json").write_text(json.dumps(old))
    cfg = parse_train_command([f"--config_path={tmp_path / 'train_config.json'}"]).config
    assert (cfg.peft.preset, cfg.peft.r, cfg.peft.full_training_modules, cfg.steps) == ("openpi", 16, None, 5)
