"""Export any checkpoint folder as a stand-alone pirecon, LeRobot or openpi folder (`pirecon export`).

The adapters of a LoRA training checkpoint are merged into the base weights (EMA weights if asked);
the statistics, tokenizer and data info needed to run the model are written beside it, in the
target format's files. The folder is written under OUTPUT.partial and renamed when complete.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from pirecon.checkpoint.folder_info import FolderInfo, local_tokenizer, stats_width
from pirecon.checkpoint.layout import (DATA_INFO, FORMAT_NAME, FORMATS, NORM_STATS, TOKENIZER_FILES,
                                       read_config, resolve_checkpoint)
from pirecon.checkpoint.load import load
from pirecon.checkpoint.write_lerobot import write_lerobot
from pirecon.checkpoint.write_openpi import write_openpi
from pirecon.checkpoint.write_pirecon import copy_tokenizer, save_policy, write_json
from pirecon.data.normalize import default_norm_mode, save_norm_stats_json
from pirecon.errors import ConfigError

log = logging.getLogger(__name__)

# Files copied from a pirecon checkpoint next to the exported weights.
SIDE_FILES = (NORM_STATS, DATA_INFO, *TOKENIZER_FILES)


def export(source: str | Path, output: str | Path, merge_lora: bool = True, use_ema: bool = False,
           overwrite: bool = False, keep_recon_head: bool = False, format: str = "pirecon",
           asset_id: str | None = None, tokenizer_name: str | None = None, tokenizer_path: str | None = None,
           source_asset_id: str | None = None) -> Path:
    source, output = resolve_checkpoint(source), Path(output)
    if format not in FORMATS:
        raise ConfigError(f"--format={format!r}: expected one of {list(FORMATS)}")
    if keep_recon_head and format != "pirecon":
        raise ConfigError(f"--keep_recon_head=true: the {format} layout has no place for the reconstruction head; "
                          f"use --format=pirecon")
    config = read_config(source)
    if config.get("peft") and not merge_lora:
        raise ConfigError("--merge_lora=false: a stand-alone export needs the adapters merged; the checkpoint "
                          f"{source} itself is the adapter form (it references its base)")
    if output.exists() and any(output.iterdir()):
        if not overwrite:
            raise ConfigError(f"--output={output} is not empty; pass --overwrite=true or choose another folder")
        shutil.rmtree(output)
    loaded = load(source, use_ema=use_ema, asset_id=source_asset_id, tokenizer_path=tokenizer_path)
    info, policy = loaded.info, loaded.policy
    if not keep_recon_head:
        policy.recon_head, policy.recon_config = None, None
    tmp = output.with_name(output.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    tokenizer = tokenizer_path or local_tokenizer(info)
    try:
        _write(policy, source, tmp, config, info, use_ema, tokenizer, tokenizer_path, format, asset_id,
               tokenizer_name)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # never a half-written export
        raise
    tmp.rename(output)
    return output


def _write(policy, source: Path, tmp: Path, config: dict, info: FolderInfo, use_ema: bool, tokenizer: str | None,
           tokenizer_path: str | None, format: str, asset_id: str | None, tokenizer_name: str | None) -> None:
    if format == "pirecon":
        _export_pirecon(policy, source, tmp, config, info, use_ema, tokenizer, tokenizer_path)
    else:
        stats, state_dim, action_dim = _stats_in_model_dims(info)
        mode = _mode(info, policy.config)
        delay = policy.config.rtc_training_max_delay
        if delay and not (format == "lerobot" and policy.config.type == "pi05"):
            log.warning("%s was trained with rtc_training_max_delay=%d, which the %s layout of a %s policy cannot "
                        "record (only LeRobot's PI05Config has it): the exported folder reads back with 0 and runs "
                        "real-time chunking in guided mode only", source, delay, format,
                        policy.config.type)
        if format == "lerobot":
            name = tokenizer_name or (info.tokenizer_name if info.layout == "lerobot" else None)
            write_lerobot(
                policy, tmp, stats, mode, tokenizer_name=name, camera_map=info.camera_map,
                camera_keys=info.camera_keys, state_dim=state_dim, action_dim=action_dim)
        else:
            asset = asset_id or info.asset_id or _dataset_name(config)
            if stats and not asset:
                raise ConfigError(f"--asset_id: expected the name for assets/<asset_id>/norm_stats.json (the source "
                                  f"{source} does not tell its dataset)")
            write_openpi(policy, tmp, stats, asset)
        if tokenizer:
            copy_tokenizer(tokenizer, tmp)


def _export_pirecon(policy, source: Path, tmp: Path, config: dict, info: FolderInfo, use_ema: bool,
                    tokenizer: str | None, tokenizer_override: str | None) -> None:
    extra = {"exported_from": str(source.resolve()), "step": config.get("step"), "used_ema": use_ema,
             "tokenizer": config.get("tokenizer")}
    tmp.mkdir(parents=True)
    if info.layout == FORMAT_NAME:
        for name in SIDE_FILES:
            if (source / name).is_file() and not (tokenizer_override and name.startswith("tokenizer")):
                shutil.copyfile(source / name, tmp / name)
        if tokenizer_override:
            extra["tokenizer"] = copy_tokenizer(tokenizer_override, tmp)
    else:  # a LeRobot / openpi source: the side files come from what the folder told
        extra["tokenizer"] = copy_tokenizer(tokenizer, tmp) if tokenizer else None
        if info.stats:
            save_norm_stats_json(info.stats, tmp / NORM_STATS)
        data_info = {"camera_keys": info.camera_keys, "camera_map": info.camera_map, "action_dims": None,
                     "state_dims": None, "action_dim": info.action_dim,
                     "normalization_mode": _mode(info, policy.config) if info.stats else info.normalization_mode}
        write_json(tmp / DATA_INFO, data_info)
    save_policy(policy, tmp, extra_config=extra)


def _mode(info: FolderInfo, cfg) -> str:
    mode = cfg.normalization_mode or info.normalization_mode
    if mode is None and info.mode_problem:
        raise ConfigError(info.mode_problem)
    return mode or default_norm_mode(cfg.type)


def _stats_in_model_dims(info: FolderInfo):
    """(stats, state_dim, action_dim) as the exported folder's data must look: a pirecon run that
    selected dims (--dataset.action_dims / state_dims) exports statistics cut to those dims."""
    stats = info.stats
    if stats and (info.action_dims is not None or info.state_dims is not None):
        stats = {key: dict(fields) for key, fields in stats.items()}
        for key, dims in (("actions", info.action_dims), ("state", info.state_dims)):
            if dims is not None and key in stats:
                width = stats_width(stats[key])
                stats[key] = {name: value[list(dims)] if value.shape[0] == width else value
                              for name, value in stats[key].items()}
        log.warning("%s selected data dims (actions %s, state %s); the exported statistics and features cover only "
                    "those dims, so the data must be cut the same way before it reaches the policy",
                    info.folder, info.action_dims, info.state_dims)
    state_dim = len(info.state_dims) if info.state_dims is not None else info.state_dim
    action_dim = info.action_dim
    if stats:
        state_dim = stats_width(stats["state"]) if "state" in stats else state_dim
        action_dim = stats_width(stats["actions"]) if "actions" in stats else action_dim
    return stats, state_dim, action_dim


def _dataset_name(config: dict) -> str | None:
    dataset = (config.get("train") or {}).get("dataset") or {}
    if dataset.get("repo_id"):
        return dataset["repo_id"]
    return Path(dataset["root"]).name if dataset.get("root") else None
