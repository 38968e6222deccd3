"""Writing LeRobot datasets: round trips, LeRobot's v3.0 / v2.1 layouts, atomic writes."""

from __future__ import annotations

import json

import av
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from pirecon.data import open_dataset
from pirecon.data.video import probe_video, read_all_frames
from pirecon.data.writer import LeRobotWriter, demo_action, demo_image, demo_state, write_demo_dataset
from pirecon.errors import DatasetError

FEATURES = {
    "observation.images.top": {"dtype": "video", "shape": [32, 32, 3], "names": ["height", "width", "channels"]},
    "observation.state": {"dtype": "float32", "shape": [4], "names": ["a", "b", "c", "d"]},
    "action": {"dtype": "float32", "shape": [3], "names": None},
    "observation.gaze_bbox": {"dtype": "float32", "shape": [4]},
}


def frame(episode: int, i: int) -> dict:
    return {"observation.images.top": demo_image(episode, i, 0), "observation.state": demo_state(episode, i),
            "action": demo_action(episode, i), "observation.gaze_bbox": np.array([0.1, 0.2, 0.5, 0.6 + i / 100])}


@pytest.mark.parametrize("version", ["v3.0", "v2.1"])
def test_round_trip(tmp_path, version):
    lengths = (11, 16, 9)
    root = write_demo_dataset(tmp_path / "ds", version, lengths, image_size=64)
    ds = open_dataset(root, action_horizon=1)
    assert ds.codebase_version == version and ds.num_frames == sum(lengths) and ds.fps == 10
    errors = []
    for i in range(len(ds)):
        item = ds[i]
        episode, k = int(item["episode_index"]), int(item["frame_index"])
        np.testing.assert_array_equal(item["observation.state"].numpy(), demo_state(episode, k))
        np.testing.assert_array_equal(item["action"][0].numpy(), demo_action(episode, k))
        assert item["task"] == f"task {episode % 2}"
        for camera, key in enumerate(("observation.images.top", "observation.images.wrist")):
            expected = demo_image(episode, k, camera, 64).transpose(2, 0, 1) / 255.0
            errors.append(np.abs(item[key].numpy() - expected).mean())
    assert max(errors) < 0.02
    stats = ds.stats
    states = np.stack([demo_state(e, k) for e, n in enumerate(lengths) for k in range(n)])
    np.testing.assert_allclose(stats["observation.state"]["mean"], states.mean(0), rtol=1e-6)
    np.testing.assert_allclose(stats["observation.state"]["q99"], np.quantile(states, 0.99, axis=0), rtol=1e-6)
    assert stats["observation.images.top"]["mean"].shape == (3, 1, 1)
    assert int(stats["observation.state"]["count"][0]) == sum(lengths)


def test_v3_layout_follows_lerobot(tmp_path):
    root = tmp_path / "ds"
    with LeRobotWriter(root, fps=20, features=FEATURES, robot_type="sim") as writer:
        for episode, n in enumerate((5, 7)):
            for i in range(n):
                writer.add_frame(frame(episode, i), task=["pick", "place"][episode])
            assert writer.save_episode() == episode
    info = json.loads((root / "meta/info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["total_frames"] == 12 and info["total_tasks"] == 2
    assert info["data_path"] == "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
    assert info["video_path"] == "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
    assert info["features"]["observation.images.top"]["info"]["video.codec"] in ("h264", "mpeg4")
    assert set(info["features"]) >= {"timestamp", "frame_index", "episode_index", "index", "task_index"}

    tasks = pq.read_table(root / "meta/tasks.parquet")
    assert tasks.column("task").to_pylist() == ["pick", "place"] and tasks.column("task_index").to_pylist() == [0, 1]
    assert tasks.schema.pandas_metadata["index_columns"] == ["task"]  # pandas reads the strings back as the index
    episodes = pq.read_table(root / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    key = "videos/observation.images.top"
    assert [e["episode_index"] for e in episodes] == [0, 1] and episodes[1]["tasks"] == ["place"]
    assert (episodes[1]["dataset_from_index"], episodes[1]["dataset_to_index"]) == (5, 12)
    assert episodes[0][f"{key}/from_timestamp"] == 0.0
    assert episodes[1][f"{key}/from_timestamp"] == pytest.approx(5 / 20)
    assert episodes[1][f"{key}/to_timestamp"] == pytest.approx(12 / 20)
    assert "stats/observation.state/mean" in episodes[0]

    video = root / "videos/observation.images.top/chunk-000/file-000.mp4"
    assert probe_video(video).frames == 12 and probe_video(video).fps == 20
    frames, times = read_all_frames(video)
    np.testing.assert_allclose(times, np.arange(12) / 20)
    data = pq.read_table(root / "data/chunk-000/file-000.parquet")
    assert data.column_names == ["observation.state", "action", "observation.gaze_bbox", "timestamp",
                                 "frame_index", "episode_index", "index", "task_index"]
    assert str(data.schema.field("observation.state").type).startswith("fixed_size_list")
    item = open_dataset(root, action_horizon=2)[6]  # episode 1, frame 1
    assert item["task"] == "place" and item["observation.gaze_bbox"].dtype == torch.float32
    np.testing.assert_allclose(item["observation.gaze_bbox"].numpy(), [0.1, 0.2, 0.5, 0.61], rtol=1e-6)


@pytest.mark.skipif("libsvtav1" not in av.codecs_available, reason="no AV1 encoder in this PyAV build")
def test_av1_episodes_concatenate_and_read_back(tmp_path):
    """vcodec="av1" writes LeRobot's default codec (libsvtav1, keyframe every `gop` frames); the
    per-episode files remux into one v3.0 file whose frames sit at the episodes' offsets."""
    lengths = (7, 6)
    root = write_demo_dataset(tmp_path / "ds", "v3.0", lengths, cameras=("top",), image_size=64, vcodec="av1")
    info = json.loads((root / "meta/info.json").read_text())
    assert info["features"]["observation.images.top"]["info"]["video.codec"] == "av1"
    video = root / "videos/observation.images.top/chunk-000/file-000.mp4"
    with av.open(str(video)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.codec.id == av.Codec("libsvtav1", "w").id
        keys = [p.is_keyframe for p in container.demux(stream) if p.dts is not None]
    assert keys == [i % 2 == 0 for i in range(7)] + [i % 2 == 0 for i in range(6)]  # gop 2, restarted per episode
    frames, times = read_all_frames(video)
    np.testing.assert_allclose(times, np.arange(13) / 10)
    ds = open_dataset(root, action_horizon=1)
    item = ds[8]  # episode 1, frame 1
    expected = demo_image(1, 1, 0, 64).transpose(2, 0, 1) / 255.0
    assert np.abs(item["observation.images.top"].numpy() - expected).mean() < 0.02
    np.testing.assert_array_equal((item["observation.images.top"].numpy() * 255).round(), frames[8].transpose(2, 0, 1))


def test_v21_layout_follows_lerobot(tmp_path):
    root = write_demo_dataset(tmp_path / "ds", "v2.1", (4, 6))
    info = json.loads((root / "meta/info.json").read_text())
    assert info["codebase_version"] == "v2.1" and info["total_chunks"] == 1 and info["total_videos"] == 4
    lines = [json.loads(x) for x in (root / "meta/episodes.jsonl").read_text().splitlines()]
    assert lines == [{"episode_index": 0, "tasks": ["task 0"], "length": 4},
                     {"episode_index": 1, "tasks": ["task 1"], "length": 6}]
    stats = [json.loads(x) for x in (root / "meta/episodes_stats.jsonl").read_text().splitlines()]
    assert stats[1]["episode_index"] == 1 and stats[1]["stats"]["action"]["count"] == [6]
    assert (root / "data/chunk-000/episode_000001.parquet").is_file()
    assert (root / "videos/chunk-000/observation.images.wrist/episode_000001.mp4").is_file()


def test_clear_episode_and_validation(tmp_path):
    root = tmp_path / "ds"
    writer = LeRobotWriter(root, fps=10, features=FEATURES)
    writer.add_frame(frame(0, 0), task="dropped")
    writer.clear_episode()
    with pytest.raises(DatasetError, match=r"missing features \['observation.gaze_bbox'\]"):
        writer.add_frame({k: v for k, v in frame(0, 0).items() if k != "observation.gaze_bbox"}, task="t")
    with pytest.raises(DatasetError, match=r"frame\['observation.state'\]: shape \(5,\)"):
        writer.add_frame({**frame(0, 0), "observation.state": np.zeros(5)}, task="t")
    with pytest.raises(DatasetError, match=r"frame\['observation.images.top'\]: shape \(16, 16, 3\)"):
        writer.add_frame({**frame(0, 0), "observation.images.top": np.zeros((16, 16, 3), np.uint8)}, task="t")
    with pytest.raises(DatasetError, match="task string"):
        writer.add_frame(frame(0, 0))
    with pytest.raises(DatasetError, match="no frames"):
        writer.save_episode()
    for i in range(3):
        writer.add_frame(frame(0, i), task="kept")
    writer.save_episode()
    writer.finalize()
    ds = open_dataset(root, action_horizon=1)
    assert len(ds) == 3 and ds.tasks == {0: "kept"}


def test_writing_is_atomic(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(DatasetError, match="already exists and is not empty"):
        LeRobotWriter(tmp_path / "full", fps=10, features=FEATURES)

    root = tmp_path / "ds"
    with pytest.raises(RuntimeError, match="simulator crashed"):
        with LeRobotWriter(root, fps=10, features=FEATURES) as writer:
            writer.add_frame(frame(0, 0), task="t")
            writer.save_episode()
            writer.add_frame(frame(1, 0), task="t")
            raise RuntimeError("simulator crashed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full"]  # no root, no partial sibling

    (tmp_path / "empty").mkdir()  # an existing empty folder is fine
    with LeRobotWriter(tmp_path / "empty", fps=10, features=FEATURES) as writer:
        writer.add_frame(frame(0, 0), task="t")
        writer.save_episode()
        assert not (tmp_path / "empty" / "meta").exists()  # nothing appears before finalize
    assert (tmp_path / "empty" / "meta" / "info.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "full"]


def test_bad_features_are_rejected(tmp_path):
    with pytest.raises(DatasetError, match="even height and width"):
        LeRobotWriter(tmp_path / "a", 10, {**FEATURES, "observation.images.top": {"dtype": "video", "shape": [31, 32, 3]}})
    with pytest.raises(DatasetError, match="version='v2.0'"):
        LeRobotWriter(tmp_path / "b", 10, FEATURES, version="v2.0")
    with pytest.raises(DatasetError, match="missing 'action'"):
        LeRobotWriter(tmp_path / "c", 10, {"observation.state": FEATURES["observation.state"]})
    assert not any(tmp_path.iterdir())


def test_frame_conversion_runs_on_one_thread():
    # PyAV >= 17 converts frames with one thread per core unless told otherwise, which fails with
    # EAGAIN where a process cannot start more threads; the reader asks for one thread.
    from pirecon.data import video

    class Frame:
        def to_ndarray(self, **kwargs):
            self.kwargs = kwargs
            return np.zeros((2, 2, 3), np.uint8)

    frame = Frame()
    assert video._rgb(frame).shape == (2, 2, 3)
    assert frame.kwargs == {"format": "rgb24", "threads": 1}
