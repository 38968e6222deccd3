"""Training checkpoints: `output_dir/checkpoints/{step:06d}/` and a `last` link, written atomically.

Read back by `pirecon.checkpoint.load` (the model) and the trainer (training_state.pt, EMA, RNG).
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
  pytorch_model_fsdp_0/, optimizer_0/, ema_0/   sharded weights, optimizer and EMA state of an FSDP
                         run with --checkpoint_format=dcp (`pirecon.checkpoint.sharded`): then the
                         weight files (not adapter_config.json), ema.safetensors and the optimizer in
                         training_state.pt are absent
  data_info.json         cameras, dims and normalisation mode, to rebuild the preprocessing
  pretrained_model/train_config.json   the run's configuration, where LeRobot keeps it (its resume idiom)

Everything is written into a temporary sibling folder which is renamed into place, and `last` is
swapped with an atomic rename, so a kill at any moment leaves the previous checkpoint intact. The
processes of a sharded run write into the main process's temporary folder (`start_checkpoint`),
which the main process renames once all of them are done (`commit_checkpoint`).
"""

from __future__ import annotations

import errno
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from pirecon.checkpoint.layout import (ADAPTER_DIR, CHECKPOINTS, CONFIG_FILE, EMA_FILE, LAST, NORM_STATS,
                                       PRETRAINED_MODEL, TRAIN_CONFIG, TRAINABLE_FILE, TRAINING_STATE, step_folders,
                                       write_manifest)
from pirecon.checkpoint.write_pirecon import copy_tokenizer, pirecon_config, write_json, write_weights
from pirecon.errors import CheckpointError
from pirecon.model import lora


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


def save_checkpoint(output_dir: Path, step: int, model: torch.nn.Module, train_config: dict,
                    training_state: dict, ema_state: dict | None, norm_stats_writer, tokenizer_path: str | None,
                    base_path: str | None, keep_last: int, extra_json: dict[str, dict] | None = None) -> Path:
    """Write checkpoint `step` atomically, point `last` at it, keep the newest `keep_last`.

    `extra_json` maps file names to JSON bodies written into the folder (e.g. data_info.json)."""
    tmp = start_checkpoint(output_dir, step)
    write_checkpoint(tmp, step, model, train_config, training_state, ema_state, norm_stats_writer, tokenizer_path,
                     base_path, extra_json)
    return commit_checkpoint(tmp, step, keep_last)


def start_checkpoint(output_dir: Path, step: int, tag: int | None = None) -> Path:
    """The empty temporary folder checkpoint `step` is written into (`tag`: part of its name, by
    default this process's id; the processes of a sharded save share the main process's)."""
    root = Path(output_dir) / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".tmp-{step:06d}-{os.getpid() if tag is None else tag}"
    if tmp.exists():
        shutil.rmtree(tmp)
    check_free_space(root)
    tmp.mkdir()
    return tmp


def write_checkpoint(tmp: Path, step: int, model: torch.nn.Module, train_config: dict, training_state: dict,
                     ema_state: dict | None, norm_stats_writer, tokenizer_path: str | None, base_path: str | None,
                     extra_json: dict[str, dict] | None = None, weights: dict | None = None,
                     weights_sharded: bool = False) -> None:
    """Everything but the commit, into `tmp` (removed again on failure). `weights`: the model's
    state dict gathered from a sharded model (written instead of the model's own tensors);
    `weights_sharded`: the weights are in `tmp`'s torch.distributed.checkpoint folder only
    (--checkpoint_format=dcp), no weight files are written."""
    try:
        _write(tmp, step, model, train_config, training_state, ema_state, norm_stats_writer, tokenizer_path,
               base_path, extra_json, weights, weights_sharded)
    except (OSError, RuntimeError) as exc:  # e.g. a full disk; torch.save says "unexpected pos"
        root = tmp.parent
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(f"{root}: could not write checkpoint {step:06d} ({_cause(exc, root)}); the earlier "
                              f"checkpoints are intact") from None


def commit_checkpoint(tmp: Path, step: int, keep_last: int) -> Path:
    """Rename the written `tmp` into place, point `last` at it, keep the newest `keep_last`."""
    root = tmp.parent
    final = root / f"{step:06d}"
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


def check_free_space(root: Path, margin: float = 1.1) -> None:
    """Refuse to start a checkpoint that will not fit: the last one's size (plus 10 %) must be free."""
    last = root / LAST
    if not last.exists():
        return
    needed = sum(p.stat().st_size for p in last.resolve().rglob("*") if p.is_file()) * margin
    free = shutil.disk_usage(root).free
    if free < needed:
        raise CheckpointError(f"{root}: {free / 2**30:.2f} GiB free, a checkpoint needs about {needed / 2**30:.2f} GiB "
                              f"(the last one's size); free some space or point --output_dir elsewhere")


def _cause(exc: BaseException, root: Path) -> str:
    if getattr(exc, "errno", None) == errno.ENOSPC or shutil.disk_usage(root).free < 2**20:
        return "no space left on device"
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


def _write(tmp: Path, step: int, model, train_config: dict, training_state: dict, ema_state, norm_stats_writer,
           tokenizer_path, base_path, extra_json, weights=None, weights_sharded=False) -> None:
    policy = lora.base_policy(model)
    is_peft = model is not policy
    if is_peft and weights_sharded:  # the adapter weights are in the sharded folder: their config here
        model.peft_config[model.active_adapter].save_pretrained(str(tmp / ADAPTER_DIR))
    elif is_peft:
        model.save_pretrained(str(tmp / ADAPTER_DIR), state_dict=weights)
        save_file({k: v.contiguous().cpu() for k, v in lora.trainable_non_lora_state(model, weights).items()},
                  str(tmp / TRAINABLE_FILE))
    elif not weights_sharded:
        write_weights(policy, tmp, weights)
    if ema_state is not None:
        save_file({k: v.contiguous().cpu() for k, v in ema_state.items()}, str(tmp / EMA_FILE))
    if norm_stats_writer is not None:
        norm_stats_writer(tmp / NORM_STATS)
    tokenizer_file = copy_tokenizer(tokenizer_path, tmp)
    write_json(tmp / CONFIG_FILE, pirecon_config(policy, {
        "train": train_config, "step": step, "peft": is_peft, "base_path": base_path if is_peft else None,
        "tokenizer": tokenizer_file}))
    for name, body in (extra_json or {}).items():
        write_json(tmp / name, body)
    (tmp / PRETRAINED_MODEL).mkdir()
    write_json(tmp / PRETRAINED_MODEL / TRAIN_CONFIG, train_config)
    torch.save(training_state, tmp / TRAINING_STATE)
    write_manifest(tmp)
    _fsync_tree(tmp)


def _point_last(root: Path, name: str) -> None:
    link = root / LAST
    tmp_link = root / f".{LAST}-{os.getpid()}"
    if tmp_link.is_symlink() or tmp_link.exists():
        tmp_link.unlink()
    tmp_link.symlink_to(name)
    os.replace(tmp_link, link)


def _prune(root: Path, keep_last: int) -> None:
    steps = step_folders(root.parent)
    current = (root / LAST).resolve().name if (root / LAST).exists() else None
    for path in steps[:-keep_last]:
        if path.name != current:  # renamed away first: a kill mid-delete leaves no half step folder
            trash = root / f".trash-{path.name}-{os.getpid()}"
            path.rename(trash)
            shutil.rmtree(trash)
    for pattern in (".tmp-*", ".trash-*"):  # from a run killed mid-save or mid-prune
        for leftover in root.glob(pattern):
            if leftover.is_dir() and not leftover.name.endswith(f"-{os.getpid()}"):
                shutil.rmtree(leftover, ignore_errors=True)
