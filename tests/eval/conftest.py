"""A tiny checkpoint trained for 2 steps on the simulator dataset (32x32 cameras), with and without EMA."""

import shutil
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_checkpoint(sim_dataset, sim_tokenizer, tmp_path_factory) -> Path:
    """Full fine-tune, chunk_size 4, n_action_steps 2, EMA kept (ema.safetensors)."""
    from pirecon.train.command import parse_train_flags
    from pirecon.train.loop import train
    from tests.train.helpers import tiny_train_flags

    out = tmp_path_factory.mktemp("eval_ckpt") / "run"
    result = train(parse_train_flags(tiny_train_flags(sim_dataset, sim_tokenizer, out, "--steps=2",
                                                      "--ema_decay=0.5")))
    assert (result.checkpoint / "ema.safetensors").is_file()
    return result.checkpoint


@pytest.fixture(scope="session")
def no_ema_checkpoint(tiny_checkpoint, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("no_ema") / "ckpt"
    shutil.copytree(tiny_checkpoint, folder)
    (folder / "ema.safetensors").unlink()
    return folder


@pytest.fixture(scope="session")
def rtc_trained_checkpoint(sim_dataset, sim_tokenizer, tmp_path_factory) -> Path:
    """As tiny_checkpoint, trained with --policy.rtc_training_max_delay=1 (training-time real-time chunking)."""
    from pirecon.train.command import parse_train_flags
    from pirecon.train.loop import train
    from tests.train.helpers import tiny_train_flags

    out = tmp_path_factory.mktemp("eval_rtc_ckpt") / "run"
    return train(parse_train_flags(tiny_train_flags(sim_dataset, sim_tokenizer, out, "--steps=2",
                                                    "--policy.rtc_training_max_delay=1"))).checkpoint
