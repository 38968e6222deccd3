"""LIBERO as an EvalEnv: the pure pieces without LIBERO, then the real simulator (the `libero` extra)."""

from __future__ import annotations

import ctypes.util
import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import NamedTuple

import numpy as np
import pytest

from pirecon.configs.parse import from_dict
from pirecon.errors import ConfigError, InputError, PireconError
from pirecon.eval import libero as L
from pirecon.eval.envs import make_env

REPO_ROOT = Path(__file__).resolve().parents[2]


def quat_from_axis_angle(axis, angle) -> np.ndarray:
    """(x, y, z, w) of a rotation by `angle` about `axis`."""
    axis = np.asarray(axis, dtype=np.float64) / np.linalg.norm(axis)
    return np.concatenate([axis * math.sin(angle / 2), [math.cos(angle / 2)]])


# ---------------------------------------------------------------------------------------------
# Quaternion -> axis-angle


def test_quat_to_axis_angle_known_rotations():
    np.testing.assert_allclose(L.quat_to_axis_angle([0, 0, 0, 1]), np.zeros(3))
    np.testing.assert_allclose(L.quat_to_axis_angle(quat_from_axis_angle([0, 0, 1], math.pi / 2)),
                               [0, 0, math.pi / 2], atol=1e-12)
    # w = 0: half a turn about x
    np.testing.assert_allclose(L.quat_to_axis_angle([1, 0, 0, 0]), [math.pi, 0, 0], atol=1e-12)
    # robosuite keeps the angle in [0, 2*pi]: w < 0 is NOT folded to the shorter rotation
    w = -math.cos(math.radians(30))
    out = L.quat_to_axis_angle([0, 0, 0.5, w])
    np.testing.assert_allclose(out, [0, 0, 2 * math.acos(w)], atol=1e-12)
    assert out[2] > math.pi
    # |w| slightly above 1 (float noise) is clipped, not a NaN
    np.testing.assert_allclose(L.quat_to_axis_angle([0, 0, 0, 1 + 1e-9]), np.zeros(3))


def test_quat_to_axis_angle_round_trips_random_rotations():
    rng = np.random.default_rng(0)
    for _ in range(50):
        axis = rng.normal(size=3)
        axis /= np.linalg.norm(axis)
        angle = rng.uniform(0.01, math.pi - 0.01)
        out = L.quat_to_axis_angle(quat_from_axis_angle(axis, angle))
        assert np.linalg.norm(out) == pytest.approx(angle, abs=1e-9)
        np.testing.assert_allclose(out / np.linalg.norm(out), axis, atol=1e-9)


def test_quat_to_axis_angle_rejects_wrong_shape():
    with pytest.raises(InputError, match=r"expected \(4,\)"):
        L.quat_to_axis_angle([0, 0, 1])


# ---------------------------------------------------------------------------------------------
# Observation mapping


def fake_raw(size: int = 256) -> dict:
    agent = np.zeros((size, size, 3), dtype=np.uint8)
    agent[0, 0] = (255, 0, 0)  # top-left red pixel: bottom-right once upright
    wrist = np.full((size, size, 3), 100, dtype=np.uint8)
    wrist[0, :, 1] = 200  # top row green: bottom row once upright
    return {
        "agentview_image": agent, "robot0_eye_in_hand_image": wrist,
        "robot0_eef_pos": np.array([0.1, -0.2, 1.1]),
        "robot0_eef_quat": quat_from_axis_angle([1, 0, 0], math.pi / 3),
        "robot0_gripper_qpos": np.array([0.04, -0.039]),
        "robot0_joint_pos": np.zeros(7),
    }


def test_state_is_pos_axis_angle_gripper():
    state = L.libero_state(fake_raw())
    assert state.dtype == np.float32 and state.shape == (8,)
    np.testing.assert_allclose(state, [0.1, -0.2, 1.1, math.pi / 3, 0, 0, 0.04, -0.039], atol=1e-6)


def test_observation_keys_rotation_and_resize():
    raw = fake_raw(256)
    obs = L.libero_observation(raw, L.LiberoConfig(image_size=0), "do it")
    assert sorted(obs) == ["observation.images.image", "observation.images.image2", "observation.state", "task"]
    agent, wrist = obs["observation.images.image"], obs["observation.images.image2"]
    assert agent.shape == wrist.shape == (256, 256, 3) and agent.dtype == np.uint8
    np.testing.assert_array_equal(agent, raw["agentview_image"][::-1, ::-1])
    assert tuple(agent[-1, -1]) == (255, 0, 0) and agent[0, 0].sum() == 0
    assert (wrist[-1, :, 1] == 200).all() and (wrist[0, :, 1] == 100).all()
    assert obs["task"] == "do it"
    np.testing.assert_allclose(obs["observation.state"], L.libero_state(raw))

    small = L.libero_observation(raw, L.LiberoConfig(), "do it")  # default: 256 -> 224
    wrist = small["observation.images.image2"]
    assert wrist.shape == (224, 224, 3) and wrist.dtype == np.uint8
    assert (wrist[100:-3, :, 1] == 100).all() and wrist[-1, 112, 1] > 150  # bottom row keeps the green tint
    assert small["observation.images.image"][:100, :100].sum() == 0  # the red dot stays bottom-right


def test_key_names_are_options():
    config = from_dict(L.LiberoConfig, {"image_key": "observation.images.agentview",
                                        "wrist_image_key": "observation.images.wrist_image",
                                        "state_key": "state", "image_size": "64"}, where="--env")
    obs = L.libero_observation(fake_raw(), config, "t")
    assert sorted(obs) == ["observation.images.agentview", "observation.images.wrist_image", "state", "task"]
    assert obs["observation.images.agentview"].shape == (64, 64, 3)


def test_resize_with_pad_pads_non_square_frames():
    frame = np.full((128, 256, 3), 255, dtype=np.uint8)
    out = L.resize_image(frame, 64)
    assert out.shape == (64, 64, 3)
    assert (out[:16] == 0).all() and (out[48:] == 0).all() and (out[16:48] == 255).all()


@pytest.mark.parametrize("options, match", [
    ({"camera_size": 0}, "--env.camera_size=0"),
    ({"image_size": -1}, "--env.image_size=-1"),
    ({"max_steps": 0}, "--env.max_steps=0"),
    ({"settle_steps": -2}, "--env.settle_steps=-2"),
    ({"state_key": ""}, "--env.state_key"),
    ({"wrist_image_key": "observation.images.image"}, "must differ"),
    ({"image_size": "big"}, r"--env.image_size='big': expected an integer"),
    ({"imag_size": 224}, r"unknown key 'imag_size'.*image_size"),
])
def test_bad_options_name_the_flag(options, match):
    with pytest.raises(ConfigError, match=match):
        L.LiberoEnv.from_task("libero_spatial", **options)  # fails before LIBERO is imported


# ---------------------------------------------------------------------------------------------
# Suites, tasks and seeds


def test_parse_task():
    assert L.parse_task("libero_spatial") == ("libero_spatial", None)
    assert L.parse_task("libero_10/9") == ("libero_10", 9)
    assert L.parse_task("libero_90/89") == ("libero_90", 89)
    assert {s: L.SUITES[s].max_steps for s in L.SUITES} == {
        "libero_spatial": 220, "libero_object": 280, "libero_goal": 300, "libero_10": 520, "libero_90": 400}


@pytest.mark.parametrize("task, match", [
    (None, "--env.task is required"),
    ("", "--env.task is required"),
    ("libero_spacial", "unknown LIBERO suite 'libero_spacial'"),
    ("libero_spatial/10", r"0\.\.9"),
    ("libero_goal/-1", r"0\.\.9"),
    ("libero_90/x", r"0\.\.89"),
])
def test_parse_task_errors(task, match):
    with pytest.raises(ConfigError, match=match):
        L.parse_task(task)
    with pytest.raises(ConfigError, match=match):
        make_env("libero", task)


def test_seeds_pick_task_then_init_state():
    # whole suite: all tasks' first init state, then their second, ...
    assert [L.pick_episode(s, 10, None) for s in (0, 1, 9, 10, 11, 499)] == [
        (0, 0), (1, 0), (9, 0), (0, 1), (1, 1), (9, 49)]
    # one task: the seed is the episode
    assert [L.pick_episode(s, 10, 3) for s in (0, 1, 49)] == [(3, 0), (3, 1), (3, 49)]
    # all 500 standard episodes of a 10-task suite are distinct (task, init state) pairs
    assert len({L.pick_episode(s, 10, None) for s in range(500)}) == 500


# ---------------------------------------------------------------------------------------------
# LiberoEnv's bookkeeping, with a stand-in for LIBERO (same calls, no physics)


class FakeTask(NamedTuple):
    name: str
    language: str
    problem_folder: str
    bddl_file: str


class FakeBenchmark:
    def __init__(self, n_tasks: int):
        self.tasks = [FakeTask(f"task_{i}", f"do thing {i}", "suite", f"task_{i}.bddl") for i in range(n_tasks)]

    def get_num_tasks(self):
        return len(self.tasks)

    def get_task(self, i):
        return self.tasks[i]

    def get_task_init_states(self, i):
        return np.arange(5 * 3, dtype=np.float64).reshape(5, 3) + 100 * i  # 5 init states per task


class FakeSim:
    """Records what LiberoEnv asks of OffScreenRenderEnv; an action whose first number is 9 solves the task."""

    built: list["FakeSim"] = []

    def __init__(self, bddl_file_name, camera_heights, camera_widths, ignore_done):
        self.bddl, self.size, self.closed = bddl_file_name, camera_heights, False
        self.actions, self.init_state, self.solved = [], None, False
        assert ignore_done and camera_heights == camera_widths
        FakeSim.built.append(self)

    def raw(self):
        raw = fake_raw(self.size)
        raw["robot0_eef_pos"] = np.array([len(self.actions), 0.0, 1.0])
        return raw

    def seed(self, seed):
        np.random.seed(seed)  # like LIBERO: the global generator

    def reset(self):
        self.actions, self.solved = [], False
        np.random.rand()
        return self.raw()

    def set_init_state(self, state):
        self.init_state = np.array(state)
        return self.raw()

    def step(self, action):
        self.actions.append(np.array(action))
        self.solved = self.solved or action[0] == 9
        return self.raw(), 0.0, self.solved, {}

    def close(self):
        self.closed = True


def fake_env(task: str = "libero_spatial", **options) -> L.LiberoEnv:
    FakeSim.built = []
    suite, index = L.parse_task(task)
    libero = SimpleNamespace(
        benchmark=SimpleNamespace(get_benchmark_dict=lambda: {suite: lambda: FakeBenchmark(L.SUITES[suite].n_tasks)}),
        get_libero_path=lambda key: f"/fake/{key}", OffScreenRenderEnv=FakeSim)
    return L.LiberoEnv(suite, index, from_dict(L.LiberoConfig, options, where="--env"), libero=libero)


def test_reset_picks_task_and_init_state_and_settles():
    env = fake_env("libero_spatial", camera_size=64, image_size=32)
    obs = env.reset(13)  # task 3, episode 1 -> init state 1
    sim = FakeSim.built[-1]
    assert (env.task_index, env.init_state_index, env.task) == (3, 1, "do thing 3")
    assert sim.bddl == "/fake/bddl_files/suite/task_3.bddl" and sim.size == 64
    np.testing.assert_array_equal(sim.init_state, [303, 304, 305])
    assert len(sim.actions) == 10 and all((a == L.SETTLE_ACTION).all() for a in sim.actions)
    assert obs["task"] == "do thing 3" and obs["observation.images.image"].shape == (32, 32, 3)
    assert obs["observation.state"][0] == 10  # the observation after the settle steps
    assert env.steps == 0 and env.render().shape == (64, 64, 3)

    env.reset(23)  # same task: the simulator is kept
    assert len(FakeSim.built) == 1 and env.init_state_index == 2
    env.reset(4)  # another task: the old simulator is closed, a new one built
    assert len(FakeSim.built) == 2 and sim.closed and env.task_index == 4
    one = fake_env("libero_spatial/7", settle_steps=0)
    one.reset(6)
    assert (one.task_index, one.init_state_index, len(FakeSim.built[-1].actions)) == (7, 1, 0)


def test_step_success_reward_done_and_timeout():
    env = fake_env("libero_goal/0", max_steps=4)
    env.reset(0)
    obs, reward, done, info = env.step(np.zeros(7))
    assert (reward, done, info) == (0.0, False, {"success": False, "steps": 1, "timeout": False})
    np.testing.assert_array_equal(FakeSim.built[-1].actions[-1], np.zeros(7))
    obs, reward, done, info = env.step(np.array([9, 0, 0, 0, 0, 0, 1.0]))
    assert (reward, done, info["success"], env.success) == (1.0, True, True, True)
    _, reward, done, info = env.step(np.zeros(7))  # stepping on is allowed; success sticks, reward is once
    assert (reward, done, info["success"], info["timeout"]) == (0.0, True, True, False)

    env.reset(1)
    assert not env.success and env.steps == 0
    for _ in range(4):
        _, _, done, info = env.step(np.zeros(7))
    assert done and info["timeout"] and not info["success"]


def test_reset_keeps_the_global_numpy_rng_and_checks_inputs():
    env = fake_env("libero_object/2")
    np.random.seed(123)
    expected = np.random.rand(2)
    np.random.seed(123)
    env.reset(5)
    np.testing.assert_array_equal(np.random.rand(2), expected)
    with pytest.raises(InputError, match=r"expected \(7,\)"):
        env.step(np.zeros(3))
    with pytest.raises(InputError, match="NaN"):
        env.step(np.array([np.nan] * 7))
    with pytest.raises(InputError, match="seed="):
        env.reset("3")
    env.close()
    env.close()  # twice is fine
    with pytest.raises(RuntimeError, match=r"reset\(seed\) before step"):
        env.step(np.zeros(7))


# ---------------------------------------------------------------------------------------------
# Missing extra / renderer / config


def test_missing_package_names_the_extra_and_osmesa(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "libero" else real(name, *a))
    with pytest.raises(L.LiberoUnavailableError) as info:
        make_env("libero", "libero_spatial/0")
    message = str(info.value)
    assert "pip install 'pirecon[libero]'" in message and "libosmesa6" in message
    assert isinstance(info.value, ImportError) and isinstance(info.value, PireconError)
    assert L.libero_available() == message


def unset(monkeypatch, name: str) -> None:
    """Unset an environment variable so that monkeypatch restores its value (or its absence) afterwards,
    even when the code under test sets it (`delenv` alone records nothing for an absent variable)."""
    monkeypatch.setenv(name, "placeholder")
    monkeypatch.delenv(name)


def test_a_module_shadowing_libero_is_named(tmp_path, monkeypatch):
    (tmp_path / "libero.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "libero", raising=False)
    with pytest.raises(L.LiberoUnavailableError, match=r"libero\.py, which shadows the LIBERO package"):
        L.libero_paths()


def test_missing_osmesa_names_the_debian_package(monkeypatch):
    monkeypatch.setenv("MUJOCO_GL", "osmesa")
    unset(monkeypatch, "PYOPENGL_PLATFORM")
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: None)
    with pytest.raises(L.LiberoUnavailableError, match="apt-get install libosmesa6"):
        L.configure_rendering()
    monkeypatch.setenv("MUJOCO_GL", "egl")  # a GPU backend does not need OSMesa
    assert L.configure_rendering() == "egl"


def test_config_written_once_and_a_users_config_kept(tmp_path, monkeypatch):
    unset(monkeypatch, "LIBERO_CONFIG_PATH")  # ensure_libero_config sets it: undone after the test
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    paths = {"benchmark_root": "/x/libero", "bddl_files": "/x/libero/bddl_files", "init_states": "/x/init",
             "datasets": "/x/datasets", "assets": "/y/assets with space"}
    written = L.ensure_libero_config(paths)
    assert written == tmp_path / "cache" / "pirecon" / "libero" / "config.yaml"
    assert os.environ["LIBERO_CONFIG_PATH"] == str(written.parent)
    parsed = {k: json.loads(v) for k, v in (line.split(": ", 1) for line in written.read_text().splitlines())}
    assert parsed == paths
    yaml = pytest.importorskip("yaml")
    assert yaml.safe_load(written.read_text()) == paths

    user = tmp_path / "mine"
    user.mkdir()
    (user / "config.yaml").write_text("assets: /mine\n")
    monkeypatch.setenv("LIBERO_CONFIG_PATH", str(user))
    assert L.ensure_libero_config(paths) == user / "config.yaml"
    assert (user / "config.yaml").read_text() == "assets: /mine\n"


# ---------------------------------------------------------------------------------------------
# The real simulator (skipped only where the `libero` extra or OSMesa is missing)

LIBERO_MISSING = L.libero_available()
needs_libero = pytest.mark.skipif(LIBERO_MISSING is not None, reason=f"LIBERO unavailable: {LIBERO_MISSING}")


@needs_libero
def test_import_never_prompts_and_finds_the_installed_assets(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("LIBERO_CONFIG_PATH", "XDG_CACHE_HOME")}
    env["HOME"] = str(tmp_path)
    code = ("from pirecon.eval.libero import load_libero\n"
            "lib = load_libero()\n"
            "print(lib.get_libero_path('assets'))\n"
            "print(lib.get_libero_path('bddl_files'))\n")
    out = subprocess.run([sys.executable, "-c", code], env=env, stdin=subprocess.DEVNULL, capture_output=True,
                         text=True, timeout=300, cwd=REPO_ROOT)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    paths = L.libero_paths()
    assert lines[-2:] == [paths["assets"], paths["bddl_files"]]
    assert (tmp_path / ".cache" / "pirecon" / "libero" / "config.yaml").is_file()


@needs_libero
def test_axis_angle_matches_robosuite():
    L.load_libero()
    from robosuite.utils import transform_utils

    rng = np.random.default_rng(1)
    for _ in range(100):
        q = rng.normal(size=4)
        q /= np.linalg.norm(q)
        np.testing.assert_allclose(L.quat_to_axis_angle(q), transform_utils.quat2axisangle(q.copy()), atol=1e-12)


@needs_libero
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_tiny_policy_drives_libero_spatial_task_0(sim_tokenizer):
    import torch

    from pirecon.configs.policy import PolicyConfig
    from pirecon.data.tokenizer import load_tokenizer
    from pirecon.data.transforms import Preprocessor
    from pirecon.eval.envs import EvalEnv
    from pirecon.inference import PolicyRunner
    from pirecon.model.pi0 import Pi0Policy

    config = PolicyConfig(type="pi0", variant="tiny", image_resolution=28, chunk_size=4, n_action_steps=4,
                          max_state_dim=8, max_action_dim=8, camera_names=("base_0_rgb", "left_wrist_0_rgb"),
                          tokenizer_max_length=128)
    preprocessor = Preprocessor(config, load_tokenizer(sim_tokenizer), action_dim=7,
                                camera_map={"observation.images.image": "base_0_rgb",
                                            "observation.images.image2": "left_wrist_0_rgb"})
    runner = PolicyRunner(Pi0Policy(config), preprocessor, num_steps=2, seed=0)

    env = make_env("libero", "libero_spatial/0", image_size="224")
    try:
        assert isinstance(env, EvalEnv)
        assert (env.max_steps, env.action_dim, env.fps) == (220, 7, 20)
        suite_instruction = env._benchmark.get_task(0).language
        obs = env.reset(0)
        assert env.init_state_index == 0 and env.steps == 0 and not env.success
        assert obs["task"] == env.task == suite_instruction
        assert "black bowl" in obs["task"]
        for key in ("observation.images.image", "observation.images.image2"):
            assert obs[key].shape == (224, 224, 3) and obs[key].dtype == np.uint8
            assert obs[key].std() > 10  # a rendered scene, not a blank frame
        state = obs["observation.state"]
        assert state.shape == (8,) and state.dtype == np.float32 and np.isfinite(state).all()
        assert 0.5 < state[2] < 1.5  # the gripper hovers above the table
        assert state[6] > 0.03 and state[7] < -0.03  # settled with the gripper open
        frame = env.render()
        assert frame.shape == (256, 256, 3) and frame.dtype == np.uint8 and frame.std() > 10

        start = state.copy()
        with torch.no_grad():
            while env.steps < 20:
                chunk = runner(obs)
                assert chunk.shape == (4, 7) and np.isfinite(chunk).all()
                for action in chunk:
                    obs, reward, done, info = env.step(action)
                    assert info["steps"] == env.steps and reward == 0.0 and not done
        assert env.steps == 20 and not env.success
        assert not np.allclose(obs["observation.state"], start)

        # actions are applied: +z moves the end effector up; +1 closes the gripper, -1 opens it
        before = obs["observation.state"]
        for _ in range(5):
            obs, *_ = env.step(np.array([0, 0, 1.0, 0, 0, 0, 1.0]))
        closed = obs["observation.state"]
        assert closed[2] - before[2] > 0.01
        for _ in range(5):
            obs, *_ = env.step(np.array([0, 0, 0, 0, 0, 0, -1.0]))
        opened = obs["observation.state"]
        assert opened[6] - closed[6] > 0.005 and closed[7] - opened[7] > 0.005
        with pytest.raises(InputError, match=r"expected \(7,\)"):
            env.step(np.zeros(6))
        assert env.render().shape == (256, 256, 3)
    finally:
        env.close()
    with pytest.raises(RuntimeError, match="reset"):
        env.render()
