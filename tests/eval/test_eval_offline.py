"""`pirecon eval-offline`: action errors in robot units against hand computations."""

import json

import numpy as np
import pytest
import torch

from pirecon.cli import main
from pirecon.data.lerobot import open_dataset
from pirecon.errors import CheckpointError, ConfigError
from pirecon.eval.offline import ActionErrors, evenly_spaced, frame_noise, offline_errors, run
from pirecon.inference import PolicyRunner


def test_action_errors_by_hand():
    pred = np.array([[[1.0, 2.0], [3.0, 4.0]],
                     [[0.0, 0.0], [9.0, 9.0]]])  # (B=2, H=2, D=2)
    target = np.array([[[0.0, 0.0], [3.0, 2.0]],
                       [[1.0, -1.0], [0.0, 0.0]]])
    is_pad = np.array([[False, False], [False, True]])  # the last step of sample 1 is ignored
    errors = ActionErrors(2, 2)
    errors.add(pred, target, is_pad)
    r = errors.result(["x", "y"])
    # Valid errors: s0h0 (1, 2), s0h1 (0, 2), s1h0 (-1, 1).
    assert r["samples"] == 2 and r["valid_steps"] == 3
    assert r["per_dim"][0] == {"name": "x", "mse": pytest.approx(2 / 3), "l1": pytest.approx(2 / 3)}
    assert r["per_dim"][1] == {"name": "y", "mse": pytest.approx(9 / 3), "l1": pytest.approx(5 / 3)}
    assert r["per_step"][0] == {"step": 0, "count": 2, "mse": pytest.approx(7 / 4), "l1": pytest.approx(5 / 4)}
    assert r["per_step"][1] == {"step": 1, "count": 1, "mse": pytest.approx(4 / 2), "l1": pytest.approx(2 / 2)}
    assert r["mse"] == pytest.approx(11 / 6) and r["l1"] == pytest.approx(7 / 6)
    # A step that is padded in every sample has no value rather than a fake 0.
    empty = ActionErrors(2, 1)
    empty.add(np.zeros((1, 2, 1)), np.ones((1, 2, 1)), np.array([[False, True]]))
    assert empty.result()["per_step"][1]["mse"] is None


def test_evenly_spaced():
    assert evenly_spaced(5, None) == [0, 1, 2, 3, 4] and evenly_spaced(5, 9) == [0, 1, 2, 3, 4]
    assert evenly_spaced(10, 4) == [0, 3, 6, 9]


class NoiseAsActions(torch.nn.Module):
    """A policy whose (normalised) output is its input noise: the prediction is known in advance."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.calls = 0

    def sample_actions(self, batch, noise=None, num_steps=None):
        self.calls += 1
        return noise[..., :batch.action_dim]


def test_offline_errors_equal_a_hand_computation(tiny_checkpoint, sim_dataset):
    runner = PolicyRunner.from_checkpoint(tiny_checkpoint)
    pre = runner.preprocessor
    policy = NoiseAsActions(runner.policy.config)
    dataset = open_dataset(sim_dataset, action_horizon=4)
    indices = [0, 5, 11, len(dataset) - 1]  # the last frame: 3 of its 4 chunk steps are padding
    result = offline_errors(policy, pre, dataset, indices, batch_size=3, seed=7)
    assert policy.calls == 2  # batches of 3 + 1

    stats = pre.normalizer.stats["actions"]
    assert pre.normalizer.mode == "mean_std"
    sq, ab, n, per_step_n = np.zeros(3), np.zeros(3), 0, np.zeros(4)
    for i in indices:
        raw = dataset[i]
        noise = frame_noise(7, int(raw["index"]), (4, 8)).numpy()[:, :3]
        pred = noise * (np.asarray(stats["std"]) + 1e-6) + np.asarray(stats["mean"])  # robot units
        valid = ~raw["action_is_pad"].numpy()
        diff = (pred - raw["action"].numpy())[valid]
        sq += (diff ** 2).sum(0)
        ab += np.abs(diff).sum(0)
        n += valid.sum()
        per_step_n += valid
    assert per_step_n[-1] < len(indices)  # padding really was present
    assert result["valid_steps"] == n and [s["count"] for s in result["per_step"]] == per_step_n.tolist()
    np.testing.assert_allclose([d["mse"] for d in result["per_dim"]], sq / n, rtol=1e-5)
    np.testing.assert_allclose([d["l1"] for d in result["per_dim"]], ab / n, rtol=1e-5)
    assert result["mse"] == pytest.approx(sq.sum() / (3 * n), rel=1e-5)


def test_real_model_matches_policy_runner_and_ignores_batching(tiny_checkpoint, sim_dataset):
    runner = PolicyRunner.from_checkpoint(tiny_checkpoint)
    dataset = open_dataset(sim_dataset, action_horizon=4)
    indices = [1, 2, 9]
    one = offline_errors(runner.policy, runner.preprocessor, dataset, indices, batch_size=1, seed=3, num_steps=3)
    three = offline_errors(runner.policy, runner.preprocessor, dataset, indices, batch_size=3, seed=3, num_steps=3)
    np.testing.assert_allclose([d["mse"] for d in one["per_dim"]], [d["mse"] for d in three["per_dim"]], rtol=1e-4)
    # By hand: the runner's own observation path with the same per-frame noise.
    sq = np.zeros(3)
    for i in indices:
        raw = dataset[i]
        obs = {k: v for k, v in raw.items() if k.startswith("observation.") or k == "task"}
        batch = runner.preprocessor.from_observation(obs)
        noise = frame_noise(3, int(raw["index"]), (4, 8))[None]
        with torch.no_grad():
            actions = runner.policy.sample_actions(batch, noise=noise, num_steps=3)
        pred = runner.preprocessor.postprocess_actions(actions)[0]
        valid = ~raw["action_is_pad"].numpy()
        sq += ((pred - raw["action"].numpy())[valid] ** 2).sum(0)
    np.testing.assert_allclose([d["mse"] for d in one["per_dim"]], sq / one["valid_steps"], rtol=1e-4)


def test_cli_writes_json_with_named_dims(tiny_checkpoint, sim_dataset, tmp_path, capsys):
    out = tmp_path / "offline.json"
    assert main(["eval-offline", f"--policy.path={tiny_checkpoint}", f"--dataset.root={sim_dataset}",
                 "--dataset.episodes=[1,2]", "--max_samples=5", "--batch_size=2", f"--output={out}",
                 "--policy.num_inference_steps=2", "--progress_bar=false"]) == 0
    result = json.loads(out.read_text())
    assert result["samples"] == 5 and result["dataset"]["episodes"] == [1, 2]
    assert [d["name"] for d in result["per_dim"]] == ["vx", "vy", "gripper"]
    assert len(result["per_step"]) == 4 and result["num_inference_steps"] == 2
    assert result["checkpoint"] == str(tiny_checkpoint.resolve())
    printed = capsys.readouterr().out
    assert "gripper" in printed and "chunk step" in printed
    # Without --dataset.root the training dataset is used; the same frames give the same numbers.
    from pirecon.configs.parse import parse_flags
    from pirecon.configs.eval import OfflineConfig
    from pirecon.eval.offline import run_offline
    again = run_offline(parse_flags([f"--policy.path={tiny_checkpoint}", "--dataset.episodes=[1,2]",
                                     "--max_samples=5", "--batch_size=5", "--policy.num_inference_steps=2",
                                     "--progress_bar=false"], OfflineConfig))
    assert again["dataset"]["root"] == result["dataset"]["root"]
    assert again["mse"] == pytest.approx(result["mse"], rel=1e-4)


def test_validation_split_holds_out_the_last_episodes(tiny_checkpoint):
    from pirecon.configs.parse import parse_flags
    from pirecon.configs.eval import OfflineConfig
    from pirecon.eval.offline import run_offline

    cfg = parse_flags([f"--policy.path={tiny_checkpoint}", "--dataset.split=val", "--dataset.val_episodes=1",
                       "--max_samples=2", "--policy.num_inference_steps=1", "--progress_bar=false"], OfflineConfig)
    result = run_offline(cfg)
    assert result["dataset"]["episodes"] == [3] and result["dataset"]["split"] == "val"
    assert result["samples"] == 2


@pytest.mark.parametrize("extra, error, message", [
    (["--dataset.split=val"], ConfigError, r"--dataset.split=val: no held-out episodes"),
    (["--dataset.split=test"], ConfigError, r"--dataset.split='test': expected one of"),
    (["--batch_size=0"], ConfigError, r"--batch_size=0: expected a positive integer"),
    (["--max_samples=0"], ConfigError, r"--max_samples=0"),
    (["--dataset.episode=[1]"], ConfigError, r"unknown flag --dataset.episode; did you mean --dataset.episodes"),
    (["--use_ema=true"], CheckpointError, r"--use_ema=true but .* no ema.safetensors"),
])
def test_bad_flags(no_ema_checkpoint, extra, error, message):
    with pytest.raises(error, match=message):
        run([f"--policy.path={no_ema_checkpoint}", "--progress_bar=false", *extra])


def test_missing_dataset_root(no_ema_checkpoint, tmp_path):
    with pytest.raises(ConfigError, match="--dataset.root=.*no meta/info.json"):
        run([f"--policy.path={no_ema_checkpoint}", f"--dataset.root={tmp_path}"])
    with pytest.raises(ConfigError, match="--policy.path: expected a checkpoint folder"):
        run([f"--dataset.root={tmp_path}"])
