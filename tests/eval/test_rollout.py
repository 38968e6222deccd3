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


class _Chunks:
    """A chunked policy whose k-th chunk is [100 k + i for i in range(H)] on every action dim,
    recording what it was given (the previous chunk's remaining actions under RTC)."""

    def __init__(self, horizon: int, action_dim: int, rtc: bool = False):
        self.horizon, self.action_dim, self.rtc = horizon, action_dim, rtc
        self.calls: list[tuple] = []

    def reset(self):
        self.calls.clear()

    def predict_chunk(self, obs, prefix_actions=None, inference_delay=0, execution_horizon=None):
        k = len(self.calls)
        self.calls.append((None if prefix_actions is None else prefix_actions[:, 0].tolist(), inference_delay,
                           execution_horizon))
        return np.repeat((100.0 * k + np.arange(self.horizon))[:, None], self.action_dim, axis=1)


class _Recorder:
    """An environment that records the actions it is given and never ends early."""

    fps, action_dim, max_steps = 10, 2, 17
    task = "t"

    def __init__(self):
        self.actions, self.steps, self.success = [], 0, False

    def reset(self, seed):
        self.actions, self.steps = [], 0
        return {"observation.state": np.zeros(2, np.float32)}

    def step(self, action):
        self.actions.append(float(action[0]))
        self.steps += 1
        return {"observation.state": np.zeros(2, np.float32)}, 0.0, False, {}

    def render(self):
        return np.zeros((4, 4, 3), np.uint8)

    def close(self):
        pass


def test_the_latency_model_executes_exactly_the_actions_it_should():
    from pirecon.eval.rollout import run_episode

    env = _Recorder()
    # No latency: chunks of 10, 4 executed each: 0 1 2 3 | 100 101 102 103 | 200 ...
    result = run_episode(env, _Chunks(10, 2), seed=0, n_action_steps=4)
    assert env.actions == [0, 1, 2, 3, 100, 101, 102, 103, 200, 201, 202, 203, 300, 301, 302, 303, 400]
    assert result.chunks == 5
    # Latency 2: after 4 - 2 actions the next chunk is asked for; 2 more of the old chunk run meanwhile,
    # and the new chunk starts at its action 2.
    policy = _Chunks(10, 2, rtc=True)
    result = run_episode(env, policy, seed=0, n_action_steps=4, latency_steps=2)
    assert env.actions == [0, 1, 2, 3, 102, 103, 104, 105, 202, 203, 204, 205, 302, 303, 304, 305, 402]
    # Each request got the old chunk's actions from its moment on, a delay of 2 and s = n = 4.
    assert policy.calls[1] == ([2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0], 2, 4)
    assert policy.calls[2] == ([104.0, 105.0, 106.0, 107.0, 108.0, 109.0], 2, 4)
    # Smoothness: seams jump 3 -> 102 (99), then 105 -> 202 and so on (97); steps of 1 elsewhere.
    assert result.seam_abs_delta == pytest.approx((99 + 97 + 97 + 97) / 4)
    assert result.mean_abs_delta == pytest.approx((12 * 1 + 99 + 3 * 97) / 16)
    with pytest.raises(Exception, match="latency_steps=4: expected 0 <= latency < n_action_steps"):
        run_episode(env, _Chunks(10, 2), seed=0, n_action_steps=4, latency_steps=4)


class _IdleRecorder(_Recorder):
    def idle_action(self):
        return np.full(2, -1.0, np.float32)


def test_a_synchronous_robot_waits_out_every_inference():
    from pirecon.eval.rollout import run_episode

    env = _IdleRecorder()
    result = run_episode(env, _Chunks(10, 2), seed=0, n_action_steps=4, latency_steps=2, latency_mode="sync")
    assert env.actions == [-1, -1, 0, 1, 2, 3, -1, -1, 100, 101, 102, 103, -1, -1, 200, 201, 202]
    assert result.chunks == 3
    with pytest.raises(ConfigError, match="latency_mode=sync needs an environment that can wait"):
        run_episode(_Recorder(), _Chunks(10, 2), seed=0, n_action_steps=4, latency_steps=2, latency_mode="sync")
