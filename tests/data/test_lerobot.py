"""Reading LeRobot datasets: the real GR00T v2.0 fixture, tiny written datasets, corrupt inputs."""

from __future__ import annotations

import json
import pickle
import shutil
import warnings

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from pirecon.configs.data import DatasetConfig
from pirecon.data import LeRobotDataset, open_dataset
from pirecon.data.layout import DatasetWarning
from pirecon.data.lerobot import open_from_config
from pirecon.data.video import FrameDecoder, read_all_frames
from pirecon.data.writer import demo_action, demo_image, demo_state, write_demo_dataset
from pirecon.errors import ConfigError, DatasetError

LENGTHS = (12, 15, 10)


def quiet_open(root, **kwargs) -> LeRobotDataset:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # datasets written by our writer have no quirks
        return open_dataset(root, **kwargs)


@pytest.fixture(scope="module")
def v3(tmp_path_factory):
    return write_demo_dataset(tmp_path_factory.mktemp("v3") / "ds", "v3.0", LENGTHS)


@pytest.fixture(scope="module")
def v21(tmp_path_factory):
    return write_demo_dataset(tmp_path_factory.mktemp("v21") / "ds", "v2.1", LENGTHS)


@pytest.fixture
def v21_copy(v21, tmp_path):
    """A writable copy to break."""
    return shutil.copytree(v21, tmp_path / "ds")


# ---------------------------------------------------------------------------------------------
# The real GR00T fixture (v2.0, H.264, with quirks)


def test_gr00t_fixture_loads_with_one_warning_per_quirk(gr00t_fixture):
    with pytest.warns(DatasetWarning) as record:
        ds = open_dataset(gr00t_fixture, action_horizon=16)
    messages = [str(w.message) for w in record]
    for quirk in ("observation.images.egoview", "frame_index", "several task strings", "data_path",
                  "video_path", "start after 0"):
        assert sum(quirk in m for m in messages) == 1, (quirk, messages)
    assert ds.codebase_version == "v2.0" and ds.fps == 20.0
    assert ds.camera_keys == ["observation.images.ego_view"]
    assert ds.episodes == [0, 1, 2, 3, 4] and len(ds) == ds.num_frames == 2096
    assert set(ds.stats["action"]) >= {"mean", "std", "min", "max", "q01", "q99", "count"}
    assert ds.stats["action"]["mean"].shape == (44,)

    item = ds[0]
    assert item["observation.state"].shape == (44,) and item["observation.state"].dtype == torch.float32
    assert item["action"].shape == (16, 44) and item["action"].dtype == torch.float32
    image = item["observation.images.ego_view"]
    assert image.shape == (3, 256, 256) and image.dtype == torch.float32
    assert 0.0 <= image.min() and image.max() <= 1.0
    assert item["task"] == "pick the pear from the counter and place it in the plate"
    assert int(item["frame_index"]) == 0 and int(item["episode_index"]) == 0
    # task_index picks the real task, never the "valid" annotation string
    tasks = {ds[i]["task"] for i in (0, 416, 886, 1356, 1768)}
    assert "valid" not in tasks and len(tasks) == 5


def test_gr00t_frames_match_video_by_timestamp(gr00t_fixture):
    """Row i has timestamp (i+1)/fps: LeRobot's nearest-timestamp rule gives video frame i+1;
    the last row, past the last frame, shows the last frame."""
    with pytest.warns(DatasetWarning):
        ds = open_dataset(gr00t_fixture, action_horizon=4, episodes=[4])
    frames, _ = read_all_frames(gr00t_fixture / "videos/chunk-000/observation.images.ego_view/episode_000004.mp4")
    for row, frame in ((0, 1), (100, 101), (len(ds) - 1, len(frames) - 1)):
        got = (ds[row]["observation.images.ego_view"] * 255).round().byte().permute(1, 2, 0).numpy()
        np.testing.assert_array_equal(got, frames[frame])


# ---------------------------------------------------------------------------------------------
# Written datasets read back


@pytest.mark.parametrize("version", ["v3.0", "v2.1"])
def test_samples_have_lerobot_keys_and_values(version, v3, v21):
    ds = quiet_open(v3 if version == "v3.0" else v21, action_horizon=5)
    assert ds.codebase_version == version and len(ds) == sum(LENGTHS)
    assert ds.camera_keys == ["observation.images.top", "observation.images.wrist"]
    item = ds[13]  # episode 1, frame 1
    assert set(item) == {"observation.images.top", "observation.images.wrist", "observation.state", "action",
                         "action_is_pad", "task", "timestamp", "frame_index", "episode_index", "index",
                         "task_index"}
    np.testing.assert_array_equal(item["observation.state"].numpy(), demo_state(1, 1))
    np.testing.assert_array_equal(item["action"].numpy(), np.stack([demo_action(1, 1 + k) for k in range(5)]))
    assert item["task"] == "task 1" and int(item["index"]) == 13 and int(item["frame_index"]) == 1
    assert item["timestamp"].dtype == torch.float32 and float(item["timestamp"]) == pytest.approx(0.1)
    for camera, key in enumerate(("observation.images.top", "observation.images.wrist")):
        expected = demo_image(1, 1, camera).astype(np.float32).transpose(2, 0, 1) / 255
        assert np.abs(item[key].numpy() - expected).mean() < 0.02  # H.264 compression


def test_action_chunk_is_padded_at_episode_end(v3):
    ds = quiet_open(v3, action_horizon=6)
    last = LENGTHS[0] - 1
    item = ds[last - 2]  # three real actions left in episode 0
    assert item["action_is_pad"].tolist() == [False] * 3 + [True] * 3
    np.testing.assert_array_equal(item["action"][3:].numpy(), np.stack([demo_action(0, last)] * 3))
    assert not ds[0]["action_is_pad"].any()


def test_video_frame_by_seek_equals_sequential_decode(v3):
    """Random-order reads (seek + decode forward) return exactly the sequentially decoded frames,
    across the episode boundaries of the concatenated v3.0 file."""
    ds = quiet_open(v3, action_horizon=1, frame_cache_mb=0)
    frames, _ = read_all_frames(v3 / "videos/observation.images.top/chunk-000/file-000.mp4")
    assert len(frames) == len(ds)
    for i in np.random.default_rng(0).permutation(len(ds)):
        got = (ds[int(i)]["observation.images.top"] * 255).round().byte().permute(1, 2, 0).numpy()
        np.testing.assert_array_equal(got, frames[i])


def test_decoder_rejects_timestamp_outside_tolerance(v21):
    path = v21 / "videos/chunk-000/observation.images.top/episode_000000.mp4"
    decoder = FrameDecoder()
    decoder.frame_at(path, 0.1 + 0.04, tolerance=0.05)
    with pytest.raises(DatasetError, match=r"episode_000000\.mp4.*timestamp 0\.1400"):
        decoder.frame_at(path, 0.14, tolerance=0.01)
    with pytest.raises(DatasetError, match="timestamp 9.0000"):
        decoder.frame_at(path, 9.0, tolerance=0.05)


def test_image_columns_match_video(tmp_path, v3):
    """The same content stored as PNG image columns and as video decodes to (nearly) the same."""
    images = write_demo_dataset(tmp_path / "img", "v3.0", LENGTHS, image_dtype="image")
    a, b = quiet_open(images, action_horizon=2), quiet_open(v3, action_horizon=2)
    assert a.image_keys == ["observation.images.top", "observation.images.wrist"] and not a.video_keys
    for i in (0, 14, len(a) - 1):
        exact = demo_image(int(a[i]["episode_index"]), int(a[i]["frame_index"]), 0)
        np.testing.assert_array_equal((a[i]["observation.images.top"] * 255).round().byte().permute(1, 2, 0), exact)
        assert (a[i]["observation.images.top"] - b[i]["observation.images.top"]).abs().mean() < 0.02
        assert torch.equal(a[i]["action"], b[i]["action"])


def test_episode_filter_and_val_split(v3):
    ds = quiet_open(v3, action_horizon=2, episodes=[2, 0])
    assert ds.episodes == [0, 2] and len(ds) == LENGTHS[0] + LENGTHS[2]
    assert int(ds[LENGTHS[0]]["episode_index"]) == 2 and int(ds[LENGTHS[0]]["index"]) == LENGTHS[0] + LENGTHS[1]
    train = quiet_open(v3, action_horizon=2, split="train", val_episodes=1)
    val = quiet_open(v3, action_horizon=2, split="val", val_episodes=1)
    assert train.episodes == [0, 1] and val.episodes == [2] and len(val) == LENGTHS[2]
    assert quiet_open(v3, action_horizon=2, split="all", val_episodes=1).episodes == [0, 1, 2]
    cfg = DatasetConfig(root=str(v3), episodes=[0, 1, 2], val_episodes=2)
    assert open_from_config(cfg, action_horizon=3, split="train").episodes == [0]
    assert open_from_config(cfg, action_horizon=3, split="val").episodes == [1, 2]
    with pytest.raises(DatasetError, match=r"episode\(s\) \[7\]"):
        open_dataset(v3, episodes=[0, 7])
    with pytest.raises(DatasetError, match="val_episodes=3"):
        open_dataset(v3, val_episodes=3)
    with pytest.raises(DatasetError, match="split='val' is empty"):
        open_dataset(v3, split="val")
    with pytest.raises(ConfigError, match=r"--dataset.video_backend='video_reader': expected one of \['pyav', 'torchcodec'\]"):
        DatasetConfig(root=str(v3), video_backend="video_reader")


@pytest.mark.timeout(120)
def test_dataset_pickles_and_works_in_dataloader_workers(v3):
    ds = quiet_open(v3, action_horizon=4)
    ds[0]  # opens a container in this process: workers must not share it
    clone = pickle.loads(pickle.dumps(ds))
    assert torch.equal(clone[5]["observation.images.top"], ds[5]["observation.images.top"])
    loader = torch.utils.data.DataLoader(ds, batch_size=8, num_workers=2, shuffle=True,
                                         generator=torch.Generator().manual_seed(0))
    batches = list(loader)
    assert sum(len(b["index"]) for b in batches) == len(ds)
    assert batches[0]["observation.images.top"].shape == (8, 3, 32, 32) and batches[0]["action"].shape == (8, 4, 3)


# ---------------------------------------------------------------------------------------------
# Corrupt inputs: one clear DatasetError each


def test_missing_info_json(v21_copy):
    (v21_copy / "meta" / "info.json").unlink()
    with pytest.raises(DatasetError, match=r"meta/info\.json: missing"):
        open_dataset(v21_copy)


def test_unknown_codebase_version(v21_copy):
    info_path = v21_copy / "meta" / "info.json"
    info = json.loads(info_path.read_text())
    info["codebase_version"] = "v1.6"
    info_path.write_text(json.dumps(info))
    with pytest.raises(DatasetError, match=r"info\.json: codebase_version 'v1\.6' is not supported.*v2\.0, v2\.1, v3\.0"):
        open_dataset(v21_copy)


def test_missing_video_file(v21_copy):
    missing = v21_copy / "videos/chunk-000/observation.images.wrist/episode_000001.mp4"
    missing.unlink()
    with pytest.raises(DatasetError, match=r"episode_000001\.mp4.*'observation\.images\.wrist'.*episode 1"):
        open_dataset(v21_copy)
    assert len(open_dataset(v21_copy, episodes=[0, 2])) == LENGTHS[0] + LENGTHS[2]


def test_camera_without_any_files_is_skipped_with_a_warning(v21_copy):
    shutil.rmtree(v21_copy / "videos/chunk-000/observation.images.wrist")
    with pytest.warns(DatasetWarning, match="observation.images.wrist"):
        ds = open_dataset(v21_copy)
    assert ds.camera_keys == ["observation.images.top"] and "observation.images.wrist" not in ds[0]


def test_truncated_parquet(v21_copy):
    path = v21_copy / "data/chunk-000/episode_000001.parquet"
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(DatasetError, match=r"episode_000001\.parquet: cannot read parquet file"):
        open_dataset(v21_copy)


def test_nan_action_names_file_column_episode_and_row(v3, tmp_path):
    root = shutil.copytree(v3, tmp_path / "ds")
    path = root / "data/chunk-000/file-000.parquet"
    table = pq.read_table(path)
    action = np.stack(table.column("action").to_pylist()).astype(np.float32)
    action[LENGTHS[0] + 4, 1] = np.nan  # episode 1, row 16 of the file
    column = pa.FixedSizeListArray.from_arrays(pa.array(action.reshape(-1)), 3)
    pq.write_table(table.set_column(table.column_names.index("action"), "action", column), path)
    with pytest.raises(DatasetError, match=r"file-000\.parquet: column 'action' holds nan in episode 1 at row 16"):
        open_dataset(root)


def test_dataset_revision_picks_the_cached_snapshot(monkeypatch, tmp_path):
    import pirecon.data.layout as layout
    from pirecon.configs.data import DatasetConfig
    from pirecon.errors import ConfigError

    asked = []
    monkeypatch.setenv("HF_LEROBOT_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(layout, "resolve_dataset", lambda value: asked.append(value) or tmp_path)
    layout.dataset_root(DatasetConfig(repo_id="org/data", revision="v2.1"))
    layout.dataset_root(DatasetConfig(repo_id="org/data"))
    assert asked == ["org/data@v2.1", "org/data"]
    with pytest.raises(ConfigError, match="--dataset.revision=v1 and --dataset.repo_id=org/data@v2 both name"):
        DatasetConfig(repo_id="org/data@v2", revision="v1")
