"""Fine-tuning from LeRobot / openpi folders: their statistics, tokenizer and camera map are used;
statistics that do not fit the dataset stop the run unless --policy.use_dataset_stats=true.
Exporting a LoRA + EMA run to the LeRobot layout keeps the merged EMA model."""

import json

import numpy as np
import pytest
import torch

import pirecon
from pirecon.batch import synthetic_batch
from pirecon.data.lerobot import open_dataset
from pirecon.data.normalize import load_norm_stats_json, normalizer_from_dataset
from pirecon.errors import CheckpointError, ConfigError
from pirecon.checkpoint import folder_info
from pirecon.checkpoint.layout import last_checkpoint
from pirecon.checkpoint.load import load_model
from pirecon.train.command import parse_train_flags
from pirecon.checkpoint.export import export
from pirecon.train.loop import train
from tests.checkpoint.foreign_helpers import lerobot_folder, openpi_folder, stats_arrays, tiny_policy
from tests.train.helpers import tiny_train_flags

SIM_RENAME = {"observation.images.wrist": "observation.images.base_0_rgb",
              "observation.images.top": "observation.images.left_wrist_0_rgb"}


def _flags(dataset, tokenizer, out, folder, *extra, kind="pi05"):
    flags = tiny_train_flags(dataset, tokenizer, out, "--steps=1", f"--policy.pretrained_path={folder}", *extra,
                             kind=kind)
    return [f for f in flags if tokenizer is not None or not f.startswith("--policy.tokenizer_path")]


def test_finetune_from_lerobot_folder_uses_its_statistics_tokenizer_and_cameras(sim_dataset, sim_tokenizer,
                                                                               tmp_path):
    stats = stats_arrays(3, 3)
    policy = tiny_policy("pi05", camera_names=("base_0_rgb", "left_wrist_0_rgb"))
    folder = lerobot_folder(tmp_path / "pi05_sim", policy, stats, rename_map=SIM_RENAME, state_dim=3, action_dim=3,
                            tokenizer_name=str(sim_tokenizer))
    result = train(parse_train_flags(_flags(sim_dataset, None, tmp_path / "run", folder)))
    saved = load_norm_stats_json(result.checkpoint / "norm_stats.json")
    for key in stats:
        for stat, value in stats[key].items():
            np.testing.assert_allclose(saved[key][stat], value, rtol=1e-6)
    info = json.loads((result.checkpoint / "data_info.json").read_text())
    assert info["camera_map"] == {"observation.images.wrist": "base_0_rgb",
                                  "observation.images.top": "left_wrist_0_rgb"}
    assert info["normalization_mode"] == "quantile"
    config = json.loads((result.checkpoint / "config.json").read_text())
    assert config["tokenizer"] == "tokenizer.model" and config["policy"]["pretrained_path"] == str(folder)
    assert (result.checkpoint / "tokenizer.model").read_bytes() == sim_tokenizer.read_bytes()


def test_statistics_of_other_data_stop_the_run_until_told(sim_dataset, sim_tokenizer, tmp_path):
    policy = tiny_policy("pi0", camera_names=("base_0_rgb", "left_wrist_0_rgb"))
    folder = openpi_folder(tmp_path / "pi0_libero", policy, {"physical-intelligence/libero": stats_arrays(8, 7)})
    with pytest.raises(ConfigError, match=r"assets/physical-intelligence/libero/norm_stats.json\) do not fit the "
                                          r"dataset .*--policy.use_dataset_stats=true"):
        train(parse_train_flags(_flags(sim_dataset, sim_tokenizer, tmp_path / "a", folder, kind="pi0")))
    result = train(parse_train_flags(_flags(sim_dataset, sim_tokenizer, tmp_path / "b", folder,
                                            "--policy.use_dataset_stats=true", kind="pi0")))
    expected = normalizer_from_dataset(open_dataset(sim_dataset, 4), "pi0").stats
    saved = load_norm_stats_json(result.checkpoint / "norm_stats.json")
    np.testing.assert_allclose(saved["actions"]["mean"], expected["actions"]["mean"], rtol=1e-6)


def test_missing_tokenizer_names_what_the_folder_refers_to(sim_dataset, tmp_path):
    policy = tiny_policy("pi05", camera_names=("base_0_rgb", "left_wrist_0_rgb"))
    folder = lerobot_folder(tmp_path / "f", policy, stats_arrays(3, 3), state_dim=3, action_dim=3)
    with pytest.raises(CheckpointError,
                       match=r"names the tokenizer 'google/paligemma-3b-pt-224'.*--policy.tokenizer_path"):
        train(parse_train_flags(_flags(sim_dataset, None, tmp_path / "run", folder)))


def test_lora_ema_run_exports_to_lerobot(sim_dataset, sim_tokenizer, tmp_path):
    out = tmp_path / "run"
    train(parse_train_flags(tiny_train_flags(sim_dataset, sim_tokenizer, out, "--steps=3", "--policy.use_peft",
                                             "--ema_decay=0.5", kind="pi05")))
    folder = last_checkpoint(out)
    reference = load_model(folder, use_ema=True).eval()
    exported = export(folder, tmp_path / "lerobot", use_ema=True, format="lerobot")
    merged = pirecon.load_policy(exported).eval()
    batch = synthetic_batch(merged.config, 2)
    noise = torch.randn(2, merged.config.chunk_size, merged.config.max_action_dim)
    assert torch.allclose(merged.sample_actions(batch, noise=noise), reference.sample_actions(batch, noise=noise),
                          atol=1e-4)
    info = folder_info.read_folder_info(exported)
    ours = load_norm_stats_json(folder / "norm_stats.json")
    np.testing.assert_allclose(info.stats["actions"]["q99"], ours["actions"]["q99"], rtol=1e-6)
    # The run mapped the dataset's cameras in order; the LeRobot rename map says so explicitly.
    assert info.camera_map == {"observation.images.top": "base_0_rgb",
                               "observation.images.wrist": "left_wrist_0_rgb"}
    openpi = export(folder, tmp_path / "openpi", format="openpi")  # asset id: the dataset folder's name
    assert (openpi / "assets" / sim_dataset.name / "norm_stats.json").is_file()
