"""The closed loop itself, with policies whose output the test controls."""

import math

import numpy as np
import pytest

from pirecon.data.video import probe_video, read_all_frames
from pirecon.errors import ConfigError
from pirecon.eval.envs import make_env
from pirecon.eval.rollout import evaluate, run_episode


class CountingChunks:
    """predict_chunk returns chunk k as rows [k*10 + 0, k*10 + 1, ...] scaled into [-1, 1]."""

    def __init__(self, chunk_size=4, action_dim=3):
        self.chunk_size, self.action_dim = chunk_size, action_dim
        self.calls = 0

    def predict_chunk(self, obs):
        k = self.calls
        self.calls += 1
        rows = (k * 10 + np.arange(self.chunk_size, dtype=np.float32)) / 1000.0
        chunk = np.repeat(rows[:, None], self.action_dim, axis=1)
        chunk[:, -1] *= -1  # gripper open
        return chunk


class RecordingEnv:
    """Wraps an EvalEnv and records every action it is stepped with."""

    def __init__(self, env):
        self.env, self.actions = env, []
        self.fps, self.max_steps, self.action_dim = env.fps, env.max_steps, env.action_dim

    task = property(lambda self: self.env.task)
    success = property(lambda self: self.env.success)
    steps = property(lambda self: self.env.steps)

    def reset(self, seed):
        return self.env.reset(seed)

    def step(self, action):
        self.actions.append(np.array(action))
        return self.env.step(action)

    def render(self):
        return self.env.render()

    def close(self):
        self.env.close()


@pytest.mark.parametrize("n_action_steps", [1, 2, 3, 4])
def test_n_action_steps_sets_replanning(n_action_steps):
    env = RecordingEnv(make_env("sim", "reach", image_size=16, max_steps=11))
    policy = CountingChunks()
    result = run_episode(env, policy, seed=3, n_action_steps=n_action_steps)
    # The tiny moves never reach a block: the episode runs to max_steps.
    assert not result.success and result.steps == 11
    assert policy.calls == result.chunks == math.ceil(11 / n_action_steps)
    # Exactly the first n actions of every chunk were executed, in order.
    expected = [(k * 10 + j) / 1000.0 for k in range(policy.calls) for j in range(n_action_steps)][:11]
    np.testing.assert_allclose([a[0] for a in env.actions], expected, rtol=1e-6)


def test_single_action_policies_and_early_success():
    from pirecon.sim import ScriptedExpert

    env = make_env("sim", "reach", image_size=16)
    expert = ScriptedExpert(env)
    results = evaluate(env, expert, [0, 1, 2], n_action_steps=5)  # a (A,) action counts as a chunk of one
    assert all(r.success for r in results)
    assert all(r.chunks == r.steps < env.max_steps for r in results)
    assert [r.seed for r in results] == [0, 1, 2] and [r.index for r in results] == [0, 1, 2]


def test_videos_have_one_frame_per_step_plus_reset(tmp_path):
    env = make_env("sim", None, image_size=17, max_steps=7)  # odd size: padded to even for yuv420p
    results = evaluate(env, CountingChunks(), [10, 11, 12], n_action_steps=2, video_dir=tmp_path / "v",
                       max_videos=2)
    names = sorted(p.name for p in (tmp_path / "v").iterdir())
    assert names == ["episode_000_failure.mp4", "episode_001_failure.mp4"]
    assert results[2].video is None and results[0].video.endswith("episode_000_failure.mp4")
    frames, _ = read_all_frames(tmp_path / "v" / names[0])
    assert frames.shape == (results[0].steps + 1, 18, 34, 3)
    assert probe_video(tmp_path / "v" / names[0]).fps == env.fps


def test_wrong_action_width_is_a_clear_error():
    env = make_env("sim", None, image_size=16, max_steps=5)
    with pytest.raises(ConfigError, match=r"takes 3 numbers per step.*\(chunk, 3\)"):
        run_episode(env, CountingChunks(action_dim=7), seed=0, n_action_steps=2)
    with pytest.raises(ConfigError, match="n_action_steps=0"):
        run_episode(env, CountingChunks(), seed=0, n_action_steps=0)


def test_failed_episode_leaves_no_partial_video(tmp_path):
    class Broken(CountingChunks):
        def predict_chunk(self, obs):
            if self.calls == 2:
                raise RuntimeError("boom")
            return super().predict_chunk(obs)

    env = make_env("sim", None, image_size=16, max_steps=9)
    with pytest.raises(RuntimeError, match="boom"):
        run_episode(env, Broken(), seed=0, n_action_steps=2, video_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_sim_task_filter_keeps_each_seed_s_layout():
    """--env.task=reach restricts the task kind only: every seed keeps its layout and named block."""
    from pirecon.sim import SimEnv

    env, full = make_env("sim", "reach", image_size=16), SimEnv(image_size=16)
    for seed in range(10):
        env.reset(seed)
        full.reset(seed, kind="reach")
        assert env.task == full.task and env.task.startswith("move to")
        np.testing.assert_array_equal(env.scene.blocks, full.scene.blocks)
        np.testing.assert_array_equal(env.render(), full.render())
