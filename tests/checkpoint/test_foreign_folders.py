"""Reading LeRobot and openpi pretrained folders in full: config, processors, statistics, tokenizer."""

import dataclasses
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from pirecon import load_policy
from pirecon.batch import synthetic_batch
from pirecon.errors import CheckpointError, ConfigError
from pirecon.inference import preprocessor_from_checkpoint
from pirecon.checkpoint import folder_info
from pirecon.train.loop import training_normalizer
from pirecon.checkpoint.folder_config import policy_config
from tests.checkpoint.foreign_helpers import lerobot_folder, openpi_folder, stats_arrays, tiny_policy

RENAME = {"observation.images.image": "observation.images.base_0_rgb",
          "observation.images.wrist_image": "observation.images.left_wrist_0_rgb"}


@pytest.fixture
def pi05_folder(tmp_path):
    policy = tiny_policy("pi05")
    stats = stats_arrays(8, 7)
    return lerobot_folder(tmp_path / "pi05_libero", policy, stats, rename_map=RENAME), policy, stats


def test_lerobot_config_maps_onto_policy_config(pi05_folder):
    folder, policy, _ = pi05_folder
    cfg = policy_config(folder)
    assert cfg.type == "pi05" and cfg.vision_variant == "siglip_tiny"
    assert (cfg.paligemma_variant, cfg.action_expert_variant) == ("gemma_tiny", "gemma_tiny_expert")
    assert (cfg.chunk_size, cfg.n_action_steps, cfg.num_inference_steps) == (4, 2, 5)
    assert (cfg.max_state_dim, cfg.max_action_dim, cfg.image_resolution) == (8, 8, 28)
    assert cfg.tokenizer_max_length == 120 and cfg.normalization_mode == "quantile"
    assert cfg.camera_names == ("base_0_rgb", "left_wrist_0_rgb", "right_wrist_0_rgb")
    loaded = load_policy(folder).eval()
    batch = synthetic_batch(policy.config, 2)
    noise = torch.randn(2, 4, 8)
    expected = policy.sample_actions(batch, noise=noise, num_steps=5)  # the folder asks for 5 steps
    assert torch.equal(loaded.sample_actions(batch, noise=noise), expected)


def test_lerobot_empty_cameras_and_mean_std(tmp_path):
    policy = tiny_policy("pi0", camera_names=("top",))
    folder = lerobot_folder(tmp_path / "f", policy, stats_arrays(8, 7), mode="MEAN_STD",
                            config_overrides={"empty_cameras": 2})
    cfg = policy_config(folder)
    assert cfg.camera_names == ("top", "empty_camera_0", "empty_camera_1")
    assert cfg.normalization_mode == "mean_std" and cfg.type == "pi0"


def test_lerobot_statistics_rename_map_and_tokenizer_are_read(pi05_folder):
    folder, _, stats = pi05_folder
    info = folder_info.read_folder_info(folder)
    assert info.layout == "lerobot" and info.normalization_mode == "quantile"
    assert sorted(info.stats) == ["actions", "state"]  # image statistics and the count are left out
    for key in ("state", "actions"):
        assert sorted(info.stats[key]) == sorted(stats[key])
        for stat, value in stats[key].items():
            np.testing.assert_array_equal(info.stats[key][stat], value)
    assert "policy_preprocessor_step_2_normalizer_processor.safetensors" in info.stats_source
    assert (info.state_dim, info.action_dim) == (8, 7)
    assert info.camera_map == {"observation.images.image": "base_0_rgb",
                               "observation.images.wrist_image": "left_wrist_0_rgb"}
    assert info.tokenizer_name == "google/paligemma-3b-pt-224"


def test_hub_tokenizer_name_needs_tokenizer_path(pi05_folder, sim_tokenizer, tmp_path):
    folder, policy, _ = pi05_folder
    with pytest.raises(CheckpointError, match=r"policy_preprocessor.json names the tokenizer "
                                              r"'google/paligemma-3b-pt-224'.*--policy.tokenizer_path"):
        preprocessor_from_checkpoint(folder, policy_config(folder))
    pre = preprocessor_from_checkpoint(folder, policy_config(folder), tokenizer_path=str(sim_tokenizer))
    assert pre.tokenizer.vocab_size > 0
    # A tokenizer_name that is a local path needs no flag; the flag still wins over it.
    local = lerobot_folder(tmp_path / "local", policy, stats_arrays(8, 7), tokenizer_name=str(sim_tokenizer))
    assert folder_info.resolve_tokenizer(folder_info.read_folder_info(local)) == str(sim_tokenizer)
    assert folder_info.resolve_tokenizer(folder_info.read_folder_info(local), "other.model") == "other.model"


def test_preprocessor_normalises_with_the_folder_statistics(pi05_folder, sim_tokenizer):
    folder, _, stats = pi05_folder
    cfg = policy_config(folder)
    pre = preprocessor_from_checkpoint(folder, cfg, tokenizer_path=str(sim_tokenizer))
    state = np.linspace(-1, 1, 8).astype(np.float32)
    obs = {"observation.images.image": np.full((32, 32, 3), 255, np.uint8), "observation.state": state,
           "observation.images.wrist_image": np.zeros((24, 32, 3), np.uint8), "task": "pick the red block"}
    batch = pre.from_observation(obs)
    q01, q99 = stats["state"]["q01"], stats["state"]["q99"]
    expected = (state - q01) / (q99 - q01 + 1e-6) * 2 - 1
    np.testing.assert_allclose(batch.state[0].numpy(), expected, rtol=1e-5, atol=1e-6)
    assert batch.image_masks[0].tolist() == [True, True, False]  # the rename map chose the views
    assert batch.images[0, 0].min() == 1.0 and batch.images[0, 1].max() == -1.0
    actions = torch.zeros(1, 4, 8)  # normalised 0 = the middle of [q01, q99]
    robot = pre.postprocess_actions(actions)
    a01, a99 = stats["actions"]["q01"], stats["actions"]["q99"]
    assert robot.shape == (1, 4, 7)
    np.testing.assert_allclose(robot[0, 0], (a01 + a99 + 1e-6) / 2, rtol=1e-5, atol=1e-5)


def test_unsupported_normalization_mapping_names_the_file_and_flag(tmp_path, sim_tokenizer):
    folder = lerobot_folder(tmp_path / "f", tiny_policy("pi05"), stats_arrays(8, 7), mode="MIN_MAX")
    cfg = policy_config(folder)
    assert cfg.normalization_mode is None
    with pytest.raises(ConfigError, match=r"config.json: normalization_mapping STATE=MIN_MAX.*"
                                          r"--policy.normalization_mode"):
        preprocessor_from_checkpoint(folder, cfg, tokenizer_path=str(sim_tokenizer))
    pre = preprocessor_from_checkpoint(folder, dataclasses.replace(cfg, normalization_mode="mean_std"),
                                       tokenizer_path=str(sim_tokenizer))
    assert pre.normalizer.mode == "mean_std"


def test_pre_and_postprocessor_statistics_must_agree(tmp_path):
    other = stats_arrays(8, 7, seed=1)
    folder = lerobot_folder(tmp_path / "f", tiny_policy("pi05"), stats_arrays(8, 7), post_stats=other)
    with pytest.raises(CheckpointError, match=r"policy_preprocessor_step_2_normalizer_processor.safetensors and "
                                              r".*policy_postprocessor_step_0_unnormalizer_processor.safetensors "
                                              r"hold different 'actions'"):
        folder_info.read_folder_info(folder)


def test_missing_statistics_file_is_named(tmp_path):
    folder = lerobot_folder(tmp_path / "f", tiny_policy("pi05"), stats_arrays(8, 7))
    (folder / "policy_preprocessor_step_2_normalizer_processor.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"policy_preprocessor.json names the statistics file "
                                              r"policy_preprocessor_step_2_normalizer_processor.safetensors"):
        folder_info.read_folder_info(folder)


@pytest.mark.parametrize("overrides, message", [
    ({"type": "pi05"}, r"config.json: type=pi05 but .*holds a pi0 model"),
    ({"max_action_dim": 32}, r"config.json: max_action_dim=32 but model.action_in_proj.weight"),
    ({"type": "smolvla"}, r"type='smolvla'.*pi0 and pi05"),
    ({"max_period": 2.0}, r"max_period=2.0"),
])
def test_lerobot_config_disagreeing_with_the_weights(tmp_path, overrides, message):
    folder = lerobot_folder(tmp_path / "f", tiny_policy("pi0"), config_overrides=overrides)
    with pytest.raises(CheckpointError, match=message):
        policy_config(folder)


def test_openpi_nested_assets(tmp_path, sim_tokenizer):
    policy = tiny_policy("pi0")
    libero, other = stats_arrays(8, 7), stats_arrays(5, 5, seed=3)
    one = openpi_folder(tmp_path / "one", policy, {"physical-intelligence/libero": libero})
    info = folder_info.read_folder_info(one)
    assert info.layout == "openpi" and info.asset_id == "physical-intelligence/libero"
    np.testing.assert_array_equal(info.stats["actions"]["q99"], libero["actions"]["q99"])
    assert info.stats_source.endswith("assets/physical-intelligence/libero/norm_stats.json")
    two = openpi_folder(tmp_path / "two", policy, {"physical-intelligence/libero": libero, "trossen": other})
    with pytest.raises(ConfigError, match=r"several assets \['physical-intelligence/libero', 'trossen'\].*"
                                          r"--policy.asset_id"):
        folder_info.read_folder_info(two)
    assert folder_info.read_folder_info(two, asset_id="trossen").action_dim == 5
    with pytest.raises(ConfigError, match=r"--policy.asset_id=droid: .*does not exist"):
        folder_info.read_folder_info(two, asset_id="droid")
    cfg = policy_config(one)
    pre = preprocessor_from_checkpoint(one, cfg, tokenizer_path=str(sim_tokenizer))
    assert pre.normalizer.mode == "mean_std" and pre.action_dim == 7  # openpi pi0: mean/std
    none = openpi_folder(tmp_path / "none", policy)
    assert folder_info.read_folder_info(none).stats is None


def _dataset(state: int, action: int, stats_seed: int = 5):
    stats = stats_arrays(state, action, seed=stats_seed)
    return SimpleNamespace(root="/data/mine", features={"observation.state": {"shape": [state]},
                                                        "action": {"shape": [action]}},
                           stats={"observation.state": stats["state"], "action": stats["actions"]})


def test_training_uses_folder_statistics_unless_told_otherwise(pi05_folder):
    folder, _, stats = pi05_folder
    cfg = dataclasses.replace(policy_config(folder), pretrained_path=str(folder))
    normalizer = training_normalizer(cfg, _dataset(8, 7))
    np.testing.assert_array_equal(normalizer.stats["actions"]["q01"], stats["actions"]["q01"])
    assert normalizer.mode == "quantile"
    chosen = training_normalizer(dataclasses.replace(cfg, use_dataset_stats=True),
                                         _dataset(8, 7))
    np.testing.assert_array_equal(chosen.stats["actions"]["q01"], _dataset(8, 7).stats["action"]["q01"])


def test_folder_statistics_that_do_not_fit_the_dataset(pi05_folder):
    folder, _, _ = pi05_folder
    cfg = dataclasses.replace(policy_config(folder), pretrained_path=str(folder))
    with pytest.raises(ConfigError) as err:
        training_normalizer(cfg, _dataset(3, 3))
    text = str(err.value)
    assert str(folder) in text and "policy_preprocessor_step_2_normalizer_processor.safetensors" in text
    assert "/data/mine" in text and "action statistics of 7 dims, but the dataset's action has 3" in text
    assert "observation.state statistics of 8 dims" in text and "--policy.use_dataset_stats=true" in text
    assert training_normalizer(dataclasses.replace(cfg, use_dataset_stats=True), _dataset(3, 3)).dim(
        "actions") == 3


def test_missing_state_statistics_and_padded_statistics(tmp_path):
    policy = tiny_policy("pi0")
    only_actions = {"actions": stats_arrays(8, 7)["actions"]}
    folder = openpi_folder(tmp_path / "a", policy, {"x": only_actions})
    cfg = dataclasses.replace(policy_config(folder), pretrained_path=str(folder))
    with pytest.raises(ConfigError, match=r"no 'observation.state' statistics, but the dataset has "
                                          r"observation.state \(8 dims\)"):
        training_normalizer(cfg, _dataset(8, 7))
    # openpi computes statistics after padding to the model width: they are cut to the data's width.
    padded = stats_arrays(8, 8)
    for key, width in (("state", 3), ("actions", 2)):  # padding dims are zero in every statistic
        padded[key] = {stat: np.where(np.arange(8) < width, value, 0) for stat, value in padded[key].items()}
    folder = openpi_folder(tmp_path / "b", policy, {"x": padded})
    cfg = dataclasses.replace(policy_config(folder), pretrained_path=str(folder))
    normalizer = training_normalizer(cfg, _dataset(3, 2))
    assert (normalizer.dim("state"), normalizer.dim("actions")) == (3, 2)
    np.testing.assert_array_equal(normalizer.stats["actions"]["mean"], padded["actions"]["mean"][:2])


def test_folder_camera_map_applies_only_when_the_cameras_exist(pi05_folder):
    info = folder_info.read_folder_info(pi05_folder[0])
    keys = ["observation.images.image", "observation.images.wrist_image"]
    assert folder_info.folder_camera_map(info, keys) == {"observation.images.image": "base_0_rgb",
                                                     "observation.images.wrist_image": "left_wrist_0_rgb"}
    assert folder_info.folder_camera_map(info, ["observation.images.top"]) is None


def test_processor_json_without_steps_is_named(pi05_folder):
    folder = pi05_folder[0]
    (folder / "policy_postprocessor.json").write_text(json.dumps({"name": "x"}))
    with pytest.raises(CheckpointError, match=r"policy_postprocessor.json: expected .*steps"):
        folder_info.read_folder_info(folder)


def test_dataset_statistics_need_no_asset_choice(tmp_path):
    policy = tiny_policy("pi0")
    folder = openpi_folder(tmp_path / "two", policy, {"a": stats_arrays(8, 7), "b/c": stats_arrays(8, 7)})
    cfg = dataclasses.replace(policy_config(folder), pretrained_path=str(folder))
    with pytest.raises(ConfigError, match=r"several assets \['a', 'b/c'\]"):
        training_normalizer(cfg, _dataset(3, 3))
    chosen = training_normalizer(dataclasses.replace(cfg, use_dataset_stats=True), _dataset(3, 3))
    assert chosen.dim("actions") == 3
    assert folder_info.read_folder_info(folder, with_stats=False).stats is None


def test_policy_runner_acts_from_a_lerobot_folder(pi05_folder, sim_tokenizer):
    from pirecon.inference import PolicyRunner
    runner = PolicyRunner.from_checkpoint(pi05_folder[0], tokenizer_path=str(sim_tokenizer))
    obs = {"observation.images.image": np.zeros((32, 32, 3), np.uint8),
           "observation.images.wrist_image": np.zeros((32, 32, 3), np.uint8),
           "observation.state": np.zeros(8, np.float32), "task": "pick"}
    assert runner.predict_chunk(obs).shape == (4, 7) and runner(obs).shape == (2, 7)  # n_action_steps=2
