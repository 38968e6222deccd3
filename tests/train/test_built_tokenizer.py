"""`pirecon train` of a tiny model without --policy.tokenizer_path builds its tokenizer from the
dataset's task texts; a full-size model without one is a clear error."""

import json
import subprocess
import sys

import pytest

from pirecon.data.task_tokenizer import task_texts
from pirecon.data.tokenizer import UNK_ID, load_tokenizer
from pirecon.errors import ConfigError
from pirecon.train.command import parse_train_flags
from pirecon.train.loop import Trainer
from tests.train.helpers import tiny_train_flags


def run_cli(args):
    return subprocess.run([sys.executable, "-m", "pirecon", "train", *args], capture_output=True, text=True,
                          timeout=600)


@pytest.mark.slow
def test_tiny_train_builds_the_same_tokenizer_into_run_and_checkpoint(sim_dataset, tmp_path):
    built = []
    for name in ("a", "b"):
        out = tmp_path / name
        res = run_cli(tiny_train_flags(sim_dataset, None, out, "--steps=2"))
        assert res.returncode == 0, res.stderr[-3000:]
        tokenizer = out / "tokenizer.model"
        texts = task_texts(sim_dataset)
        tok = load_tokenizer(tokenizer)
        assert (f"tokenizer: built from {len(texts)} task texts of {sim_dataset} -> {tokenizer} "
                f"(vocab {tok.vocab_size})") in res.stdout
        assert all(UNK_ID not in tok.encode(text) for text in texts)
        # The run uses it and the checkpoint keeps a copy, as with a given tokenizer.
        assert json.loads((out / "train_config.json").read_text())["policy"]["tokenizer_path"] == str(tokenizer)
        assert (out / "checkpoints" / "last" / "tokenizer.model").read_bytes() == tokenizer.read_bytes()
        built.append(tokenizer.read_bytes())
    assert built[0] == built[1]


def test_full_size_model_without_tokenizer_is_a_clear_error(sim_dataset, tmp_path):
    flags = [f for f in tiny_train_flags(sim_dataset, None, tmp_path / "run", "--steps=1")
             if f != "--policy.variant=tiny"]
    with pytest.raises(ConfigError, match=r"--policy.tokenizer_path: not given; expected PaliGemma's") as info:
        Trainer(parse_train_flags(flags))
    assert "paligemma_tokenizer.model" in str(info.value) and "shared" not in str(info.value)
    assert not (tmp_path / "run" / "tokenizer.model").exists()
