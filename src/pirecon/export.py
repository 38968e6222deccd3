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

from pirecon.checkpoint.export import export
from pirecon.configs.checkpoint import ExportConfig
from pirecon.configs.parse import format_help, parse_flags
from pirecon.errors import ConfigError


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
