"""`pirecon export --policy.path=CKPT --output=DIR [--format=pirecon|lerobot|openpi] [--use_ema=true]`.

Writes a stand-alone checkpoint with the adapters merged into the base weights (EMA weights if
asked), plus the statistics, tokenizer and data info needed to run it. The source may be a
training checkpoint or any folder `pirecon.load_policy` reads (pirecon, LeRobot, openpi).

--format=pirecon  `model.safetensors` + `config.json` (our names), norm_stats.json, data_info.json,
                  tokenizer copy; loads with `pirecon.load_policy(DIR)` and serves like a checkpoint.
--format=lerobot  LeRobot's layout: weights under `model.paligemma_with_expert.*`, config.json
                  (type pi0/pi05), policy_preprocessor.json / policy_postprocessor.json with their
                  statistics safetensors; `--tokenizer_name` is what the preprocessor names
                  (default: the source's, else google/paligemma-3b-pt-224); a tokenizer copy sits beside.
--format=openpi   openpi's PyTorch layout: weights under `paligemma_with_expert.*`, config.json
                  {action_dim, action_horizon, paligemma_variant, action_expert_variant, precision},
                  assets/<--asset_id>/norm_stats.json (default: the source's asset id, else the
                  training dataset's repo_id or folder name).
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from pirecon.configs.parse import format_help, parse_flags
from pirecon.data.normalize import default_norm_mode, save_norm_stats_json
from pirecon.errors import ConfigError
from pirecon.model import foreign, foreign_write, weights
from pirecon.train import checkpoint as ckpt
from pirecon.train import lora

log = logging.getLogger(__name__)

# Files copied from a pirecon checkpoint next to the exported weights.
SIDE_FILES = ("norm_stats.json", "data_info.json", "tokenizer.model", "tokenizer.json")
FORMATS = ("pirecon", "lerobot", "openpi")


@dataclass(frozen=True)
class ExportPolicyFlags:
    path: str | None = None  # a training checkpoint folder (or a training output folder: its checkpoints/last)
    tokenizer_path: str | None = None  # the tokenizer to copy (default: the source's own copy)
    asset_id: str | None = None  # openpi sources with several assets/<asset_id>/norm_stats.json


@dataclass(frozen=True)
class ExportConfig:
    policy: ExportPolicyFlags = field(default_factory=ExportPolicyFlags)
    output: str | None = None  # folder to write
    merge_lora: bool = True  # fold LoRA adapters into the base weights
    use_ema: bool = False  # export the EMA weights
    keep_recon_head: bool = False  # the head only matters for training; serving never runs it
    format: str = "pirecon"  # pirecon | lerobot | openpi folder layout
    asset_id: str | None = None  # --format=openpi: assets/<asset_id>/norm_stats.json
    tokenizer_name: str | None = None  # --format=lerobot: the tokenizer_name the preprocessor names
    overwrite: bool = False  # replace an existing output folder


def export(source: str | Path, output: str | Path, merge_lora: bool = True, use_ema: bool = False,
           overwrite: bool = False, keep_recon_head: bool = False, format: str = "pirecon",
           asset_id: str | None = None, tokenizer_name: str | None = None, tokenizer_path: str | None = None,
           source_asset_id: str | None = None) -> Path:
    source, output = Path(source), Path(output)
    if format not in FORMATS:
        raise ConfigError(f"--format={format!r}: expected one of {list(FORMATS)}")
    if keep_recon_head and format != "pirecon":
        raise ConfigError(f"--keep_recon_head=true: the {format} layout has no place for the reconstruction head; "
                          f"use --format=pirecon")
    config = ckpt.read_checkpoint_config(source)
    if config.get("peft") and not merge_lora:
        raise ConfigError("--merge_lora=false: a stand-alone export needs the adapters merged; the checkpoint "
                          f"{source} itself is the adapter form (it references its base)")
    if output.exists() and any(output.iterdir()):
        if not overwrite:
            raise ConfigError(f"--output={output} is not empty; pass --overwrite=true or choose another folder")
        shutil.rmtree(output)
    info = foreign.read_folder_info(source, asset_id=source_asset_id)
    model = ckpt.load_checkpoint_model(source, use_ema=use_ema, merge_lora=True)
    policy = lora.base_policy(model)
    if not keep_recon_head:
        policy.recon_head, policy.recon_config = None, None
    tmp = output.with_name(output.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    tokenizer = tokenizer_path or foreign.local_tokenizer(info)
    if format == "pirecon":
        _export_pirecon(policy, source, tmp, config, info, use_ema, tokenizer, tokenizer_path)
    else:
        weights.save_foreign_weights(policy, tmp, format)
        stats, state_dim, action_dim = _stats_in_model_dims(info)
        mode = _mode(info, policy.config)
        if format == "lerobot":
            name = tokenizer_name or (info.tokenizer_name if info.layout == "lerobot" else None)
            foreign_write.write_lerobot_files(
                tmp, policy.config, stats, mode, tokenizer_name=name, camera_map=info.camera_map,
                camera_keys=info.camera_keys, state_dim=state_dim, action_dim=action_dim)
        else:
            asset = asset_id or info.asset_id or _dataset_name(config)
            if stats and not asset:
                raise ConfigError(f"--asset_id: expected the name for assets/<asset_id>/norm_stats.json (the source "
                                  f"{source} does not tell its dataset)")
            foreign_write.write_openpi_files(tmp, policy.config, stats, asset)
        if tokenizer:
            ckpt.copy_tokenizer(tokenizer, tmp)
    tmp.rename(output)
    return output


def _export_pirecon(policy, source: Path, tmp: Path, config: dict, info: foreign.FolderInfo, use_ema: bool,
                    tokenizer: str | None, tokenizer_override: str | None) -> None:
    extra = {"exported_from": str(source.resolve()), "step": config.get("step"), "used_ema": use_ema,
             "tokenizer": config.get("tokenizer")}
    tmp.mkdir(parents=True)
    if info.layout == weights.FORMAT_NAME:
        for name in SIDE_FILES:
            if (source / name).is_file() and not (tokenizer_override and name.startswith("tokenizer")):
                shutil.copyfile(source / name, tmp / name)
        if tokenizer_override:
            extra["tokenizer"] = ckpt.copy_tokenizer(tokenizer_override, tmp)
    else:  # a LeRobot / openpi source: the side files come from what the folder told
        extra["tokenizer"] = ckpt.copy_tokenizer(tokenizer, tmp) if tokenizer else None
        if info.stats:
            save_norm_stats_json(info.stats, tmp / foreign.NORM_STATS_FILE)
        data_info = {"camera_keys": info.camera_keys, "camera_map": info.camera_map, "action_dims": None,
                     "state_dims": None, "action_dim": info.action_dim,
                     "normalization_mode": _mode(info, policy.config) if info.stats else info.normalization_mode}
        (tmp / foreign.DATA_INFO_FILE).write_text(json.dumps(data_info, indent=2) + "\n")
    weights.save_policy(policy, tmp, extra_config=extra)


def _mode(info: foreign.FolderInfo, cfg) -> str:
    mode = cfg.normalization_mode or info.normalization_mode
    if mode is None and info.mode_problem:
        raise ConfigError(info.mode_problem)
    return mode or default_norm_mode(cfg.type)


def _stats_in_model_dims(info: foreign.FolderInfo):
    """(stats, state_dim, action_dim) as the exported folder's data must look: a pirecon run that
    selected dims (--dataset.action_dims / state_dims) exports statistics cut to those dims."""
    stats = info.stats
    if stats and (info.action_dims is not None or info.state_dims is not None):
        stats = {key: dict(fields) for key, fields in stats.items()}
        for key, dims in (("actions", info.action_dims), ("state", info.state_dims)):
            if dims is not None and key in stats:
                width = foreign.stats_width(stats[key])
                stats[key] = {name: value[list(dims)] if value.shape[0] == width else value
                              for name, value in stats[key].items()}
        log.warning("%s selected data dims (actions %s, state %s); the exported statistics and features cover only "
                    "those dims, so the data must be cut the same way before it reaches the policy",
                    info.folder, info.action_dims, info.state_dims)
    state_dim = len(info.state_dims) if info.state_dims is not None else info.state_dim
    action_dim = info.action_dim
    if stats:
        state_dim = foreign.stats_width(stats["state"]) if "state" in stats else state_dim
        action_dim = foreign.stats_width(stats["actions"]) if "actions" in stats else action_dim
    return stats, state_dim, action_dim


def _dataset_name(config: dict) -> str | None:
    dataset = (config.get("train") or {}).get("dataset") or {}
    if dataset.get("repo_id"):
        return dataset["repo_id"]
    return Path(dataset["root"]).name if dataset.get("root") else None


def run(argv: list[str]) -> int:
    if "--help" in argv or "-h" in argv:
        print(format_help("export", __doc__, ExportConfig), end="")
        return 0
    cfg = parse_flags(argv, ExportConfig)
    if not cfg.policy.path:
        raise ConfigError("--policy.path: expected a checkpoint folder (e.g. OUT/checkpoints/last)")
    if not cfg.output:
        raise ConfigError("--output: expected the folder to write")
    path = export(cfg.policy.path, cfg.output, merge_lora=cfg.merge_lora, use_ema=cfg.use_ema, overwrite=cfg.overwrite,
                  keep_recon_head=cfg.keep_recon_head, format=cfg.format, asset_id=cfg.asset_id,
                  tokenizer_name=cfg.tokenizer_name, tokenizer_path=cfg.policy.tokenizer_path,
                  source_asset_id=cfg.policy.asset_id)
    print(f"pirecon export: wrote {path} ({cfg.format} layout)")
    return 0
