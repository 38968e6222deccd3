"""`load(path)`: any checkpoint folder -> one `Loaded` (config, model, normaliser, tokenizer, cameras).

Kinds: a pirecon folder (exported, or a training checkpoint with full weights), a training
checkpoint holding a LoRA adapter over a frozen base (merged unless asked otherwise), an openpi
PyTorch folder, a LeRobot folder, or a Hugging Face Hub id (`org/name[@revision]`) found in the
local cache (`pirecon.hubcache`; `--policy.pretrained_path` downloads, loading never does). A
training output folder stands for its `checkpoints/last`.
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from pirecon import hubcache
from pirecon.checkpoint import sharded, weights
from pirecon.checkpoint.folder_config import policy_config
from pirecon.checkpoint.folder_info import (FolderInfo, folder_normalizer, local_tokenizer, read_folder_info,
                                           resolve_tokenizer)
from pirecon.checkpoint.layout import (ADAPTER_DIR, CHECKPOINTS, CONFIG_FILE, EMA_FILE, LAST, TRAINABLE_FILE,
                                       DCP_EMA_DIR, DCP_MODEL_DIR, WEIGHTS_FILE, holds_dcp, is_lora, read_config,
                                       read_safetensors, verify_manifest)
from pirecon.configs.parse import from_dict
from pirecon.configs.policy import PolicyConfig
from pirecon.configs.recon import ReconConfig
from pirecon.data.normalize import Normalizer, default_norm_mode
from pirecon.data.tokenizer import check_vocab, load_tokenizer
from pirecon.errors import CheckpointError
from pirecon.model import lora
from pirecon.model.pi0 import Pi0Policy
from pirecon.model.placement import place


@dataclass(frozen=True)
class Loaded:
    """What a checkpoint folder holds, read once."""

    folder: Path
    layout: str  # "pirecon" | "openpi" | "lerobot" (the file format)
    config: PolicyConfig  # the model's config (the loaded model's, when there is one)
    info: FolderInfo  # statistics, tokenizer name, cameras and dims as the folder tells them
    model: torch.nn.Module | None = None  # a Pi0Policy; a PeftModel when a LoRA checkpoint is not merged
    tokenizer_path: str | None = None  # --policy.tokenizer_path, else the folder's local tokenizer (None: none)
    peft: bool = False  # a LoRA training checkpoint (adapter over a frozen base)
    step: int | None = None  # the training step (training checkpoints and their exports)
    has_ema: bool = False  # holds ema.safetensors

    @property
    def policy(self) -> Pi0Policy:
        """The Pi0Policy (inside the PeftModel of an unmerged LoRA checkpoint)."""
        if self.model is None:
            raise CheckpointError(f"{self.folder}: loaded without its weights")
        return lora.base_policy(self.model)

    @property
    def camera_map(self) -> dict[str, str] | None:
        return self.info.camera_map

    @property
    def normalizer(self) -> Normalizer | None:
        """The folder's statistics as the normaliser it was trained with (None: it has none, or
        they were not read); its own normalisation mode first, then the config's."""
        info, config = self.info, self.config
        if info.stats is None:
            return None
        mode = info.normalization_mode or config.normalization_mode
        if mode is None and not info.mode_problem:
            mode = default_norm_mode(config.type)
        return folder_normalizer(info, mode)

    def tokenizer(self) -> str:
        """`tokenizer_path`, or an error naming what the folder refers to and the flag to pass."""
        return resolve_tokenizer(self.info, self.tokenizer_path)


def load(path: str | Path, *, with_weights: bool = True, with_stats: bool = True, use_ema: bool = False,
         merge_lora: bool = True, trainable: bool = False, dtype: str | None = None,
         device: str | torch.device | None = None, asset_id: str | None = None,
         tokenizer_path: str | None = None) -> Loaded:
    """Read the checkpoint at `path` (a folder, a training output folder or a Hub id).

    with_weights: build the model (`use_ema` copies the EMA weights in, `merge_lora` folds LoRA
        adapters into the base, `trainable` keeps adapters trainable for resuming, `dtype` overrides
        the stored precision, `device` places the model there);
    with_stats: read the statistics into `normalizer` (openpi folders with several assets need
        `asset_id`); `tokenizer_path` replaces the tokenizer the folder names."""
    folder = resolve(path)
    verify_manifest(folder)
    config = policy_config(folder)
    info = read_folder_info(folder, asset_id=asset_id or config.asset_id, with_stats=with_stats)
    model = None
    if with_weights:
        model = load_model(folder, trainable=trainable, use_ema=use_ema, merge_lora=merge_lora, dtype=dtype)
        if device is not None:
            place(model, device, lora.base_policy(model).config.torch_dtype)
        config = lora.base_policy(model).config
    stored = read_config(folder) if info.layout == "pirecon" else {}
    if tokenizer_path:
        check_tokenizer_override(local_tokenizer(info), tokenizer_path, config.vlm.vocab_size)
    return Loaded(folder=folder, layout=info.layout, config=config, info=info, model=model,
                  tokenizer_path=tokenizer_path or local_tokenizer(info),
                  peft=bool(stored.get("peft")), step=stored.get("step"),
                  has_ema=(folder / EMA_FILE).is_file() or holds_dcp(folder, DCP_EMA_DIR))


def check_tokenizer_override(own: str | None, override: str, model_vocab: int) -> None:
    """--policy.tokenizer_path against the tokenizer a checkpoint carries: it must load and fit the
    model; another vocabulary than the checkpoint's is an error, the same size but other bytes a
    warning naming both (token ids may mean other words)."""
    given = load_tokenizer(override)
    check_vocab(given, model_vocab)
    if own is None or Path(own).resolve() == Path(override).resolve():
        return
    mine = load_tokenizer(own)
    if _digest(mine.path) == _digest(given.path):
        return
    if mine.vocab_size != given.vocab_size:
        raise CheckpointError(f"--policy.tokenizer_path={override} has {given.vocab_size} tokens but the checkpoint was "
                              f"trained with {own} ({mine.vocab_size} tokens); drop the flag to use the checkpoint's")
    warnings.warn(f"--policy.tokenizer_path={override} differs from the tokenizer the checkpoint was trained with "
                  f"({own}), though both have {given.vocab_size} tokens: token ids may mean other words",
                  stacklevel=2)


def _digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def resolve(path: str | Path) -> Path:
    """A checkpoint folder; a training output folder's `checkpoints/last`; a Hub id (`org/name[@rev]`)
    that is no local folder: its snapshot in the local Hugging Face cache (never downloaded here).
    Anything else comes back as it is, for the reader to report as missing."""
    folder = Path(path).expanduser()
    if folder.exists():
        last = folder / CHECKPOINTS / LAST
        if not (folder / CONFIG_FILE).is_file() and (last / CONFIG_FILE).is_file():
            return last.resolve()
        return folder
    return hubcache.cached_snapshot(str(path)) or folder


def load_policy(source: str | Path | PolicyConfig, dtype: str | None = None, device: str | torch.device = "cpu",
                **overrides) -> Pi0Policy:
    """A policy from a PolicyConfig (random weights) or a checkpoint folder of any kind (a LoRA
    training checkpoint merged), placed on `device`. `dtype` overrides the stored precision; other
    keyword arguments override PolicyConfig fields that keep the weight shapes."""
    if not isinstance(source, PolicyConfig) and is_lora(Path(source)):
        policy = load_model(Path(source), merge_lora=True, dtype=dtype)
        place(policy, device, policy.config.torch_dtype)
        return policy
    return weights.read_policy(source, dtype=dtype, device=device, **overrides)


def load_model(folder: Path, trainable: bool = False, use_ema: bool = False, merge_lora: bool = False,
               dtype: str | None = None) -> torch.nn.Module:
    """The model of a checkpoint folder: a Pi0Policy, or a PeftModel around it (LoRA checkpoints).

    `use_ema` copies the EMA weights in; `merge_lora` folds the adapters into the base weights and
    returns a plain Pi0Policy."""
    folder = Path(folder)
    verify_manifest(folder)
    if is_lora(folder):
        model = _lora_model(folder, read_config(folder), trainable, dtype)
    elif not (folder / WEIGHTS_FILE).is_file() and holds_dcp(folder, DCP_MODEL_DIR):
        model = sharded.read_policy(folder, dtype=dtype)  # --checkpoint_format=dcp: consolidated here
        place(model, "cpu", model.config.torch_dtype)
    else:
        model = weights.read_policy(folder, dtype=dtype)
        if trainable:
            model.apply_freeze()
    if use_ema:
        _copy_ema(model, folder)
    if merge_lora and model is not lora.base_policy(model):
        model = model.merge_and_unload()
    return model


def _lora_model(folder: Path, config: dict, trainable: bool, dtype: str | None) -> torch.nn.Module:
    where = folder / CONFIG_FILE
    base_path = config.get("base_path")
    if not base_path or not Path(base_path).is_dir():
        raise CheckpointError(f"{where}: the frozen base {base_path!r} this adapter was trained on is not there; "
                              f"expected the folder named by base_path")
    policy_cfg = from_dict(PolicyConfig, config["policy"], where=f"{where}:policy")
    overrides = {k: getattr(policy_cfg, k) for k in ("freeze_vision_encoder", "train_expert_only",
                                                      "num_inference_steps", "n_action_steps")}
    base = weights.read_policy(base_path, dtype=dtype or policy_cfg.dtype, **overrides)
    if config.get("recon", {}).get("enable"):
        base.add_recon_head(from_dict(ReconConfig, config["recon"], where=f"{where}:recon"))
    if not (folder / TRAINABLE_FILE).is_file() and holds_dcp(folder, DCP_MODEL_DIR):
        # --checkpoint_format=dcp: the adapters and the weights trained in full are in the DCP folder.
        model = lora.attach_lora(base, folder / ADAPTER_DIR, trainable=trainable)
        trained = sharded.read(folder / DCP_MODEL_DIR, "model")
        lora.load_trained(model, trained, folder / DCP_MODEL_DIR, trainable=trainable)
        return model
    model = lora.load_lora(base, folder / ADAPTER_DIR, trainable=trainable)
    lora.load_trainable_non_lora(model, read_safetensors(folder / TRAINABLE_FILE), folder / TRAINABLE_FILE,
                                 trainable=trainable)
    return model


def _copy_ema(model: torch.nn.Module, folder: Path) -> None:
    ema_path = folder / EMA_FILE
    if ema_path.is_file():
        ema = read_safetensors(ema_path)
    elif holds_dcp(folder, DCP_EMA_DIR):
        ema = sharded.read(folder / DCP_EMA_DIR, "ema")
    else:
        raise CheckpointError(f"{folder}: --use_ema=true but the checkpoint has no {EMA_FILE} (train with --ema_decay)")
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in ema.items():
            params[name].copy_(value.to(params[name].dtype))

