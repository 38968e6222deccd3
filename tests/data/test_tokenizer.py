"""Tokenizers from local files: Gemma's SentencePiece model, tiny trained models, HF folders."""

from __future__ import annotations

import json
import pickle
import shutil

import pytest
import torch

from pirecon.data.tokenizer import (
    HFJsonTokenizer,
    SentencePieceTokenizer,
    check_vocab,
    load_tokenizer,
    pad_tokens,
    train_tiny_tokenizer,
)
from pirecon.errors import ConfigError

TEXTS = ["pick up the red block", "put the bowl on the plate", "open the top drawer",
         "Task: stack the cubes, State: 12 128 255;\nAction: "]


def test_gemma_model_ids_and_round_trip(gemma_tokenizer_path):
    tok = load_tokenizer(gemma_tokenizer_path)
    assert isinstance(tok, SentencePieceTokenizer)
    assert (tok.vocab_size, tok.pad_id, tok.eos_id, tok.bos_id) == (256000, 0, 1, 2)
    ids = tok.encode("pick up the red block")
    assert ids == [2, 18075, 908, 573, 3118, 3963]
    assert tok.encode("pick up the red block", add_bos=False) == ids[1:]
    assert tok.encode("\n", add_bos=False) == [108]
    assert tok.decode(ids) == "pick up the red block"
    text = "Task: pick, State: 0 128 255;\nAction: "
    assert tok.decode(tok.encode(text)) == text


def test_hf_folder_with_tokenizer_model(gemma_tokenizer_path, tmp_path):
    folder = tmp_path / "paligemma"
    folder.mkdir()
    shutil.copy(gemma_tokenizer_path, folder / "tokenizer.model")
    (folder / "tokenizer_config.json").write_text("{}")
    tok = load_tokenizer(folder)
    assert isinstance(tok, SentencePieceTokenizer)
    assert tok.encode("pick up the red block") == [2, 18075, 908, 573, 3118, 3963]


def test_tiny_tokenizer_is_deterministic_and_gemma_like(tmp_path):
    a = train_tiny_tokenizer(TEXTS, tmp_path / "a" / "tiny.model", vocab_size=200)
    b = train_tiny_tokenizer(TEXTS, tmp_path / "b.model", vocab_size=200)
    assert a.read_bytes() == b.read_bytes()
    tok = load_tokenizer(a)
    assert (tok.pad_id, tok.eos_id, tok.bos_id) == (0, 1, 2)
    assert tok.vocab_size <= 200
    # Any ASCII prompt, including unseen digits and words, encodes without <unk> (id 3).
    text = "Task: grab the zebra_toy 9, State: 0 7 255;\nAction: "
    ids = tok.encode(text)
    assert ids[0] == 2 and 3 not in ids
    assert tok.decode(ids) == text
    assert tok.encode("\n", add_bos=False) == [tok.encode("\n", add_bos=False)[0]]  # one token
    with pytest.raises(ConfigError, match="vocab_size=8 is too small"):
        train_tiny_tokenizer(TEXTS, tmp_path / "c.model", vocab_size=8)


def test_tiny_tokenizer_keeps_words_whole_like_gemma(tmp_path):
    texts = ["move to the red block", "move to the green block", "put the blue block in the white zone"]
    tok = load_tokenizer(train_tiny_tokenizer(texts, tmp_path / "w.model"))
    # One token per word, with the leading space inside the token as in Gemma: colours are told
    # apart by one id each instead of by letter fragments that "red" and "green" share.
    assert len(tok.encode("move to the red block", add_bos=False)) == 5
    red, green = tok.encode(" red", add_bos=False), tok.encode(" green", add_bos=False)
    assert len(red) == len(green) == 1 and red != green
    assert tok.decode(tok.encode("put the green block in the white zone")) == "put the green block in the white zone"
    split = load_tokenizer(train_tiny_tokenizer(texts, tmp_path / "s.model", whole_words=False))
    assert len(split.encode(" green", add_bos=False)) > 1


def test_hf_folder_with_only_tokenizer_json(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import models, pre_tokenizers

    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, "pick": 4, "up": 5, "the": 6, "block": 7}
    hf = tokenizers.Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    hf.pre_tokenizer = pre_tokenizers.Whitespace()
    folder = tmp_path / "hf"
    folder.mkdir()
    hf.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<bos>", "eos_token": {"content": "<eos>"}, "pad_token": "<pad>"}))
    tok = load_tokenizer(folder)
    assert isinstance(tok, HFJsonTokenizer)
    assert (tok.vocab_size, tok.pad_id, tok.eos_id, tok.bos_id) == (8, 0, 1, 2)
    assert tok.encode("pick up the block") == [2, 4, 5, 6, 7]
    assert tok.encode("pick up", add_bos=False) == [4, 5]
    assert pickle.loads(pickle.dumps(tok)).encode("the block") == [2, 6, 7]


def test_missing_paths_are_clear(tmp_path):
    with pytest.raises(ConfigError, match=r"--policy.tokenizer_path=.*nowhere.*no such file"):
        load_tokenizer(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"neither tokenizer.model nor tokenizer.json.*config.json"):
        load_tokenizer(tmp_path / "empty")
    junk = tmp_path / "junk.model"
    junk.write_bytes(b"not a model")
    with pytest.raises(ConfigError, match="not a SentencePiece model"):
        load_tokenizer(junk)


def test_pad_tokens_and_truncation_warning():
    tokens, mask = pad_tokens([2, 5, 6], 6)
    assert tokens.tolist() == [2, 5, 6, 0, 0, 0] and tokens.dtype == torch.long
    assert mask.tolist() == [True, True, True, False, False, False]
    with pytest.warns(UserWarning, match=r"prompt has 9 tokens.*max_token_len of 4"):
        tokens, mask = pad_tokens(list(range(9)), 4)
    assert tokens.tolist() == [0, 1, 2, 3] and mask.all()


def test_vocab_larger_than_model_is_a_config_error(gemma_tokenizer_path):
    tok = load_tokenizer(gemma_tokenizer_path)
    check_vocab(tok, 257152)
    with pytest.raises(ConfigError, match=r"--policy.tokenizer_path=.*256000 tokens.*only 1024"):
        check_vocab(tok, 1024)


def test_sentencepiece_tokenizer_pickles(tmp_path):
    tok = load_tokenizer(train_tiny_tokenizer(TEXTS, tmp_path / "t.model", vocab_size=200))
    again = pickle.loads(pickle.dumps(tok))
    assert again.encode("open the drawer") == tok.encode("open the drawer")


# ---------------------------------------------------------------------------------------------
# A tokenizer from a dataset's task texts, and `pirecon tokenizer`

DATASET_TASKS = ["pick_up the red block", "Open the top drawer.", "stack 3 cubes on the plate",
                 "put the bowl on the plate"]


def write_task_dataset(root, tasks=DATASET_TASKS, version="v3.0"):
    """A dataset of one 3-frame episode per task (state and action only)."""
    import numpy as np

    from pirecon.data.writer import LeRobotWriter

    features = {"observation.state": {"dtype": "float32", "shape": [4], "names": None},
                "action": {"dtype": "float32", "shape": [3], "names": None}}
    with LeRobotWriter(root, 10, features, version=version) as writer:
        for task in tasks:
            for _ in range(3):
                writer.add_frame({"observation.state": np.zeros(4, np.float32),
                                  "action": np.zeros(3, np.float32)}, task=task)
            writer.save_episode()
    return root


def test_tokenizer_command_covers_every_task_within_the_tiny_vocab(tmp_path, capsys):
    from pirecon.cli import main
    from pirecon.configs.variants import gemma_spec
    from pirecon.data.transforms import clean_text, format_prompt

    root = write_task_dataset(tmp_path / "ds")
    assert main(["tokenizer", f"--dataset.root={root}", f"--output={tmp_path / 'a' / 'tok.model'}"]) == 0
    tok = load_tokenizer(tmp_path / "a" / "tok.model")
    printed = capsys.readouterr().out
    assert f"built from 4 task texts of {root} -> {tmp_path / 'a' / 'tok.model'} (vocab {tok.vocab_size})" in printed
    assert tok.vocab_size <= gemma_spec("gemma_tiny").vocab_size
    for task in DATASET_TASKS:  # as Pi0 and Pi0.5 prompts put them
        for text in (clean_text(task), format_prompt(task, [0.3, -1.0, 0.99, 0.0], kind="pi05")):
            ids = tok.encode(text)
            assert 3 not in ids and max(ids) < tok.vocab_size, (text, ids)
            assert tok.decode(ids) == text
    assert len(tok.encode("pick up the red block", add_bos=False)) == 5  # the cleaned task's words are whole
    # Deterministic: the same dataset gives the same bytes, whichever version and task order it has.
    again = write_task_dataset(tmp_path / "ds2", DATASET_TASKS[::-1], version="v2.1")
    assert main(["tokenizer", f"--dataset.root={again}", f"--output={tmp_path / 'b.model'}"]) == 0
    assert (tmp_path / "b.model").read_bytes() == (tmp_path / "a" / "tok.model").read_bytes()


def test_tokenizer_command_errors_and_help(tmp_path, capsys):
    from pirecon.cli import main

    root = write_task_dataset(tmp_path / "ds")
    assert main(["tokenizer", f"--dataset.root={root}", f"--output={tmp_path / 't.model'}", "--vocab_size=50"]) == 2
    assert "--vocab_size=50: too small for the 4 task texts" in capsys.readouterr().err
    assert main(["tokenizer", f"--dataset.root={root}"]) == 2
    assert "--output: expected the file" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.model"))
    assert main(["tokenizer", "--help"]) == 0
    help_text = capsys.readouterr().out
    assert all(flag in help_text for flag in ("--dataset.root", "--output", "--vocab_size"))
    assert main(["--help"]) == 0 and "tokenizer" in capsys.readouterr().out


def test_task_tokenizer_of_the_real_v2_dataset(gr00t_fixture, tmp_path):
    from pirecon.data.layout import Layout
    from pirecon.data.task_tokenizer import build_task_tokenizer

    built = build_task_tokenizer(gr00t_fixture, tmp_path / "tok.model")
    tasks = Layout(gr00t_fixture).tasks.values()
    assert len(built.texts) == len(set(tasks))
    tok = load_tokenizer(built.path)
    for task in tasks:
        ids = tok.encode(task)
        assert 3 not in ids and tok.decode(ids) == task


def test_a_full_size_model_is_not_given_a_built_tokenizer(tmp_path):
    from pirecon.configs.variants import gemma_spec
    from pirecon.data.task_tokenizer import tokenizer_for_model

    root = write_task_dataset(tmp_path / "ds")
    with pytest.raises(ConfigError, match=r"--policy.tokenizer_path: not given.*paligemma_tokenizer.model") as info:
        tokenizer_for_model(root, tmp_path / "run", gemma_spec("gemma_2b").vocab_size)
    assert "shared" not in str(info.value)
    assert not (tmp_path / "run").exists()
    built = tokenizer_for_model(root, tmp_path / "run", gemma_spec("gemma_tiny").vocab_size)
    assert built.path == tmp_path / "run" / "tokenizer.model" and built.path.is_file()
    with pytest.raises(ConfigError, match=r"needs \d+ tokens, more than the model's vocabulary of 100"):
        tokenizer_for_model(root, tmp_path / "run2", 100)
