"""`pirecon.checkpoint.load.load`: one reader for every folder kind, one `Loaded` back."""

import json

import numpy as np
import pytest
import torch
from peft import PeftModel

import pirecon
from pirecon.batch import synthetic_batch
from pirecon.checkpoint.layout import last_checkpoint
from pirecon.checkpoint.load import load
from pirecon.errors import CheckpointError
from pirecon.model.pi0 import Pi0Policy
from pirecon.train.command import parse_train_flags
from pirecon.train.loop import train
from tests.checkpoint.foreign_helpers import lerobot_folder, openpi_folder, stats_arrays, tiny_policy
from tests.train.helpers import tiny_train_flags


@pytest.fixture(scope="module")
def lora_run(sim_dataset, sim_tokenizer, tmp_path_factory):
    out = tmp_path_factory.mktemp("lora_run") / "run"
    train(parse_train_flags(tiny_train_flags(sim_dataset, sim_tokenizer, out, "--steps=2", "--ema_decay=0.5",
                                             "--policy.use_peft=true", "--peft.r=4")))
    return out


def _actions(policy, num_steps: int | None = None, batch_config=None) -> torch.Tensor:
    batch = synthetic_batch(batch_config or policy.config, 2)
    noise = torch.randn(2, policy.config.chunk_size, policy.config.max_action_dim,
                        generator=torch.Generator().manual_seed(0))
    return policy.eval().sample_actions(batch, noise=noise, num_steps=num_steps)


def test_a_lora_training_run(lora_run):
    loaded = pirecon.load(lora_run)  # a training output folder stands for its checkpoints/last
    folder = last_checkpoint(lora_run)
    assert loaded.folder == folder and loaded.layout == "pirecon"
    assert loaded.peft and loaded.step == 2 and loaded.has_ema
    assert type(loaded.model) is Pi0Policy  # adapters merged
    assert loaded.config.chunk_size == 4 and loaded.config.n_action_steps == 2
    data_info = json.loads((folder / "data_info.json").read_text())
    assert loaded.info.camera_keys == data_info["camera_keys"]
    assert loaded.normalizer.mode == data_info["normalization_mode"]
    saved = json.loads((folder / "norm_stats.json").read_text())["norm_stats"]
    np.testing.assert_allclose(loaded.normalizer.stats["actions"]["mean"], saved["actions"]["mean"], rtol=1e-6)
    assert loaded.tokenizer_path == str(folder / "tokenizer.model") == loaded.tokenizer()

    unmerged = load(folder, merge_lora=False)
    assert isinstance(unmerged.model, PeftModel) and isinstance(unmerged.policy, Pi0Policy)
    torch.testing.assert_close(_actions(unmerged.model), _actions(loaded.model), rtol=1e-4, atol=1e-5)
    ema = load(folder, use_ema=True).model
    assert not torch.equal(_actions(ema), _actions(loaded.model))  # the flag really switched weights
    # The public entry points read the same folder kind.
    assert torch.equal(_actions(pirecon.load_policy(folder)), _actions(loaded.model))


def test_without_weights(lora_run):
    loaded = load(lora_run, with_weights=False, with_stats=False)
    assert loaded.model is None and loaded.normalizer is None and loaded.config.chunk_size == 4
    with pytest.raises(CheckpointError, match="loaded without its weights"):
        loaded.policy


def test_foreign_folders(tmp_path, sim_tokenizer):
    policy = tiny_policy("pi05")
    stats = stats_arrays(8, 7)
    folder = lerobot_folder(tmp_path / "lerobot", policy, stats)
    loaded = load(folder)
    assert loaded.layout == "lerobot" and not loaded.peft and loaded.step is None and not loaded.has_ema
    # The same batch for both (the folder's config asks for longer prompts) and its 5 steps.
    assert torch.equal(_actions(loaded.model, batch_config=policy.config), _actions(policy, num_steps=5))
    assert loaded.normalizer.mode == "quantile"
    np.testing.assert_array_equal(loaded.normalizer.stats["actions"]["q99"], stats["actions"]["q99"])
    assert loaded.tokenizer_path is None  # the folder names a hub tokenizer only
    with pytest.raises(CheckpointError, match="names the tokenizer 'google/paligemma-3b-pt-224'"):
        loaded.tokenizer()
    assert load(folder, with_weights=False, tokenizer_path=str(sim_tokenizer)).tokenizer() == str(sim_tokenizer)

    pi0 = tiny_policy("pi0")
    openpi = load(openpi_folder(tmp_path / "openpi", pi0, {"trossen": stats_arrays(8, 8)}), with_weights=False)
    assert openpi.layout == "openpi" and openpi.info.asset_id == "trossen" and openpi.config.type == "pi0"


def test_another_tokenizer_than_the_checkpoints_is_checked(lora_run, tmp_path):
    import warnings

    from pirecon.checkpoint.export import export
    from pirecon.data.tokenizer import load_tokenizer, train_tiny_tokenizer
    from pirecon.errors import ConfigError

    folder = last_checkpoint(lora_run)
    own = load_tokenizer(folder / "tokenizer.model")
    from pirecon.sim import SimEnv

    tasks = SimEnv().all_tasks()  # what the checkpoint's tokenizer was trained on
    same_size = train_tiny_tokenizer([t.replace("green", "brown") for t in tasks], tmp_path / "same.model")
    other_size = train_tiny_tokenizer(tasks, tmp_path / "other.model", whole_words=False)
    assert load_tokenizer(same_size).vocab_size == own.vocab_size
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load(folder, with_weights=False, tokenizer_path=str(same_size))
    assert any("differs from the tokenizer the checkpoint was trained with" in str(w.message) for w in caught)
    other = load_tokenizer(other_size).vocab_size
    with pytest.raises(CheckpointError, match=rf"has {other} tokens but the checkpoint was trained "
                                              rf"with .*tokenizer.model \({own.vocab_size} tokens\)"):
        load(folder, with_weights=False, tokenizer_path=str(other_size))
    with pytest.raises(ConfigError, match="--policy.tokenizer_path=.*missing.model: no such file"):
        export(folder, tmp_path / "out", tokenizer_path=str(tmp_path / "missing.model"))
    (tmp_path / "garbage.model").write_bytes(b"not a model")
    with pytest.raises(ConfigError, match="garbage.model: not a SentencePiece model"):
        export(folder, tmp_path / "out", tokenizer_path=str(tmp_path / "garbage.model"))
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()
