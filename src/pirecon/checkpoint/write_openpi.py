"""Write an openpi PyTorch folder: weights under `paligemma_with_expert.*`, config.json
{action_dim, action_horizon, paligemma_variant, action_expert_variant, precision} and
assets/<asset_id>/norm_stats.json, as openpi's PyTorch conversion writes them."""

from __future__ import annotations

from pathlib import Path

from safetensors.torch import save_file

from pirecon.checkpoint import keys
from pirecon.checkpoint.layout import ASSETS_DIR, CONFIG_FILE, NORM_STATS, WEIGHTS_FILE
from pirecon.checkpoint.write_pirecon import write_json
from pirecon.configs.policy import PolicyConfig
from pirecon.data.normalize import Stats, save_norm_stats_json
from pirecon.model.pi0 import Pi0Policy


def openpi_config(cfg: PolicyConfig) -> dict:
    """openpi's PyTorch config.json (the type is told by the tensor names)."""
    return {"action_dim": cfg.max_action_dim, "action_horizon": cfg.chunk_size,
            "paligemma_variant": cfg.paligemma_variant, "action_expert_variant": cfg.action_expert_variant,
            "precision": cfg.dtype}


def write_openpi(policy: Pi0Policy, folder: Path, stats: Stats | None, asset_id: str | None) -> list[Path]:
    """model.safetensors (openpi's tensor names) + config.json + assets/<asset_id>/norm_stats.json
    (statistics need an asset id)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(keys.foreign_state_dict(policy, "openpi"), str(folder / WEIGHTS_FILE), metadata={"format": "pt"})
    write_json(folder / CONFIG_FILE, openpi_config(policy.config))
    written = [folder / WEIGHTS_FILE, folder / CONFIG_FILE]
    if stats:
        if not asset_id:
            raise ValueError("openpi statistics need an asset id")
        written.append(save_norm_stats_json(stats, folder / ASSETS_DIR / asset_id / NORM_STATS))
    return written
