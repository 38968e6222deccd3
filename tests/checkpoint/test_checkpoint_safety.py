import errno
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

from pirecon.checkpoint import training as ckpt
from pirecon.checkpoint.layout import last_checkpoint
from pirecon.checkpoint.load import load_model
from pirecon.errors import CheckpointError
from pirecon.train.command import parse_train_flags
from pirecon.train.loop import Trainer, train
from tests.train.helpers import tiny_train_flags


def test_failed_save_leaves_last_intact(sim_dataset, sim_tokenizer, tmp_path, monkeypatch):
    out = tmp_path / "run"
    trainer = Trainer(parse_train_flags(tiny_train_flags(sim_dataset, sim_tokenizer, out, "--steps=4",
                                                         "--save_freq=2")))
    real_save = torch.save
    calls = {"n": 0}

    def failing_save(obj, path, *a, **kw):
        calls["n"] += 1
        if calls["n"] == 2:  # the second checkpoint dies half-written: the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, path, *a, **kw)

    monkeypatch.setattr(ckpt.torch, "save", failing_save)
    with pytest.raises(CheckpointError, match=rf"{out / 'checkpoints'}: could not write checkpoint 000004 \(no space "
                                              r"left on device\); the earlier checkpoints are intact"):
        trainer.run()
    assert last_checkpoint(out).name == "000002"
    # Nothing half-written stays behind.
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["000002", "last"]
    load_model(last_checkpoint(out))


def test_a_damaged_or_half_pruned_checkpoint_is_named(sim_dataset, sim_tokenizer, tmp_path, capsys):
    from pirecon.cli import main

    out = tmp_path / "run"
    train(parse_train_flags(tiny_train_flags(sim_dataset, sim_tokenizer, out, "--steps=2")))
    last = last_checkpoint(out)
    weights = last / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])  # a copy cut short
    with pytest.raises(CheckpointError, match=r"model.safetensors: \d+ bytes, the checkpoint's manifest says"):
        load_model(last)
    (last / "manifest.json").unlink()  # without a manifest the file itself is checked
    for command in (["eval", f"--policy.path={last}", "--env.max_steps=4", f"--output_dir={tmp_path / 'e'}"],
                    ["export", f"--policy.path={last}", f"--output={tmp_path / 'x'}"],
                    ["serve", f"--policy.path={last}", "--port=0"]):
        assert main(command) == 2
        err = capsys.readouterr().err
        assert "model.safetensors: not a readable safetensors file" in err and "Traceback" not in err, err
    assert not (tmp_path / "x").exists()
    (last / "config.json").write_text('{"format": "pirecon", ')
    for command in (["eval", f"--policy.path={last}", f"--output_dir={tmp_path / 'e2'}"],
                    ["export", f"--policy.path={last}", f"--output={tmp_path / 'x'}"],
                    ["serve", f"--policy.path={last}", "--port=0"]):
        assert main(command) == 2
        err = capsys.readouterr().err
        assert "config.json: not valid JSON" in err and "Traceback" not in err, err


def test_an_interrupted_prune_leaves_no_half_folder_that_passes_for_a_checkpoint(sim_dataset, sim_tokenizer,
                                                                                 tmp_path):
    out = tmp_path / "run"
    train(parse_train_flags(tiny_train_flags(sim_dataset, sim_tokenizer, out, "--steps=3", "--save_freq=1",
                                             "--keep_last_checkpoints=1")))
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["000003", "last"]
    # A folder a kill left half deleted by an older pirecon is named as such when loaded by name.
    half = out / "checkpoints" / "000003"
    (half / "training_state.pt").unlink()
    with pytest.raises(CheckpointError, match=r"000003: the checkpoint is incomplete \(\['training_state.pt'\] missing"):
        load_model(half)


@pytest.mark.slow
def test_kill_9_during_saves_never_corrupts_last(sim_dataset, sim_tokenizer, tmp_path):
    out = tmp_path / "run"
    flags = tiny_train_flags(sim_dataset, sim_tokenizer, out, "--steps=400", "--save_freq=1",
                             "--keep_last_checkpoints=2", "--policy.use_peft")
    rng = random.Random(0)
    for attempt in range(4):
        args = flags if attempt == 0 else [f"--output_dir={out}", "--resume=true", "--progress_bar=false"]
        proc = subprocess.Popen([sys.executable, "-m", "pirecon", "train", *args], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while time.time() < deadline and last_checkpoint(out) is None:
            time.sleep(0.05)
        before = last_checkpoint(out)
        while time.time() < deadline and last_checkpoint(out) == before:  # let it save a few times
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.6))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        last = last_checkpoint(out)
        assert last is not None and last.is_dir()
        model = load_model(last, trainable=True)  # complete and loadable
        state = torch.load(last / ckpt.TRAINING_STATE, weights_only=False)
        assert state["step"] == int(last.name) and model is not None
    # The run still resumes and finishes after the kills.
    res = subprocess.run([sys.executable, "-m", "pirecon", "train", f"--output_dir={out}", "--resume=true",
                          "--steps=" + str(int(last_checkpoint(out).name) + 2), "--progress_bar=false"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    # Every step is logged once, in order, however often the run was killed and resumed.
    steps = [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, len(steps) + 1))


@pytest.mark.slow
def test_torch_compile_trains_the_tiny_model(sim_dataset, sim_tokenizer, tmp_path):
    out = tmp_path / "run"
    result = train(parse_train_flags(tiny_train_flags(sim_dataset, sim_tokenizer, out, "--steps=2",
                                                      "--policy.compile_model=true")))
    assert result.steps == 2 and result.final_loss == result.final_loss


def test_gradient_checkpointing_gives_the_same_gradients():
    from pirecon import PolicyConfig
    from pirecon.batch import synthetic_batch
    from pirecon.model.pi0 import Pi0Policy

    grads = []
    for enabled in (False, True):
        torch.manual_seed(0)
        policy = Pi0Policy(PolicyConfig(type="pi05", variant="tiny", gradient_checkpointing=enabled,
                                        image_resolution=56))
        batch = synthetic_batch(policy.config, 2)
        policy.train()
        policy.compute_loss(batch, noise=torch.zeros_like(batch.actions), time=torch.tensor([0.3, 0.6]))["loss"].backward()
        grads.append({n: p.grad.clone() for n, p in policy.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    assert all(torch.allclose(grads[0][k], grads[1][k], atol=1e-6) for k in grads[0])


def test_a_damaged_adapter_is_named(sim_dataset, sim_tokenizer, tmp_path):
    out = tmp_path / "run"
    train(parse_train_flags(tiny_train_flags(sim_dataset, sim_tokenizer, out, "--steps=1", "--policy.use_peft")))
    adapter = last_checkpoint(out) / "adapter"
    (adapter / "adapter_config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"adapter: cannot read the PEFT adapter"):
        load_model(last_checkpoint(out))
