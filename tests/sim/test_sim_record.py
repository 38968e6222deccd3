"""Recording expert demonstrations as a LeRobot dataset."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pirecon.errors import ConfigError, DatasetError
from pirecon.sim import SimEnv, record, record_dataset
from pirecon.sim.cli import run


def test_record_writes_a_v3_dataset_that_reads_back(tmp_path):
    root = record_dataset(tmp_path / "demos", episodes=3, seed=0, image_size=64)
    assert root == tmp_path / "demos"
    info = json.loads((root / "meta" / "info.json").read_text())
    assert info["codebase_version"] == "v3.0"
    assert info["fps"] == 10 and info["total_episodes"] == 3
    features = info["features"]
    expected = SimEnv(image_size=64).features()
    for key, spec in expected.items():
        assert key in features and list(features[key]["shape"]) == spec["shape"]
    assert info["total_frames"] > 3 * 4

    try:
        from pirecon.data import open_dataset
    except ImportError:
        from pirecon.data.lerobot import open_dataset
    dataset = open_dataset(root, action_horizon=10)
    assert len(dataset) == info["total_frames"]
    sample = dataset[0]
    image = sample["observation.images.top"]
    assert tuple(image.shape) == (3, 64, 64) and float(image.min()) >= 0 and float(image.max()) <= 1
    assert sample["observation.state"].shape[-1] == 3
    assert tuple(sample["action"].shape) == (10, 3)
    assert sample["action_is_pad"].shape[0] == sample["action"].shape[0]
    assert sample["task"] in SimEnv().all_tasks()
    # the first frame's state is the expert's starting gripper position of seed 0
    env = SimEnv(image_size=64)
    obs = env.reset(0)
    np.testing.assert_allclose(np.asarray(sample["observation.state"]), obs["observation.state"], atol=1e-6)
    assert sample["task"] == env.task
    decoded = sample["observation.images.top"].permute(1, 2, 0).numpy()  # (H, W, 3) in [0, 1]
    assert np.abs(decoded - obs["observation.images.top"] / 255.0).mean() < 0.03  # lossy video, same picture


def test_record_cli_prints_a_summary_and_refuses_a_full_folder(tmp_path, capsys):
    out = tmp_path / "cli_demos"
    assert run(["record", "--episodes", "2", "--output", str(out), "--image_size=64", "--seed=5"]) == 0
    text = capsys.readouterr().out
    assert "wrote 2 episodes" in text and str(out) in text
    with pytest.raises(DatasetError, match="not empty"):
        record(out, 1, image_size=64)
    summary = record(out, 1, image_size=64, version="v2.1", overwrite=True)
    info = json.loads((out / "meta" / "info.json").read_text())
    assert summary.episodes == 1 and info["total_episodes"] == 1 and info["codebase_version"] == "v2.1"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folders left


def test_record_refuses_to_delete_a_folder_that_is_not_a_dataset(tmp_path):
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(DatasetError, match="left alone"):
        record(tmp_path, 1, overwrite=True)
    assert (tmp_path / "notes.txt").read_text() == "keep me"


class _FakeWriter:
    """Stands in for LeRobotWriter to check what `record` hands to the writer."""

    instances: list["_FakeWriter"] = []

    def __init__(self, root, fps, features, version, robot_type):
        self.args = dict(root=root, fps=fps, features=features, version=version, robot_type=robot_type)
        self.episodes: list[list[tuple[dict, str]]] = []
        self.current: list[tuple[dict, str]] = []
        self.finalized = False
        _FakeWriter.instances.append(self)

    def add_frame(self, frame, task):
        self.current.append((frame, task))

    def save_episode(self):
        self.episodes.append(self.current)
        self.current = []

    def finalize(self):
        self.finalized = True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None


@pytest.fixture
def fake_writer(monkeypatch):
    import sys
    import types

    module = types.ModuleType("pirecon.data.writer")
    module.LeRobotWriter = _FakeWriter
    monkeypatch.setitem(sys.modules, "pirecon.data.writer", module)
    _FakeWriter.instances.clear()
    return _FakeWriter


def test_record_hands_expert_frames_to_the_writer(tmp_path, fake_writer):
    from pirecon.sim import ScriptedExpert, SimConfig

    summary = record(tmp_path / "fake", 4, seed=0, image_size=64, version="v2.1")
    (writer,) = fake_writer.instances
    assert writer.finalized and len(writer.episodes) == 4 == summary.episodes
    assert writer.args["version"] == "v2.1" and writer.args["fps"] == 10
    assert writer.args["robot_type"] == "pirecon_sim"
    assert writer.args["features"] == SimEnv(SimConfig(image_size=64)).features()
    assert summary.frames == sum(len(e) for e in writer.episodes)
    # episode 0 replays exactly: same observations, expert actions and a constant task
    env = SimEnv(SimConfig(image_size=64))
    obs = env.reset(0)
    expert = ScriptedExpert(env)
    for frame, task in writer.episodes[0]:
        assert task == env.task
        assert set(frame) == set(writer.args["features"])
        np.testing.assert_array_equal(frame["observation.images.top"], obs["observation.images.top"])
        np.testing.assert_array_equal(frame["observation.images.wrist"], obs["observation.images.wrist"])
        np.testing.assert_array_equal(frame["observation.state"], obs["observation.state"])
        np.testing.assert_array_equal(frame["observation.gaze_bbox"], env.gaze_bbox())
        action = expert()
        np.testing.assert_array_equal(frame["action"], action)
        assert frame["action"].dtype == np.float32 and frame["observation.gaze_bbox"].dtype == np.float32
        obs, _, done, _ = env.step(action)
    assert done and env.success


def test_action_noise_perturbs_the_path_but_records_the_experts_actions(tmp_path, fake_writer):
    from pirecon.sim import ScriptedExpert, SimConfig

    record(tmp_path / "clean", 3, seed=0, image_size=32)
    record(tmp_path / "noisy", 3, seed=0, image_size=32, action_noise=0.4)
    clean, noisy = (w.episodes for w in fake_writer.instances)
    states = [np.stack([f["observation.state"] for f, _ in episode]) for episode in (clean[0], noisy[0])]
    assert states[0].shape != states[1].shape or not np.allclose(*states)  # the noise moved the gripper
    # Every recorded action is the expert's action in the recorded scene: replay the noisy episode by
    # stepping to each next recorded position and compare.
    env = SimEnv(SimConfig(image_size=32))
    env.reset(0)
    expert = ScriptedExpert(env)
    executed_differs = False
    for (frame, _), (following, _) in zip(noisy[0], noisy[0][1:]):
        np.testing.assert_allclose(frame["observation.state"][:2], env.scene.gripper, atol=1e-6)
        np.testing.assert_allclose(frame["action"], expert(), atol=1e-4)  # float32 states: not bit-exact
        velocity = (following["observation.state"][:2].astype(np.float64) - env.scene.gripper) / env.config.max_speed
        executed_differs |= not np.allclose(velocity, frame["action"][:2], atol=1e-3)
        env.step(np.array([*velocity, frame["action"][2]], dtype=np.float32))
    assert executed_differs
    with pytest.raises(ConfigError, match="action_noise"):
        record(tmp_path / "bad", 1, action_noise=-0.1)


def test_record_skips_seeds_where_the_expert_fails(tmp_path, fake_writer):
    from pirecon.sim import SimConfig

    # 12 steps are too few for most pick-and-place episodes, so those seeds are skipped
    summary = record(tmp_path / "short", 5, seed=0, config=SimConfig(max_steps=12))
    assert summary.episodes == 5 and summary.skipped_seeds
    assert summary.seeds_tried == 5 + len(summary.skipped_seeds)
    assert all(len(e) <= 12 for e in fake_writer.instances[0].episodes)
    assert "skipped (expert failed)" in summary.describe()


def test_record_keeps_the_simulator_settings_beside_the_data(tmp_path):
    from pirecon.sim import SimConfig, record_dataset, recorded_sim_config

    config = SimConfig(image_size=32, cells="corners", max_steps=70)
    root = record_dataset(tmp_path / "d", 1, image_size=32, config=config)
    assert recorded_sim_config(root) == config
    assert recorded_sim_config(tmp_path) is None  # not a recorded dataset


def test_corner_cells_put_the_zone_and_blocks_in_the_board_corners():
    import numpy as np
    from pirecon.errors import ConfigError
    from pirecon.sim import SimConfig
    from pirecon.sim.env import sample_scene

    config = SimConfig(cells="corners", grid=4, jitter=0.02)
    corners = np.array([[0.125, 0.125], [0.875, 0.125], [0.125, 0.875], [0.875, 0.875]])
    for seed in range(20):
        scene = sample_scene(config, seed)
        points = np.concatenate([scene.zone[None], scene.blocks])  # (4, 2)
        nearest = np.abs(points[:, None] - corners[None]).max(-1).argmin(1)
        assert sorted(nearest) == [0, 1, 2, 3]  # one object per corner
        assert np.abs(points - corners[nearest]).max() <= 0.02 + 1e-9
    with pytest.raises(ConfigError, match="cells='corners' needs grid > 0"):
        SimConfig(cells="corners", grid=0)
    with pytest.raises(ConfigError, match="cells='middle'"):
        SimConfig(cells="middle")
