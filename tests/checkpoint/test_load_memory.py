"""A loaded model owns its tensors: nothing of it keeps a checkpoint file memory-mapped (a mapping
holds the whole file, 13.5 GiB for a float32 Pi0.5, for as long as one tensor points into it)."""

import gc
import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from pirecon import PolicyConfig, load_policy, save_policy
from pirecon.checkpoint.keys import openpi_key
from pirecon.checkpoint.layout import last_checkpoint, read_safetensors
from pirecon.checkpoint.load import load_model
from pirecon.model.pi0 import Pi0Policy
from pirecon.train.command import parse_train_flags
from pirecon.train.loop import train
from tests.train.helpers import tiny_train_flags

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")


def mapped_files(under: Path) -> set[str]:
    """Files under `under` that this process has memory-mapped (after a garbage collection)."""
    gc.collect()
    root = str(under.resolve())
    paths = {line.split(maxsplit=5)[5].strip() for line in open("/proc/self/maps") if len(line.split()) == 6}
    return {p for p in paths if p.startswith(root)}


def _float32_policy(kind: str) -> Pi0Policy:
    torch.manual_seed(0)
    policy = Pi0Policy(PolicyConfig(type=kind, variant="tiny", chunk_size=4, n_action_steps=4))
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(torch.randn_like(p) * 0.01)  # values bfloat16 cannot hold
    return policy


def _write(policy: Pi0Policy, folder: Path, layout: str) -> Path:
    if layout == "pirecon":
        return save_policy(policy, folder)
    folder.mkdir()
    save_file({openpi_key(k): v.contiguous() for k, v in policy.state_dict().items()}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({
        "action_dim": 32, "action_horizon": 4, "paligemma_variant": "gemma_tiny",
        "action_expert_variant": "gemma_tiny_expert", "precision": "float32"}))
    return folder


def test_the_check_sees_a_mapping(tmp_path):
    """safetensors' own get_tensor returns a view into its memory map: the check must see that."""
    path = tmp_path / "t.safetensors"
    save_file({"x": torch.arange(4096.0)}, str(path))
    with safe_open(str(path), framework="pt") as f:
        view = f.get_tensor("x")
    assert mapped_files(tmp_path) == {str(path.resolve())}
    del view
    assert mapped_files(tmp_path) == set()


@pytest.mark.parametrize("kind,layout", [("pi0", "pirecon"), ("pi05", "openpi")])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_a_model_loaded_from_a_float32_file_keeps_no_mapping_of_it(kind, layout, dtype, tmp_path):
    stored = _float32_policy(kind)
    folder = _write(stored, tmp_path / "ckpt", layout)
    loaded = load_policy(folder, dtype=dtype)
    assert mapped_files(tmp_path) == set()
    # ... and holds the file's values: float32 as stored; for a bfloat16 model the backbone rounded
    # to bfloat16 (its norms and embeddings kept in float32 hold those rounded values), the action
    # and time projections in float32 exactly as stored.
    got = loaded.state_dict()
    for key, value in stored.state_dict().items():
        if dtype == "bfloat16" and key.startswith("backbone."):
            value = value.bfloat16()
        assert torch.equal(got[key].float(), value.float()), key
    assert got["action_in_proj.weight"].dtype == torch.float32
    assert got["backbone.vlm.norm.weight"].dtype == torch.float32
    big = "backbone.vlm.layers.0.mlp.gate_proj.weight"
    assert got[big].dtype == (torch.bfloat16 if dtype == "bfloat16" else torch.float32)


def test_read_safetensors_gives_tensors_of_their_own(tmp_path):
    path = tmp_path / "t.safetensors"
    expected = {"a": torch.randn(3, 5), "b": torch.arange(7), "c": torch.randn(2, 2).bfloat16(), "s": torch.tensor(2.5)}
    save_file(expected, str(path))
    got = read_safetensors(path)
    assert mapped_files(tmp_path) == set()
    assert got.keys() == expected.keys()
    assert all(torch.equal(got[k], v) and got[k].dtype == v.dtype and got[k].shape == v.shape
               for k, v in expected.items())
    got["a"].add_(1)  # writable, and the file is untouched
    assert torch.equal(read_safetensors(path)["a"], expected["a"])


def test_a_lora_training_checkpoint_keeps_no_mapping(sim_dataset, sim_tokenizer, tmp_path):
    out = tmp_path / "run"
    train(parse_train_flags(tiny_train_flags(sim_dataset, sim_tokenizer, out, "--steps=1", "--policy.use_peft")))
    gc.collect()
    for merge in (False, True):
        model = load_model(last_checkpoint(out), merge_lora=merge)
        assert mapped_files(tmp_path) == set()
        del model
