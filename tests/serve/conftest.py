from pathlib import Path

import pytest

from pirecon.checkpoint.layout import last_checkpoint
from pirecon.train.command import parse_train_flags
from pirecon.train.loop import train
from tests.train.helpers import tiny_train_flags


@pytest.fixture(scope="session")
def trained_checkpoint(sim_dataset, sim_tokenizer, tmp_path_factory) -> Path:
    """A tiny Pi0 trained for 2 steps on the simulator dataset: cameras top + wrist, state 3, action 3."""
    out = tmp_path_factory.mktemp("serve_run")
    train(parse_train_flags(tiny_train_flags(sim_dataset, sim_tokenizer, out, "--steps=2")))
    return last_checkpoint(out)
