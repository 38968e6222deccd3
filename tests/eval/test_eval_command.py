"""`pirecon eval` on a tiny checkpoint trained for 2 steps."""

import json
import math

import numpy as np
import pytest

from pirecon.cli import main
from pirecon.data.video import read_all_frames
from pirecon.errors import CheckpointError, ConfigError
from pirecon.eval.command import evaluate_checkpoint, parse_eval_flags, run
from pirecon.inference import PolicyRunner

FAST = ["--env.max_steps=8", "--eval.progress_bar=false"]


def flags(ckpt, out, *extra):
    return [f"--policy.path={ckpt}", f"--output_dir={out}", *FAST, *extra]


def spy_chunks(monkeypatch) -> list:
    """Record every chunk PolicyRunner.predict_chunk returns."""
    seen = []
    original = PolicyRunner.predict_chunk

    def spy(self, obs):
        seen.append(original(self, obs))
        return seen[-1]

    monkeypatch.setattr(PolicyRunner, "predict_chunk", spy)
    return seen


def test_eval_writes_results_summary_and_videos(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "eval"
    assert run(flags(tiny_checkpoint, out, "--eval.n_episodes=3", "--eval.seed=7", "--eval.max_videos=2")) == 0
    episodes = [json.loads(line) for line in (out / "episodes.jsonl").read_text().splitlines()]
    assert [e["seed"] for e in episodes] == [7, 8, 9] and [e["index"] for e in episodes] == [0, 1, 2]
    assert all({"seed", "task", "success", "steps", "wall_time_s"} <= set(e) for e in episodes)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["episodes"] == 3 and summary["seeds"] == [7, 9]
    assert summary["successes"] == sum(e["success"] for e in episodes)
    assert summary["mean_steps"] == pytest.approx(np.mean([e["steps"] for e in episodes]))
    assert sum(t["episodes"] for t in summary["per_task"].values()) == 3
    assert set(summary["per_task"]) == {e["task"] for e in episodes}
    low, high = summary["ci95"]
    assert 0.0 <= low <= summary["success_rate"] <= high <= 1.0
    assert summary["checkpoint"] == str(tiny_checkpoint.resolve())
    assert summary["policy"]["n_action_steps"] == 2 and summary["policy"]["chunk_size"] == 4
    # The sim renders at the training dataset's camera size (32) without --env.image_size.
    assert summary["env"]["type"] == "sim" and summary["env"]["config"]["image_size"] == 32
    assert summary["env"]["config"]["max_steps"] == 8
    videos = sorted((out / "videos").iterdir())
    assert len(videos) == 2  # --eval.max_videos=2
    for video, episode in zip(videos, episodes):
        assert video.name == f"episode_{episode['index']:03d}_{'success' if episode['success'] else 'failure'}.mp4"
        frames, _ = read_all_frames(video)
        assert frames.shape == (episode["steps"] + 1, 32, 64, 3)  # reset + one per step; two cameras side by side
    printed = capsys.readouterr().out
    assert "success rate" in printed and "all tasks" in printed and "95% CI" in printed


@pytest.mark.parametrize("n_action_steps", [1, 4])
def test_n_action_steps_controls_replanning(tiny_checkpoint, tmp_path, monkeypatch, n_action_steps):
    calls = spy_chunks(monkeypatch)
    out = tmp_path / "eval"
    run(flags(tiny_checkpoint, out, "--eval.n_episodes=2", "--eval.video=false",
              f"--policy.n_action_steps={n_action_steps}"))
    episodes = [json.loads(line) for line in (out / "episodes.jsonl").read_text().splitlines()]
    expected = [math.ceil(e["steps"] / n_action_steps) for e in episodes]
    assert [e["chunks"] for e in episodes] == expected
    assert len(calls) == sum(expected)
    assert not (out / "videos").exists()


def test_an_episode_replays_alone(tiny_checkpoint, tmp_path, monkeypatch):
    """Seed s resets the env and the sampling noise: s alone gives the same chunks as s after others."""
    chunks = spy_chunks(monkeypatch)
    run(flags(tiny_checkpoint, tmp_path / "a", "--eval.n_episodes=2", "--eval.seed=5", "--eval.video=false"))
    both = list(chunks)
    chunks.clear()
    run(flags(tiny_checkpoint, tmp_path / "b", "--eval.n_episodes=1", "--eval.seed=6", "--eval.video=false"))
    assert len(chunks) == 4 and len(both) == 8
    for a, b in zip(both[4:], chunks):
        np.testing.assert_array_equal(a, b)


def test_use_ema(tiny_checkpoint, no_ema_checkpoint, tmp_path, capsys, monkeypatch):
    chunks = {}
    for use_ema in (False, True):
        seen = spy_chunks(monkeypatch)
        summary = evaluate_checkpoint(parse_eval_flags(flags(tiny_checkpoint, tmp_path / str(use_ema),
                                                             "--eval.n_episodes=1", "--eval.video=false",
                                                             f"--use_ema={str(use_ema).lower()}")))
        assert summary["use_ema"] is use_ema
        chunks[use_ema] = seen[0]
        monkeypatch.undo()
    assert not np.allclose(chunks[False], chunks[True])  # the EMA weights were really used
    # Asking for EMA weights a checkpoint does not have: one clear error, exit code 2.
    with pytest.raises(CheckpointError, match="--use_ema=true .* no ema.safetensors"):
        run(flags(no_ema_checkpoint, tmp_path / "x", "--use_ema=true"))
    assert main(["eval", *flags(no_ema_checkpoint, tmp_path / "y", "--use_ema=true")]) == 2
    assert "--use_ema=true" in capsys.readouterr().err
    assert not (tmp_path / "y" / "episodes.jsonl").exists()


def test_sim_task_and_options(tiny_checkpoint, tmp_path):
    out = tmp_path / "reach"
    run(flags(tiny_checkpoint, out, "--env.task=reach", "--eval.n_episodes=3", "--eval.video=false",
              "--env.image_size=48", "--env.num_blocks=2"))
    summary = json.loads((out / "summary.json").read_text())
    assert all(task.startswith("move to the") for task in summary["per_task"])
    assert summary["env"]["config"]["image_size"] == 48 and summary["env"]["config"]["num_blocks"] == 2
    assert summary["env"]["task"] == "reach"


def test_baselines_on_the_same_seeds(tiny_checkpoint, tmp_path):
    summary = evaluate_checkpoint(parse_eval_flags([f"--policy.path={tiny_checkpoint}", f"--output_dir={tmp_path}",
                                                    "--eval.n_episodes=2", "--eval.video=false", "--eval.baselines",
                                                    "--env.task=reach", "--env.max_steps=30",
                                                    "--eval.progress_bar=false"]))
    assert summary["baselines"]["scripted expert"]["success_rate"] == 1.0
    assert summary["baselines"]["random policy"]["episodes"] == 2


def test_training_output_folder_resolves_to_last_checkpoint(tiny_checkpoint, tmp_path):
    run_dir = tiny_checkpoint.parent.parent  # OUT/checkpoints/000002 -> OUT
    cfg = parse_eval_flags(flags(run_dir, tmp_path, "--eval.n_episodes=1", "--eval.video=false"))
    summary = evaluate_checkpoint(cfg)
    assert summary["checkpoint"] == str(tiny_checkpoint.resolve())


@pytest.mark.parametrize("extra, message", [
    (["--eval.n_episode=3"], "unknown flag --eval.n_episode; did you mean --eval.n_episodes"),
    (["--eval.n_episodes=0"], r"--eval.n_episodes=0: expected a positive integer"),
    (["--eval.n_episodes=three"], r"--eval.n_episodes='three': expected an integer"),
    (["--env.type=mujoco"], r"--env.type='mujoco': expected one of \['sim', 'libero'\]"),
    (["--env.imagesize=32"], r"unknown flag --env.imagesize for --env.type=sim; did you mean --env.image_size"),
    (["--env.image_size=big"], r"--env.image_size='big': expected an integer"),
    (["--env.image_size=8"], r"--env.image_size=8: expected 16..1024"),
    (["--env.task=fly"], r"--env.task='fly': the sim's tasks are"),
    (["--policy.n_action_steps=5"], r"--policy.n_action_steps=5: expected <= the checkpoint's chunk_size \(4\)"),
    (["--policy.num_inference_steps=0"], r"--policy.num_inference_steps=0: expected a positive integer"),
    (["--eval.max_videos=-1"], r"--eval.max_videos=-1"),
    (["--env.type=libero", "--eval.baselines"], r"--eval.baselines=true: the scripted expert exists only"),
    (["--policy.rtc=true"], r"--policy.rtc=true guides each chunk .* --eval.latency_steps=d"),
    (["--eval.latency_steps=2"], r"--eval.latency_steps=2: expected 0 <= latency < n_action_steps \(2\)"),
    (["--policy.rtc_mode=prefix"], r"--policy.rtc_mode='prefix': expected one of \['guided', 'trained'\]"),
    (["--policy.rtc_mode=trained"], r"--policy.rtc_mode=trained says how real-time chunking runs; turn it on with "
                                    r"--policy.rtc=true"),
    (["--eval.latency_steps=1", "--policy.rtc=true", "--policy.rtc_mode=trained",
      "--policy.rtc_max_guidance_weight=5"], r"--policy.rtc_max_guidance_weight=5.0 clips guided real-time chunking"),
    (["--eval.latency_steps=1", "--policy.rtc=true", "--eval.latency_mode=sync"],
     r"--policy.rtc=true with --eval.latency_mode=sync: a waiting robot"),
    (["--eval.latency_steps=1", "--policy.rtc=true", "--policy.rtc_mode=trained"],
     r"--policy.rtc_mode=trained: .* was trained without training-time real-time chunking \(rtc_training_max_delay=0\)"),
])
def test_bad_flags_are_clear_errors(tiny_checkpoint, tmp_path, extra, message):
    with pytest.raises(ConfigError, match=message):
        run(flags(tiny_checkpoint, tmp_path / "out", *extra))
    assert not (tmp_path / "out" / "episodes.jsonl").exists()


def test_missing_or_wrong_checkpoint_and_existing_output(tiny_checkpoint, tmp_path):
    with pytest.raises(ConfigError, match="--policy.path: expected a checkpoint folder"):
        run(["--env.max_steps=5"])
    with pytest.raises(CheckpointError, match="--policy.path=.*folder not found"):
        run(flags(tmp_path / "nowhere", tmp_path / "out"))
    with pytest.raises(CheckpointError, match="no config.json"):
        run(flags(tmp_path, tmp_path / "out"))
    out = tmp_path / "done"
    run(flags(tiny_checkpoint, out, "--eval.n_episodes=1", "--eval.video=false"))
    with pytest.raises(ConfigError, match="already holds an evaluation.*--overwrite=true"):
        run(flags(tiny_checkpoint, out, "--eval.n_episodes=1"))
    run(flags(tiny_checkpoint, out, "--eval.n_episodes=2", "--eval.video=false", "--overwrite"))
    assert len((out / "episodes.jsonl").read_text().splitlines()) == 2


def test_help_lists_flags(capsys):
    assert main(["eval", "--help"]) == 0
    text = capsys.readouterr().out
    assert "--env.<name>=value" in text and "--policy.n_action_steps INT|none" in text
    assert "--eval.max_videos INT|none  (default: 10)" in text


def test_libero_options_reach_the_env_as_given(tiny_checkpoint, tmp_path, monkeypatch):
    """--env.type=libero calls LiberoEnv.from_task(task, **options); a stand-in env records them."""
    from pirecon.eval import libero
    from pirecon.sim.env import SimEnv
    from pirecon.sim import SimConfig

    received = {}

    def from_task(task, **options):
        received.update(task=task, options=options)
        return SimEnv(SimConfig(image_size=32, max_steps=4))

    monkeypatch.setattr(libero.LiberoEnv, "from_task", staticmethod(from_task))
    summary = evaluate_checkpoint(parse_eval_flags(flags(tiny_checkpoint, tmp_path, "--env.type=libero",
                                                         "--env.task=libero_10", "--env.num_steps_wait=10",
                                                         "--eval.n_episodes=2", "--eval.video=false")))
    # Strings as typed (LiberoEnv converts and checks them); no sim defaults leak in.
    assert received == {"task": "libero_10", "options": {"max_steps": "8", "num_steps_wait": "10"}}
    assert summary["env"]["type"] == "libero" and summary["episodes"] == 2


def test_sim_image_size_falls_back_to_the_default_when_the_dataset_is_gone(tiny_checkpoint, tmp_path, capsys):
    import shutil
    folder = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, folder)
    config = json.loads((folder / "config.json").read_text())
    config["train"]["dataset"]["root"] = str(tmp_path / "moved")
    (folder / "config.json").write_text(json.dumps(config))
    summary = evaluate_checkpoint(parse_eval_flags(flags(folder, tmp_path / "out", "--eval.n_episodes=1",
                                                         "--eval.video=false")))
    assert summary["env"]["config"]["image_size"] == 96
    assert "pass --env.image_size" in capsys.readouterr().out


def test_sim_settings_come_from_the_recorded_dataset(tiny_checkpoint, sim_dataset, tmp_path, capsys):
    """A dataset written by `pirecon sim record` carries its SimConfig; eval rebuilds that world."""
    import shutil
    data = tmp_path / "data"
    shutil.copytree(sim_dataset, data)
    recorded = json.loads((data / "meta" / "pirecon_sim.json").read_text())
    assert recorded["image_size"] == 32
    recorded.update(cells="corners", num_blocks=2)
    (data / "meta" / "pirecon_sim.json").write_text(json.dumps(recorded))
    folder = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, folder)
    config = json.loads((folder / "config.json").read_text())
    config["train"]["dataset"]["root"] = str(data)
    (folder / "config.json").write_text(json.dumps(config))
    summary = evaluate_checkpoint(parse_eval_flags(flags(folder, tmp_path / "out", "--eval.n_episodes=1",
                                                         "--eval.video=false", "--env.num_blocks=1")))
    env = summary["env"]["config"]
    assert env["cells"] == "corners" and env["image_size"] == 32
    assert env["num_blocks"] == 1  # a flag still overrides the recorded value
    assert "meta/pirecon_sim.json" in capsys.readouterr().out


def test_latency_and_real_time_chunking(tiny_checkpoint, tmp_path):
    out = tmp_path / "rtc"
    assert run(flags(tiny_checkpoint, out, "--eval.n_episodes=2", "--eval.latency_steps=1", "--policy.rtc=true",
                     "--eval.video=false")) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["latency_steps"] == 1 and summary["policy"]["rtc"] is True
    assert summary["mean_abs_delta"] > 0 and summary["seam_abs_delta"] is not None
    episodes = [json.loads(line) for line in (out / "episodes.jsonl").read_text().splitlines()]
    assert all(e["mean_abs_delta2"] is not None for e in episodes)


def test_trained_real_time_chunking_in_the_latency_model(rtc_trained_checkpoint, tmp_path, monkeypatch, capsys):
    """--policy.rtc_mode=trained: each delayed chunk is sampled with the d actions that run meanwhile
    given clean (no execution horizon, no guidance), and comes back starting with them."""
    from pirecon.model.pi0 import Pi0Policy

    calls, chunks = [], []
    sample, predict = Pi0Policy.sample_actions, PolicyRunner.predict_chunk

    def sample_spy(self, batch, **kwargs):
        calls.append(kwargs)
        return sample(self, batch, **kwargs)

    def predict_spy(self, obs, prefix_actions=None, **kwargs):
        chunks.append((prefix_actions, predict(self, obs, prefix_actions=prefix_actions, **kwargs)))
        return chunks[-1][1]

    monkeypatch.setattr(Pi0Policy, "sample_actions", sample_spy)
    monkeypatch.setattr(PolicyRunner, "predict_chunk", predict_spy)
    out = tmp_path / "trained"
    assert run(flags(rtc_trained_checkpoint, out, "--eval.n_episodes=1", "--eval.latency_steps=1",
                     "--policy.rtc=true", "--policy.rtc_mode=trained", "--eval.video=false")) == 0
    assert "real-time chunking, trained mode" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    policy = summary["policy"]
    assert (policy["rtc"], policy["rtc_mode"], policy["rtc_training_max_delay"]) == (True, "trained", 1)
    assert policy["rtc_max_guidance_weight"] is None
    assert "prefix_actions" not in calls[0] and len(calls) >= 3  # the episode's first chunk: nothing runs yet
    for kwargs in calls[1:]:
        assert kwargs["rtc_mode"] == "trained" and kwargs["inference_delay"] == 1
        assert "execution_horizon" not in kwargs and "max_guidance_weight" not in kwargs
    # chunk 4, 2 actions per chunk, d = 1: the first chunk's actions 1..3 remain, later ones' 2..3
    assert [None if p is None else len(p) for p, _ in chunks][:3] == [None, 3, 2]
    for prefix, chunk in chunks[1:]:
        np.testing.assert_allclose(chunk[0], prefix[0], rtol=1e-4, atol=1e-4)  # robot units, after a round trip


def test_guided_real_time_chunking_names_the_trained_alternative(rtc_trained_checkpoint, tmp_path, capsys):
    from pirecon.eval.command import real_time_chunking

    out = tmp_path / "guided"
    assert run(flags(rtc_trained_checkpoint, out, "--eval.n_episodes=1", "--eval.latency_steps=1",
                     "--policy.rtc=true", "--eval.video=false")) == 0
    printed = capsys.readouterr().out
    assert "real-time chunking, guided mode (guidance clip 10); this checkpoint was trained with " \
           "rtc_training_max_delay=1, so --policy.rtc_mode=trained would need no guidance" in printed
    assert json.loads((out / "summary.json").read_text())["policy"]["rtc_mode"] == "guided"
    cfg = parse_eval_flags(flags(rtc_trained_checkpoint, out, "--eval.latency_steps=3", "--policy.rtc=true",
                                 "--policy.rtc_mode=trained"))
    with pytest.raises(ConfigError, match=r"--eval.latency_steps=3 with --policy.rtc_mode=trained: .* delays up to "
                                          r"rtc_training_max_delay=2; expected latency <= 2"):
        real_time_chunking(cfg, rtc_trained_checkpoint, trained_delay=2)
