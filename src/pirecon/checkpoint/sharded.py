"""Sharded training checkpoints (`--checkpoint_format=dcp`): torch.distributed.checkpoint folders
inside a checkpoint folder, written by every process of an FSDP run, read back by any number.

  pytorch_model_fsdp_0/   {"model": weights}: the whole model, or a LoRA run's trained weights
                          (adapters and the weights trained in full; the frozen base stays at
                          base_path). The folder name and layout are accelerate's (and LeRobot's):
                          `accelerate merge-weights` turns it into one safetensors file.
  optimizer_0/            {"optimizer": the optimizer state keyed by parameter names}
  ema_0/                  {"ema": the EMA of the trained weights}            (with --ema_decay)

Loading a model from such a checkpoint consolidates it in memory (`read` puts every shard of a
tensor together, in one process, without a process group); `pirecon export` writes the result
as an ordinary folder. A resumed run loads the optimizer state into its own sharding, whatever
the number of processes (torch.distributed.checkpoint reshards).
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import torch

from pirecon.checkpoint.folder_config import policy_config, read_recon_config
from pirecon.checkpoint.layout import CONFIG_FILE, DCP_METADATA, DCP_MODEL_DIR
from pirecon.errors import CheckpointError
from pirecon.model.pi0 import Pi0Policy


def save(state: dict, folder: Path) -> None:
    """Collective: every rank writes its shards of `state` into `folder`."""
    import torch.distributed.checkpoint as dcp  # lazy: seconds to import

    try:
        dcp.save(state, checkpoint_id=str(folder))
    except (dcp.api.CheckpointException, OSError, RuntimeError) as exc:  # e.g. a full disk on any rank
        raise CheckpointError(f"{folder}: could not write the sharded checkpoint ({_first_line(exc)}); the earlier "
                              f"checkpoints are intact") from None


def load(state: dict, folder: Path, distributed: bool) -> None:
    """Fill `state` (this process's tensors, shards or whole ones) from `folder` in place;
    `distributed`: every rank of the process group calls this together."""
    import torch.distributed.checkpoint as dcp  # lazy: seconds to import

    _check(folder)
    try:
        with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is
            warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
            dcp.load(state, checkpoint_id=str(folder), no_dist=not distributed)
    except (dcp.api.CheckpointException, RuntimeError, ValueError, OSError, KeyError) as exc:
        raise CheckpointError(f"{folder}: cannot read the sharded checkpoint ({_first_line(exc)}); it is damaged, "
                              f"incomplete or from another model") from None


def read(folder: Path, key: str) -> dict[str, torch.Tensor]:
    """Every tensor under `key` ("model", "ema") of a DCP folder, whole, in their stored dtypes,
    read in this process alone."""
    from torch.distributed.checkpoint import FileSystemReader  # lazy: seconds to import
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata  # lazy: seconds to import

    _check(folder)
    metadata = FileSystemReader(str(folder)).read_metadata()
    prefix = key + "."
    state = {name[len(prefix):]: torch.empty(meta.size, dtype=meta.properties.dtype)
             for name, meta in metadata.state_dict_metadata.items()
             if name.startswith(prefix) and isinstance(meta, TensorStorageMetadata)}
    if not state:
        raise CheckpointError(f"{folder}: the sharded checkpoint holds no {key!r} tensors")
    load({key: state}, folder, distributed=False)
    return state


def read_policy(folder: Path, dtype: str | None = None) -> Pi0Policy:
    """The Pi0Policy of a full fine-tuning checkpoint written with --checkpoint_format=dcp (its
    config.json and pytorch_model_fsdp_0/), on the CPU. `dtype` overrides the stored precision."""
    folder = Path(folder)
    stored = policy_config(folder)
    config = dataclasses.replace(stored, dtype=dtype) if dtype else stored
    state = read(folder / DCP_MODEL_DIR, "model")
    recon = read_recon_config(folder)
    head = {k[len("recon_head."):]: state.pop(k) for k in list(state) if k.startswith("recon_head.")}
    with torch.device("meta"):
        policy = Pi0Policy(config)
    _assign(policy, state, folder)
    if recon is not None:  # built for real after the backbone (its buffers are not in the state)
        policy.add_recon_head(recon)
        _assign(policy.recon_head, head, folder, assign=False)
    elif head:
        raise CheckpointError(f"{folder}: {DCP_MODEL_DIR} holds reconstruction head weights but {CONFIG_FILE} "
                              f"configures no head")
    if config.dtype != stored.dtype:  # the tensors came in their stored dtypes
        policy.apply_dtype(config.torch_dtype)
    policy.apply_freeze()
    return policy


def _assign(module: torch.nn.Module, state: dict, folder: Path, assign: bool = True) -> None:
    expected = module.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    wrong = [k for k in state if k in expected and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or wrong:
        raise CheckpointError(f"{folder / DCP_MODEL_DIR}: does not match the model of {CONFIG_FILE}: missing "
                              f"{missing[:10]}, unexpected {unexpected[:10]}, other shapes {wrong[:10]}")
    module.load_state_dict(state, strict=True, assign=assign)


def _check(folder: Path) -> None:
    if not (Path(folder) / DCP_METADATA).is_file():
        raise CheckpointError(f"{folder}: no {DCP_METADATA}; expected a complete torch.distributed.checkpoint folder "
                              f"(written with --checkpoint_format=dcp)")


def _first_line(exc: BaseException) -> str:
    failures = getattr(exc, "failures", None)  # a CheckpointException: {rank: (exception, traceback)}
    if failures:
        rank, (exc, _) = next(iter(failures.items()))
        return f"rank {rank}: {_first_line(exc)}"
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"
