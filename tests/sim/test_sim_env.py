"""SimEnv: observations, determinism, state contents, rendering, success rules and errors."""

from __future__ import annotations

import numpy as np
import pytest

from pirecon.errors import ConfigError, InputError
from pirecon.sim import PROMPTS, SimConfig, SimEnv
from pirecon.sim.env import HOME
from pirecon.sim.render import COLORS, GRIPPER_RGB, TABLE_RGB, ZONE_RGB

KEYS = ("observation.images.top", "observation.images.wrist", "observation.state", "task")


def _pixel(img: np.ndarray, x: float, y: float) -> tuple[int, ...]:
    """RGB of the top-image pixel containing table point (x, y)."""
    h, w = img.shape[:2]
    return tuple(int(v) for v in img[int(y * h), int(x * w)])


@pytest.mark.parametrize("size", [64, 96, 128])
def test_observation_shapes_and_dtypes(size):
    env = SimEnv(SimConfig(image_size=size))
    obs = env.reset(0)
    assert set(obs) == set(KEYS)
    for key in env.camera_keys:
        assert obs[key].shape == (size, size, 3) and obs[key].dtype == np.uint8
    assert obs["observation.state"].shape == (env.state_dim,) == (3,)
    assert obs["observation.state"].dtype == np.float32
    assert obs["task"] == env.task and env.task in env.all_tasks()
    obs, reward, done, info = env.step(np.zeros(env.action_dim, np.float32))
    assert set(obs) == set(KEYS) and isinstance(reward, float) and isinstance(done, bool)
    assert info["success"] is False and info["steps"] == 1
    assert env.fps == 10 and env.max_steps == 80 and env.camera_names == ("top", "wrist")


def test_features_describe_the_recorded_frames():
    env = SimEnv(SimConfig(image_size=80))
    feats = env.features()
    assert feats["observation.images.top"] == {"dtype": "video", "shape": [80, 80, 3],
                                               "names": ["height", "width", "channels"]}
    assert feats["observation.images.wrist"]["shape"] == [80, 80, 3]
    assert feats["observation.state"] == {"dtype": "float32", "shape": [3], "names": ["x", "y", "gripper"]}
    assert feats["action"] == {"dtype": "float32", "shape": [3], "names": ["vx", "vy", "gripper"]}
    assert feats["observation.gaze_bbox"]["shape"] == [4]


def test_same_seed_and_actions_give_identical_observations():
    rng = np.random.default_rng(123)
    actions = rng.uniform(-1, 1, size=(40, 3)).astype(np.float32)
    runs = []
    for _ in range(2):
        env = SimEnv()
        frames = [env.reset(7)]
        for a in actions:
            frames.append(env.step(a)[0])
        runs.append(frames)
    for a, b in zip(*runs):
        assert a["task"] == b["task"]
        for key in KEYS[:3]:
            np.testing.assert_array_equal(a[key], b[key])
    other = SimEnv().reset(8)
    assert not np.array_equal(other["observation.images.top"], runs[0][0]["observation.images.top"])


def test_reset_without_seed_continues_from_the_last_seed():
    env = SimEnv()
    first = env.reset()
    assert env.seed == 0
    env.reset()
    assert env.seed == 1
    np.testing.assert_array_equal(first["observation.images.top"], SimEnv().reset(0)["observation.images.top"])


def test_layouts_prompts_and_kinds_vary_with_the_seed():
    env = SimEnv()
    tasks, targets = set(), set()
    for seed in range(40):
        env.reset(seed)
        tasks.add(env.task)
        targets.add(tuple(np.round(env.scene.blocks[env.scene.target], 3)))
    kinds = {t.split()[0] for t in tasks}
    assert kinds == {"move", "put"}  # both task kinds occur
    assert len({t.split()[-2] if t.startswith("move") else t.split()[2] for t in tasks}) >= 3  # >= 3 colours named
    assert len(targets) == 40  # named block positions differ per episode


def test_state_is_gripper_only_and_ignores_block_positions():
    env = SimEnv()
    obs = env.reset(3)
    scene = env.scene
    np.testing.assert_allclose(obs["observation.state"], [*scene.gripper, 0.0], rtol=0, atol=1e-6)
    scene.blocks[:] = np.array([[0.2, 0.2], [0.5, 0.8], [0.8, 0.3]])  # move every block
    scene.zone[:] = [0.5, 0.5]
    obs2 = env.observation()
    np.testing.assert_array_equal(obs["observation.state"], obs2["observation.state"])
    assert not np.array_equal(obs["observation.images.top"], obs2["observation.images.top"])
    env.step([0, 0, 1])
    assert env.observation()["observation.state"][2] == 1.0  # gripper closed


def test_top_image_shows_block_colours_zone_and_gripper():
    env = SimEnv(SimConfig(image_size=96))
    for seed in range(10):
        img = env.reset(seed)["observation.images.top"]
        scene = env.scene
        for (x, y), color in zip(scene.blocks, scene.colors):
            assert _pixel(img, x, y) == COLORS[color]
            assert (img == np.array(COLORS[color], np.uint8)).all(-1).sum() >= 0.8 * (0.12 * 96) ** 2
        assert _pixel(img, *scene.zone) == ZONE_RGB
        assert _pixel(img, 0.01, 0.99) == TABLE_RGB or np.abs(scene.zone - [0.01, 0.99]).max() < 0.1
        gx, gy = scene.gripper
        assert _pixel(img, gx + 0.033, gy) == GRIPPER_RGB  # the open gripper's ring
        absent = set(COLORS) - set(scene.colors)
        for color in absent:
            assert not (img == np.array(COLORS[color], np.uint8)).all(-1).any()


def test_wrist_camera_is_centred_on_the_gripper():
    env = SimEnv(SimConfig(image_size=96, wrist_span=0.4))
    env.reset(1)
    env.scene.gripper[:] = env.scene.blocks[0] + [0.1, 0.0]  # a block 0.1 to the gripper's left
    env.step([0, 0, 1])  # close: a filled disc in the middle of the wrist view
    wrist = env.observation()["observation.images.wrist"]
    assert tuple(wrist[48, 48]) == GRIPPER_RGB
    # 0.1 table units = 24 pixels to the left of the centre at span 0.4
    assert tuple(wrist[48, 48 - 24]) == COLORS[env.scene.colors[0]]


def test_gaze_bbox_contains_the_named_block():
    env = SimEnv()
    for seed in range(20):
        img = env.reset(seed)["observation.images.top"]
        box = env.gaze_bbox()
        assert box.dtype == np.float32 and box.shape == (4,)
        assert 0 <= box[0] < box[2] <= 1 and 0 <= box[1] < box[3] <= 1
        x, y = env.scene.blocks[env.scene.target]
        assert box[0] <= x - 0.06 and x + 0.06 <= box[2] and box[1] <= y - 0.06 and y + 0.06 <= box[3]
        s = img.shape[0]
        crop = img[int(box[1] * s):int(np.ceil(box[3] * s)), int(box[0] * s):int(np.ceil(box[2] * s))]
        color = np.array(COLORS[env.scene.colors[env.scene.target]], np.uint8)
        assert (crop == color).all(-1).mean() > 0.4  # the crop is mostly the named block


def test_reach_succeeds_over_the_named_block_only():
    env = SimEnv()
    env.reset(0, kind="reach")
    other = (env.scene.target + 1) % len(env.scene.colors)
    env.scene.gripper[:] = env.scene.blocks[other]
    _, reward, done, info = env.step([0, 0, -1])
    assert not info["success"] and not done and reward == 0.0
    env.scene.gripper[:] = env.scene.blocks[env.scene.target] + [0.05, -0.05]
    _, reward, done, info = env.step([-1, 0, -1])  # passing over it at full speed is not arriving
    assert not info["success"] and not done
    _, reward, done, info = env.step([0.1, 0, -1])  # stopping over it is
    assert info["success"] and done and reward == 1.0
    env.reset(0, kind="reach")
    env.scene.gripper[:] = env.scene.blocks[env.scene.target]
    _, _, done, info = env.step([0, 0, 1])  # closing over it picks the block up: not a reach
    assert not info["success"] and not done and info["holding"]
    _, _, done, info = env.step([0, 0, -1])  # and letting go later does not make it one
    assert not info["success"] and not done


def test_place_needs_the_block_in_the_zone_and_released():
    env = SimEnv()
    env.reset(0, kind="place")
    scene = env.scene
    scene.gripper[:] = scene.blocks[scene.target]
    env.step([0, 0, 1])  # grasp
    assert scene.held == scene.target
    offset = scene.zone - scene.gripper
    scene.gripper[:] = scene.zone.copy()  # teleport the gripper; the block is carried by steps only
    scene.blocks[scene.target] += offset
    _, _, done, info = env.step([0, 0, 1])  # still holding: not yet placed
    assert not info["success"] and not done
    _, reward, done, info = env.step([0, 0, -1])  # release inside the zone
    assert info["success"] and done and reward == 1.0


def test_a_held_block_moves_with_the_gripper():
    env = SimEnv()
    env.reset(2)
    scene = env.scene
    scene.blocks[1] = [0.5, 0.5]
    scene.gripper[:] = [0.53, 0.5]  # over block 1, off its centre
    before = scene.blocks.copy()
    move = env.config.max_speed * np.array([1.0, 0.5])
    env.step([0, 0, 1])
    env.step([1, 0.5, 1])
    np.testing.assert_allclose(scene.blocks[1], before[1] + move)
    np.testing.assert_allclose(scene.gripper, [0.53, 0.5] + move)
    np.testing.assert_array_equal(np.delete(scene.blocks, 1, 0), np.delete(before, 1, 0))
    env.step([0, 0, -1])  # opening drops it ...
    env.step([-1, 0, -1])  # ... so it stays behind when the gripper moves on
    np.testing.assert_allclose(scene.blocks[1], before[1] + move)
    assert scene.held is None


def test_episode_ends_at_max_steps():
    env = SimEnv(SimConfig(max_steps=5))
    env.reset(0)
    dones = [env.step([0, 0, -1])[2] for _ in range(5)]
    assert dones == [False] * 4 + [True]
    assert env.step([0, 0, -1])[3]["timeout"]


def test_color_and_kind_overrides_keep_the_layout():
    env = SimEnv()
    env.reset(4)
    blocks, colors = env.scene.blocks.copy(), env.scene.colors
    for color in colors:
        for kind in ("reach", "place"):
            env.reset(4, color=color, kind=kind)
            np.testing.assert_array_equal(env.scene.blocks, blocks)
            assert env.task == PROMPTS[kind].format(color=color)
    missing = next(c for c in COLORS if c not in colors)
    env.reset(4, color=missing)
    assert env.scene.colors[env.scene.target] == missing and missing in env.task


def test_bad_inputs_raise_clear_errors():
    env = SimEnv()
    with pytest.raises(RuntimeError, match="reset"):
        env.step([0, 0, 0])
    env.reset(0)
    with pytest.raises(InputError, match=r"expected \(3,\)"):
        env.step([0, 0])
    with pytest.raises(InputError, match="NaN"):
        env.step([np.nan, 0, 0])
    with pytest.raises(ConfigError, match="image_size"):
        SimConfig(image_size=8)
    with pytest.raises(ConfigError, match="num_blocks"):
        SimConfig(num_blocks=5)
    with pytest.raises(ConfigError, match="colors"):
        SimConfig(colors=("red", "purple"))
    with pytest.raises(ConfigError, match="tasks"):
        SimConfig(tasks=("push",))
    with pytest.raises(ConfigError, match="color"):
        env.reset(0, color="purple")


def test_default_layout_uses_board_cells_and_starts_at_home():
    config = SimConfig()
    env = SimEnv(config)
    n = config.grid
    for seed in range(30):
        env.reset(seed)
        scene = env.scene
        np.testing.assert_array_equal(scene.gripper, HOME)
        objects = np.concatenate([scene.zone[None], scene.blocks])  # (4, 2)
        cells = np.floor(objects * n).astype(int)
        assert len({tuple(c) for c in cells}) == len(objects)  # distinct cells
        centres = (cells + 0.5) / n
        assert np.abs(objects - centres).max() <= config.jitter + 1e-12
        # blocks avoid the cells around HOME, so reaching always takes several steps
        assert (np.abs(scene.blocks - np.array(HOME)).max(axis=1) > 0.3).all()


def test_free_layout_and_random_start_options():
    config = SimConfig(grid=0, random_start=True)
    env = SimEnv(config)
    starts = set()
    for seed in range(20):
        env.reset(seed)
        blocks = env.scene.blocks
        starts.add(tuple(env.scene.gripper))
        gaps = [np.abs(blocks[i] - blocks[j]).max() for i in range(3) for j in range(i + 1, 3)]
        assert min(gaps) > config.block_size  # blocks never overlap
        assert np.abs(blocks - env.scene.zone).max(axis=1).min() > (config.block_size + config.zone_size) / 2
    assert len(starts) == 20


@pytest.mark.parametrize("overrides, match", [
    ({"grid": 5}, "grid=5"),
    ({"jitter": 0.06}, "jitter"),
    ({"grid": 1}, "grid=1"),
])
def test_impossible_boards_are_rejected(overrides, match):
    with pytest.raises(ConfigError, match=match):
        SimConfig(**overrides)



def test_a_drifting_block_moves_until_grasped_and_the_expert_still_succeeds():
    import numpy as np

    from pirecon.sim import SimConfig, SimEnv, ScriptedExpert
    from pirecon.sim.expert import evaluate

    still = SimEnv(SimConfig(num_blocks=1, cells="corners"))
    drifting = SimEnv(SimConfig(num_blocks=1, cells="corners", drift=0.005))
    still.reset(3)
    drifting.reset(3)
    assert np.array_equal(still.scene.blocks, drifting.scene.blocks)  # the same layout at reset
    start = drifting.scene.blocks[0].copy()
    for _ in range(4):
        drifting.step(drifting.idle_action())
    assert np.linalg.norm(drifting.scene.blocks[0] - start) == pytest.approx(4 * 0.005)
    assert evaluate(ScriptedExpert, 30, 0, SimConfig(num_blocks=1, cells="corners", drift=0.005)).successes == 30
    with pytest.raises(Exception, match="drift=0.01: expected 0..0.007"):
        SimConfig(drift=0.01)
