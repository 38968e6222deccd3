"""Write pirecon folders: `config.json` {"format": "pirecon", "policy": ...} + `model.safetensors`
(our key names, tensors as they are), and the side files beside them (tokenizer copy)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from safetensors.torch import save_file

from pirecon.checkpoint.layout import CONFIG_FILE, FORMAT_NAME, WEIGHTS_FILE
from pirecon.configs.policy import model_config
from pirecon.configs.parse import to_dict
from pirecon.model.pi0 import Pi0Policy


def write_weights(policy: Pi0Policy, folder: Path, state: dict | None = None) -> Path:
    """`model.safetensors` with every tensor of `policy` under our names (`state`: the policy's
    state dict, when it was gathered from a sharded model)."""
    state = {k: v.detach().contiguous().cpu() for k, v in (policy.state_dict() if state is None else state).items()}
    save_file(state, str(folder / WEIGHTS_FILE), metadata={"format": FORMAT_NAME})
    return folder / WEIGHTS_FILE


def pirecon_config(policy: Pi0Policy, extra: dict | None = None) -> dict:
    """The body of a pirecon config.json: the shape-only model config (what the weights need), the
    policy config (how the model runs), the reconstruction head's config, then `extra`."""
    config = {"format": FORMAT_NAME, "model": model_config(policy.config), "policy": to_dict(policy.config),
              **(extra or {})}
    if policy.recon_head is not None:
        config["recon"] = to_dict(policy.recon_config)
    return config


def write_json(path: Path, body: dict) -> None:
    path.write_text(json.dumps(body, indent=2) + "\n")


def save_policy(policy: Pi0Policy, path: str | Path, extra_config: dict | None = None) -> Path:
    """Write `config.json` + `model.safetensors` (our key names, tensors as they are)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    write_weights(policy, path)
    write_json(path / CONFIG_FILE, pirecon_config(policy, extra_config))
    return path


def copy_tokenizer(tokenizer_path: str | None, folder: Path) -> str | None:
    """Copy a SentencePiece model (or tokenizer.json) beside the weights; returns the file name."""
    if not tokenizer_path:
        return None
    src = Path(tokenizer_path)
    if src.is_dir():
        candidates = [src / "tokenizer.model", src / "tokenizer.json"]
        src = next((c for c in candidates if c.is_file()), None)
        if src is None:
            return None
    name = "tokenizer.json" if src.suffix == ".json" else "tokenizer.model"
    shutil.copyfile(src, folder / name)
    return name
