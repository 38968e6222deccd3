"""`pirecon export --policy.path=CKPT --output=DIR [--merge_lora=true] [--use_ema=true]`.

Writes a stand-alone pirecon checkpoint: `model.safetensors` + `config.json` (adapters merged into
the base weights, EMA weights if asked) plus the statistics, tokenizer and data info needed to run
it. The result loads with `pirecon.load_policy(DIR)` and serves/evaluates like a training
checkpoint.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

from pirecon.config import parse_flags, print_help
from pirecon.errors import ConfigError
from pirecon.model import weights
from pirecon.train import checkpoint as ckpt
from pirecon.train import lora

# Files copied from the checkpoint next to the exported weights.
SIDE_FILES = ("norm_stats.json", "data_info.json", "tokenizer.model", "tokenizer.json")


@dataclass(frozen=True)
class ExportPolicyFlags:
    path: str | None = None


@dataclass(frozen=True)
class ExportConfig:
    policy: ExportPolicyFlags = field(default_factory=ExportPolicyFlags)
    output: str | None = None
    merge_lora: bool = True
    use_ema: bool = False
    keep_recon_head: bool = False  # the head only matters for training; serving never runs it
    format: str = "pirecon"
    overwrite: bool = False


def export(source: str | Path, output: str | Path, merge_lora: bool = True, use_ema: bool = False,
           overwrite: bool = False, keep_recon_head: bool = False) -> Path:
    source, output = Path(source), Path(output)
    config = ckpt.read_checkpoint_config(source)
    if config.get("peft") and not merge_lora:
        raise ConfigError("--merge_lora=false: a stand-alone export needs the adapters merged; the checkpoint "
                          f"{source} itself is the adapter form (it references its base)")
    if output.exists() and any(output.iterdir()):
        if not overwrite:
            raise ConfigError(f"--output={output} is not empty; pass --overwrite=true or choose another folder")
        shutil.rmtree(output)
    model = ckpt.load_checkpoint_model(source, use_ema=use_ema, merge_lora=True)
    policy = lora.base_policy(model)
    if not keep_recon_head:
        policy.recon_head, policy.recon_config = None, None
    tmp = output.with_name(output.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    extra = {"exported_from": str(source.resolve()), "step": config.get("step"), "used_ema": use_ema,
             "tokenizer": config.get("tokenizer")}
    weights.save_policy(policy, tmp, extra_config=extra)
    for name in SIDE_FILES:
        if (source / name).is_file():
            shutil.copyfile(source / name, tmp / name)
    tmp.rename(output)
    return output


def run(argv: list[str]) -> int:
    if "--help" in argv or "-h" in argv:
        print_help(__doc__, ExportConfig)
        return 0
    cfg = parse_flags(argv, ExportConfig, config_path_flag=False)
    if not cfg.policy.path:
        raise ConfigError("--policy.path: expected a checkpoint folder (e.g. OUT/checkpoints/last)")
    if not cfg.output:
        raise ConfigError("--output: expected the folder to write")
    if cfg.format != "pirecon":
        raise ConfigError(f"--format={cfg.format!r}: expected 'pirecon'")
    path = export(cfg.policy.path, cfg.output, merge_lora=cfg.merge_lora, use_ema=cfg.use_ema, overwrite=cfg.overwrite,
                  keep_recon_head=cfg.keep_recon_head)
    print(f"pirecon export: wrote {path}")
    return 0
