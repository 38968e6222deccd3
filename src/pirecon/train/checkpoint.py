"""Training checkpoints: `output_dir/checkpoints/{step:06d}/` and a `last` link, written atomically.

A checkpoint folder holds:
  config.json            {"format": "pirecon", "policy": ..., "train": ..., "step": N, "peft": bool,
                          "base_path": frozen base weights (PEFT only), "tokenizer": file name}
  model.safetensors      all weights (full fine-tuning) — the folder is then a plain pirecon model
  adapter/               PEFT adapter (adapter_config.json, adapter_model.safetensors)   (PEFT)
  trainable.safetensors  the non-LoRA trainable weights (heads, vision, ...)             (PEFT)
  ema.safetensors        EMA of the trainable weights                                 (optional)
  norm_stats.json        openpi-format normalisation statistics
  tokenizer.model|.json  a copy of the tokenizer
  training_state.pt      optimizer, scheduler, RNG states, data position, step
  data_info.json         cameras, dims and normalisation mode, to rebuild the preprocessing

Everything is written into a temporary sibling folder which is renamed into place, and `last` is
swapped with an atomic rename, so a kill at any moment leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from pirecon.configs.policy import PolicyConfig
from pirecon.configs.parse import from_dict, to_dict
from pirecon.errors import CheckpointError
from pirecon.model import weights
from pirecon.train import lora

CHECKPOINTS = "checkpoints"
LAST = "last"
TRAINING_STATE = "training_state.pt"
EMA_FILE = "ema.safetensors"
TRAINABLE_FILE = "trainable.safetensors"
ADAPTER_DIR = "adapter"
NORM_STATS = "norm_stats.json"


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _fsync_tree(folder: Path) -> None:
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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


def save_checkpoint(output_dir: Path, step: int, model: torch.nn.Module, train_config: dict,
                    training_state: dict, ema_state: dict | None, norm_stats_writer, tokenizer_path: str | None,
                    base_path: str | None, keep_last: int, extra_json: dict[str, dict] | None = None) -> Path:
    """Write checkpoint `step` atomically, point `last` at it, keep the newest `keep_last`.

    `extra_json` maps file names to JSON bodies written into the folder (e.g. data_info.json)."""
    root = Path(output_dir) / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{step:06d}"
    tmp = root / f".tmp-{step:06d}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    policy = lora.base_policy(model)
    is_peft = model is not policy
    if is_peft:
        model.save_pretrained(str(tmp / ADAPTER_DIR))
        save_file({k: v.contiguous().cpu() for k, v in lora.trainable_non_lora_state(model).items()},
                  str(tmp / TRAINABLE_FILE))
    else:
        save_file({k: v.detach().contiguous().cpu() for k, v in policy.state_dict().items()},
                  str(tmp / weights.WEIGHTS_FILE), metadata={"format": weights.FORMAT_NAME})
    if ema_state is not None:
        save_file({k: v.contiguous().cpu() for k, v in ema_state.items()}, str(tmp / EMA_FILE))
    if norm_stats_writer is not None:
        norm_stats_writer(tmp / NORM_STATS)
    tokenizer_file = copy_tokenizer(tokenizer_path, tmp)
    config = {"format": weights.FORMAT_NAME, "policy": to_dict(policy.config), "train": train_config,
              "step": step, "peft": is_peft, "base_path": base_path if is_peft else None,
              "tokenizer": tokenizer_file}
    if policy.recon_head is not None:
        config["recon"] = to_dict(policy.recon_config)
    (tmp / weights.CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    for name, body in (extra_json or {}).items():
        (tmp / name).write_text(json.dumps(body, indent=2) + "\n")
    torch.save(training_state, tmp / TRAINING_STATE)
    _fsync_tree(tmp)
    if final.exists():  # re-saving the same step: move the old one out of the way first
        old = root / f".old-{step:06d}-{os.getpid()}"
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old)
    else:
        tmp.rename(final)
    _point_last(root, final.name)
    _prune(root, keep_last)
    return final


def _point_last(root: Path, name: str) -> None:
    link = root / LAST
    tmp_link = root / f".{LAST}-{os.getpid()}"
    if tmp_link.is_symlink() or tmp_link.exists():
        tmp_link.unlink()
    tmp_link.symlink_to(name)
    os.replace(tmp_link, link)


def _prune(root: Path, keep_last: int) -> None:
    steps = sorted(p for p in root.iterdir() if p.is_dir() and not p.is_symlink() and p.name.isdigit())
    current = (root / LAST).resolve().name if (root / LAST).exists() else None
    for path in steps[:-keep_last]:
        if path.name != current:
            shutil.rmtree(path)
    for leftover in root.glob(".tmp-*"):  # from a run killed mid-save
        if leftover.is_dir() and not leftover.name.endswith(f"-{os.getpid()}"):
            shutil.rmtree(leftover, ignore_errors=True)


def last_checkpoint(output_dir: str | Path) -> Path | None:
    link = Path(output_dir) / CHECKPOINTS / LAST
    return link.resolve() if link.exists() else None


def read_checkpoint_config(folder: Path) -> dict:
    path = Path(folder) / weights.CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{folder}: no {weights.CONFIG_FILE}; expected a pirecon checkpoint folder")
    return json.loads(path.read_text())


def load_checkpoint_model(folder: str | Path, trainable: bool = False, use_ema: bool = False,
                          merge_lora: bool = False, dtype: str | None = None) -> torch.nn.Module:
    """The model of a training checkpoint: a Pi0Policy, or a PeftModel around it (PEFT runs).

    `use_ema` copies the EMA weights in; `merge_lora` folds the adapters into the base weights and
    returns a plain Pi0Policy.
    """
    folder = Path(folder)
    config = read_checkpoint_config(folder)
    if not config.get("peft"):
        model = weights.load_policy(folder, dtype=dtype)
        if trainable:
            model.apply_freeze()
    else:
        base_path = config.get("base_path")
        if not base_path or not Path(base_path).is_dir():
            raise CheckpointError(f"{folder / weights.CONFIG_FILE}: the frozen base {base_path!r} this adapter was "
                                  f"trained on is not there; expected the folder named by base_path")
        policy_cfg = from_dict(PolicyConfig, config["policy"], where=f"{folder / weights.CONFIG_FILE}:policy")
        overrides = {k: getattr(policy_cfg, k) for k in ("freeze_vision_encoder", "train_expert_only",
                                                          "num_inference_steps", "n_action_steps")}
        base = weights.load_policy(base_path, dtype=dtype or policy_cfg.dtype, **overrides)
        if config.get("recon", {}).get("enable"):
            from pirecon.configs.recon import ReconConfig
            base.add_recon_head(from_dict(ReconConfig, config["recon"], where=f"{folder / weights.CONFIG_FILE}:recon"))
        model = lora.load_lora(base, folder / ADAPTER_DIR, trainable=trainable)
        lora.load_trainable_non_lora(model, load_file(str(folder / TRAINABLE_FILE)), folder / TRAINABLE_FILE,
                                     trainable=trainable)
    if use_ema:
        ema_path = folder / EMA_FILE
        if not ema_path.is_file():
            raise CheckpointError(f"{folder}: --use_ema=true but the checkpoint has no {EMA_FILE} (train with --ema_decay)")
        ema = load_file(str(ema_path))
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, value in ema.items():
                params[name].copy_(value.to(params[name].dtype))
    if merge_lora and model is not lora.base_policy(model):
        model = model.merge_and_unload()
    return model
