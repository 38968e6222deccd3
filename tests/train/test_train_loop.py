import json
import math
import subprocess
import sys

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pirecon.errors import ConfigError, TrainingError
from pirecon.checkpoint.layout import last_checkpoint
from pirecon.checkpoint.load import load_model
from pirecon.train.command import parse_train_flags
from pirecon.train.loop import Trainer, train
from tests.train.helpers import logged, tiny_train_flags


def run_cli(args, **kw):
    return subprocess.run([sys.executable, "-m", "pirecon", "train", *args], capture_output=True, text=True,
                          timeout=600, **kw)


def test_full_finetune_writes_checkpoints_logs_and_plot(sim_dataset, sim_tokenizer, tmp_path):
    out = tmp_path / "run"
    cfg = parse_train_flags(tiny_train_flags(sim_dataset, sim_tokenizer, out, "--steps=4", "--save_freq=2",
                                             "--keep_last_checkpoints=1", "--tensorboard"))
    result = train(cfg)
    assert result.steps == 4 and math.isfinite(result.final_loss)
    ckpts = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert ckpts == ["000004", "last"]  # keep_last_checkpoints=1 pruned 000002
    assert last_checkpoint(out).name == "000004"
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert {"step", "loss", "action_loss", "lr", "grad_norm", "samples_per_s"} <= set(records[0])
    assert (out / "loss_curves.png").stat().st_size > 1000
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    folder = out / "checkpoints" / "last"
    assert {"config.json", "model.safetensors", "norm_stats.json", "tokenizer.model", "training_state.pt",
            "data_info.json"} <= {p.name for p in folder.iterdir()}
    saved = json.loads((folder / "config.json").read_text())
    assert saved["train"]["steps"] == 4 and saved["policy"]["variant"] == "tiny"
    # A full fine-tune checkpoint is a plain pirecon model folder.
    import pirecon
    policy = pirecon.load_policy(folder)
    assert policy.config.chunk_size == 4


def test_exact_resume_in_a_fresh_process(sim_dataset, sim_tokenizer, tmp_path):
    """8 steps straight == 4 steps, then a new process resuming for 4 more (losses to 1e-6)."""
    straight, split = tmp_path / "straight", tmp_path / "split"
    # Decay steps <= both runs' --steps: the schedule is not scaled to the run length (it would be
    # for the 4-step run alone, as in LeRobot), so both runs follow the same learning rates.
    # Image augmentation on: its draws depend on (seed, rank, step), so the resumed run draws the same.
    common = ("--policy.use_peft", "--ema_decay=0.9", "--save_freq=4", "--policy.scheduler_decay_steps=4",
              "--dataset.image_transforms.enable=true")
    res = run_cli(tiny_train_flags(sim_dataset, sim_tokenizer, straight, "--steps=8", *common))
    assert res.returncode == 0, res.stderr[-3000:]
    res = run_cli(tiny_train_flags(sim_dataset, sim_tokenizer, split, "--steps=4", *common))
    assert res.returncode == 0, res.stderr[-3000:]
    adapter_saved = load_file(str(split / "checkpoints" / "000004" / "adapter" / "adapter_model.safetensors"))
    res = run_cli([f"--output_dir={split}", "--resume=true", "--steps=8", "--progress_bar=false"])
    assert res.returncode == 0, res.stderr[-3000:]
    a, b = logged(straight), logged(split)
    assert sorted(b) == list(range(1, 9))
    for step in range(1, 9):
        assert abs(a[step] - b[step]) <= 1e-6, (step, a[step], b[step])
    # Augmentation took part: the same run without it has other losses.
    plain = tmp_path / "plain"
    res = run_cli(tiny_train_flags(sim_dataset, sim_tokenizer, plain, "--steps=2",
                                   *[c for c in common if "image_transforms" not in c]))
    assert res.returncode == 0, res.stderr[-3000:]
    assert logged(plain)[1] != a[1]
    # The adapters had learned something by step 4 (lora_B starts at zero), so matching losses after
    # the resume means the saved adapter was loaded and kept training.
    assert any(torch.count_nonzero(v) for k, v in adapter_saved.items() if "lora_B" in k)


def test_resume_loads_adapter_weights_trainable(sim_dataset, sim_tokenizer, tmp_path):
    out = tmp_path / "run"
    train(parse_train_flags(tiny_train_flags(sim_dataset, sim_tokenizer, out, "--steps=2", "--policy.use_peft")))
    folder = last_checkpoint(out)
    saved = load_file(str(folder / "adapter" / "adapter_model.safetensors"))
    model = load_model(folder, trainable=True)
    params = dict(model.named_parameters())
    lora_params = {n: p for n, p in params.items() if ".lora_" in n}
    assert lora_params and all(p.requires_grad for p in lora_params.values())
    for key, value in saved.items():
        name = key.replace(".weight", ".default.weight")
        assert torch.equal(params[name].detach().cpu(), value), key
    assert torch.count_nonzero(next(v for k, v in saved.items() if "lora_B" in k)) > 0


def test_existing_run_needs_resume_flag(sim_dataset, sim_tokenizer, tmp_path):
    out = tmp_path / "run"
    train(parse_train_flags(tiny_train_flags(sim_dataset, sim_tokenizer, out, "--steps=1")))
    with pytest.raises(ConfigError, match="already holds checkpoints and --resume=false .*: pass --resume=true"):
        Trainer(parse_train_flags(tiny_train_flags(sim_dataset, sim_tokenizer, out, "--steps=1")))
    with pytest.raises(ConfigError, match="holds no checkpoint"):
        parse_train_flags([f"--output_dir={tmp_path / 'empty'}", "--resume=true"])
    # Another run's files without checkpoints are not overwritten either; a file is not a folder.
    (tmp_path / "logs_only").mkdir()
    (tmp_path / "logs_only" / "log.jsonl").write_text('{"step": 1, "loss": 1.0}\n')
    with pytest.raises(ConfigError, match="logs_only already holds files and --resume=false"):
        Trainer(parse_train_flags(tiny_train_flags(sim_dataset, sim_tokenizer, tmp_path / "logs_only", "--steps=1")))
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(ConfigError, match="a_file is a file; expected a folder"):
        Trainer(parse_train_flags(tiny_train_flags(sim_dataset, sim_tokenizer, tmp_path / "a_file", "--steps=1")))
    assert (tmp_path / "logs_only" / "log.jsonl").read_text() == '{"step": 1, "loss": 1.0}\n'


def test_default_output_dir_job_name_and_no_checkpoints(sim_dataset, sim_tokenizer, tmp_path, monkeypatch, capsys):
    import datetime

    monkeypatch.chdir(tmp_path)
    flags = [f for f in tiny_train_flags(sim_dataset, sim_tokenizer, tmp_path, "--steps=2", "--save_checkpoint=false",
                                         "--job_name=my_job") if not f.startswith("--output_dir")]
    day = datetime.date.today().isoformat()
    result = train(parse_train_flags(flags))
    out = Path(result.output_dir)
    assert out.parent == Path("outputs/train") / day and out.name.endswith("_my_job")
    assert result.checkpoint is None and not (out / "checkpoints").exists() and (out / "log.jsonl").is_file()
    printed = capsys.readouterr().out
    assert f"  output      {out}, run my_job (full config: train_config.json); no checkpoints" in printed


def test_nan_loss_stops_naming_step_and_samples(sim_dataset, sim_tokenizer, tmp_path):
    out = tmp_path / "run"
    trainer = Trainer(parse_train_flags(tiny_train_flags(sim_dataset, sim_tokenizer, out, "--steps=4",
                                                         "--save_freq=2")))
    original = trainer.forward

    def poisoned(batch, **kwargs):
        result = original(batch, **kwargs)
        if trainer.step >= 2:
            result["loss"] = result["loss"] * float("nan")
        return result

    trainer.forward = poisoned
    with pytest.raises(TrainingError, match=r"step 3: the loss is nan for samples \(dataset index\) \[\d+, \d+, \d+, \d+\]"):
        trainer.run()
    assert last_checkpoint(out).name == "000002"


def test_unknown_flag_suggests(sim_dataset, tmp_path):
    res = run_cli(["--optimizer.learning_rate=1"])
    assert res.returncode == 2 and "unknown flag --optimizer.learning_rate" in res.stderr
    assert "--optimizer.lr" in res.stderr or "did you mean" in res.stderr


def test_lerobots_resume_idiom(sim_dataset, sim_tokenizer, tmp_path):
    out = tmp_path / "run"
    train(parse_train_flags(tiny_train_flags(sim_dataset, sim_tokenizer, out, "--steps=2", "--save_freq=1",
                                             "--keep_last_checkpoints=2")))
    saved = out / "checkpoints" / "last" / "pretrained_model" / "train_config.json"
    assert json.loads(saved.read_text())["steps"] == 2
    # As lerobot-train resumes: the config file of the last checkpoint, --resume=true, more steps.
    result = train(parse_train_flags([f"--config_path={saved}", "--resume=true", "--steps=3"]))
    assert result.steps == 3 and sorted(logged(out)) == [1, 2, 3]
    earlier = out / "checkpoints" / "000002" / "pretrained_model" / "train_config.json"
    with pytest.raises(ConfigError, match="resuming continues from the run's last checkpoint"):
        parse_train_flags([f"--config_path={earlier}", "--resume=true", "--steps=4"])
