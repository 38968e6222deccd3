"""LeRobot and openpi pretrained folders: config fields, processor pipelines, statistics, tokenizer.

Tensor key names live in `pirecon.checkpoint.keys`; this module knows the files around them.

LeRobot (`lerobot/pi0_base`, `lerobot/pi05_base`, `lerobot/pi05_libero`):
  config.json                  {"type": "pi0"|"pi05", chunk_size, n_action_steps, max_state_dim,
                                max_action_dim, input_features, output_features, normalization_mapping,
                                image_resolution, tokenizer_max_length, num_inference_steps, ...}
  policy_preprocessor.json     {"name", "steps": [{"registry_name", "config", ["state_file"]}, ...]}:
                                rename_observations_processor {rename_map}, tokenizer_processor
                                {tokenizer_name, max_length}, normalizer_processor {features, norm_map}
  policy_postprocessor.json    unnormalizer_processor {features, norm_map} + its state_file
  policy_*_step_<i>_<name>.safetensors   flat statistics: "observation.state.mean", "action.q01", ...
openpi PyTorch: config.json {action_dim, action_horizon, paligemma_variant, action_expert_variant,
  precision} + assets/<asset_id>/norm_stats.json (asset ids may be nested, e.g.
  `physical-intelligence/libero`).
pirecon: norm_stats.json, data_info.json and a tokenizer copy beside the weights.

`read_folder_info` gives one `FolderInfo` for any of the three; `pirecon.checkpoint.write_lerobot`
and `write_openpi` write the LeRobot and openpi files back; `folder_config` turns their
config.json into a PolicyConfig.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors import SafetensorError

from pirecon.checkpoint.folder_config import (ACTION_FEATURE, IMAGE_PREFIX, STATE_FEATURE, STATS_FEATURES,
                                               feature_width, lerobot_cameras, lerobot_mode)
from pirecon.checkpoint.layout import (ASSETS_DIR, CONFIG_FILE, DATA_INFO, NORM_STATS, POSTPROCESSOR_FILE,
                                       PREPROCESSOR_FILE, TOKENIZER_FILES, folder_format, read_safetensors)
from pirecon.configs.parse import load_json
from pirecon.data.normalize import Normalizer, Stats, load_norm_stats_json
from pirecon.errors import CheckpointError, ConfigError

log = logging.getLogger(__name__)

# LeRobot registry names of the processor steps read here (older files name the class instead).
STEP_CLASSES = {"normalizer_processor": "NormalizerProcessorStep",
                "unnormalizer_processor": "UnnormalizerProcessorStep",
                "tokenizer_processor": "TokenizerProcessorStep",
                "rename_observations_processor": "RenameObservationsProcessorStep"}


@dataclass
class FolderInfo:
    """What a pretrained folder says beyond its weights. Stats follow openpi naming, dataset dims."""

    folder: Path
    layout: str  # "pirecon" | "lerobot" | "openpi"
    stats: Stats | None = None
    stats_source: str | None = None  # the file(s) the statistics came from
    normalization_mode: str | None = None  # "mean_std" | "quantile"
    mode_problem: str | None = None  # why the folder's own normalisation cannot be reproduced
    tokenizer_name: str | None = None  # as the folder names it (a local path or a hub id)
    tokenizer_source: str | None = None  # the file that names it
    camera_map: dict[str, str] | None = None  # dataset camera key -> model view
    camera_keys: list[str] | None = None
    action_dims: list[int] | None = None
    state_dims: list[int] | None = None
    action_dim: int | None = None  # real (unpadded) action width
    state_dim: int | None = None
    asset_id: str | None = None  # openpi: the assets/<asset_id> the statistics came from


# ---------------------------------------------------------------------------------------------
# Reading a folder


def read_folder_info(folder: str | Path, asset_id: str | None = None, layout: str | None = None,
                     with_stats: bool = True) -> FolderInfo:
    """Everything but the weights of a pirecon, LeRobot or openpi folder (`with_stats=False`: without
    reading the statistics, e.g. when --policy.use_dataset_stats=true makes them irrelevant)."""
    folder = Path(folder)
    if layout is None:
        layout = folder_format(folder)
    info = FolderInfo(folder=folder, layout=layout)
    if layout == "lerobot":
        _read_lerobot(info, with_stats)
    elif layout == "openpi":
        _read_openpi(info, asset_id, with_stats)
    else:
        _read_pirecon(info, with_stats)
    if info.stats is not None:
        if info.action_dim is None and "actions" in info.stats:
            info.action_dim = stats_width(info.stats["actions"])
        if info.state_dim is None and "state" in info.stats:
            info.state_dim = stats_width(info.stats["state"])
    return info


def stats_width(fields: dict[str, np.ndarray]) -> int | None:
    """The feature width one entry of statistics describes."""
    for name in ("mean", "q01", "std", "q99", "min", "max"):
        if name in fields:
            return int(fields[name].shape[0])
    return None


def _read_pirecon(info: FolderInfo, with_stats: bool) -> None:
    folder = info.folder
    config = load_json(folder / CONFIG_FILE, CheckpointError)
    if config.get("tokenizer"):
        info.tokenizer_name, info.tokenizer_source = config["tokenizer"], str(folder / CONFIG_FILE)
    if (folder / DATA_INFO).is_file():
        data = load_json(folder / DATA_INFO, CheckpointError)
        info.camera_map = data.get("camera_map") or None
        info.camera_keys = data.get("camera_keys") or None
        info.action_dims, info.state_dims = data.get("action_dims"), data.get("state_dims")
        info.action_dim = data.get("action_dim")
        info.normalization_mode = data.get("normalization_mode")
    if info.normalization_mode is None:
        info.normalization_mode = (config.get("policy") or {}).get("normalization_mode")
    if with_stats and (folder / NORM_STATS).is_file():
        info.stats = load_norm_stats_json(folder / NORM_STATS)
        info.stats_source = str(folder / NORM_STATS)
    if info.action_dims is not None:
        info.action_dim = len(info.action_dims)


def _read_openpi(info: FolderInfo, asset_id: str | None, with_stats: bool) -> None:
    path, info.asset_id = find_openpi_stats(info.folder, asset_id) if with_stats else (None, asset_id)
    if path is not None:
        try:
            info.stats = load_norm_stats_json(path)
        except ConfigError as exc:
            raise CheckpointError(str(exc)) from None
        info.stats_source = str(path)
    for candidate in TOKENIZER_FILES:
        if (info.folder / candidate).is_file():
            info.tokenizer_name, info.tokenizer_source = candidate, str(info.folder)
            break


def find_openpi_stats(folder: Path, asset_id: str | None) -> tuple[Path | None, str | None]:
    """(assets/<asset_id>/norm_stats.json, asset_id); several candidates need --policy.asset_id."""
    assets = folder / ASSETS_DIR
    found = sorted(p.parent.relative_to(assets).as_posix() for p in assets.rglob(NORM_STATS)) \
        if assets.is_dir() else []
    if asset_id:
        path = assets / asset_id / NORM_STATS
        if not path.is_file():
            raise ConfigError(f"--policy.asset_id={asset_id}: {path} does not exist; {assets} holds statistics for "
                              f"{found or 'no asset'}")
        return path, asset_id
    if not found:
        return None, None
    if len(found) > 1:
        raise ConfigError(f"{assets} holds statistics for several assets {found}; choose one with "
                          f"--policy.asset_id={found[0]} (or another of them)")
    return assets / found[0] / NORM_STATS, found[0]


def _read_lerobot(info: FolderInfo, with_stats: bool) -> None:
    folder = info.folder
    config = load_json(folder / CONFIG_FILE, CheckpointError)
    info.normalization_mode, info.mode_problem = lerobot_mode(config.get("normalization_mapping"),
                                                              folder / CONFIG_FILE)
    info.action_dim = feature_width(config, "output_features", ACTION_FEATURE)
    info.state_dim = feature_width(config, "input_features", STATE_FEATURE)
    views = set(lerobot_cameras(config))
    pre = read_pipeline(folder / PREPROCESSOR_FILE)
    post = read_pipeline(folder / POSTPROCESSOR_FILE)
    stats: Stats = {}
    sources = []
    for path, pipeline, kind in ((folder / PREPROCESSOR_FILE, pre, "normalizer_processor"),
                                 (folder / POSTPROCESSOR_FILE, post, "unnormalizer_processor")):
        step = find_step(pipeline, kind)
        if step is None:
            continue
        mode, problem = lerobot_mode((step.get("config") or {}).get("norm_map"), path)
        if mode is not None:
            info.normalization_mode, info.mode_problem = mode, None
        elif problem and info.normalization_mode is None and info.mode_problem is None:
            info.mode_problem = problem
        if not with_stats or not step.get("state_file"):
            continue
        state_path = folder / step["state_file"]
        found = read_stats_file(state_path, path)
        for key, fields in found.items():
            if key in stats:
                _check_same(stats[key], fields, key, sources[-1], state_path)
            else:
                stats[key] = fields
        if found:
            sources.append(str(state_path))
    if stats:
        info.stats, info.stats_source = stats, " + ".join(sources)
        info.action_dim = stats_width(stats["actions"]) if "actions" in stats else info.action_dim
        info.state_dim = stats_width(stats["state"]) if "state" in stats else info.state_dim
    tok = find_step(pre, "tokenizer_processor")
    if tok is not None and (tok.get("config") or {}).get("tokenizer_name"):
        info.tokenizer_name, info.tokenizer_source = tok["config"]["tokenizer_name"], str(folder / PREPROCESSOR_FILE)
    rename = find_step(pre, "rename_observations_processor")
    rename_map = (rename.get("config") or {}).get("rename_map") if rename else None
    if rename_map:
        info.camera_map = {}
        for source, target in rename_map.items():
            view = target[len(IMAGE_PREFIX):] if target.startswith(IMAGE_PREFIX) else target
            if view in views:
                info.camera_map[source] = view
            else:
                log.warning("%s: rename_map entry %s -> %s is not a camera of config.json's input_features; "
                            "pirecon ignores it", folder / PREPROCESSOR_FILE, source, target)
        info.camera_map = info.camera_map or None


def read_pipeline(path: Path) -> dict | None:
    if not path.is_file():
        return None
    data = load_json(path, CheckpointError)
    if not isinstance(data.get("steps"), list):
        raise CheckpointError(f"{path}: expected {{\"name\": ..., \"steps\": [...]}} (a LeRobot processor pipeline)")
    return data


def find_step(pipeline: dict | None, registry_name: str) -> dict | None:
    """The first step registered as `registry_name` (or naming its class) in a processor pipeline."""
    for step in (pipeline or {}).get("steps", []):
        cls = str(step.get("class", "")).rsplit(".", 1)[-1]
        if step.get("registry_name") == registry_name or cls == STEP_CLASSES[registry_name]:
            return step
    return None


def read_stats_file(path: Path, named_in: Path) -> Stats:
    """A processor state file {"<feature>.<stat>": tensor} -> {"state"|"actions": {stat: array}}.

    Statistics of other features (cameras, ...) and the sample `count` are left out."""
    if not path.is_file():
        raise CheckpointError(f"{named_in} names the statistics file {path.name}, which is not in {path.parent}")
    try:
        flat = read_safetensors(path)
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{path}: not a safetensors file ({exc})") from None
    ours = {name: key for key, name in STATS_FEATURES.items()}
    out: Stats = {}
    for flat_key, value in flat.items():
        feature, _, stat = flat_key.rpartition(".")
        if feature in ours and stat != "count":
            out.setdefault(ours[feature], {})[stat] = value.float().numpy().reshape(-1)
    return out


def _check_same(a: dict, b: dict, key: str, first: str, second: Path) -> None:
    for stat in set(a) & set(b):
        if a[stat].shape != b[stat].shape or not np.allclose(a[stat], b[stat]):
            raise CheckpointError(f"{first} and {second} hold different {key!r} {stat} statistics; the pre- and "
                                  f"postprocessor of one policy must agree")


# ---------------------------------------------------------------------------------------------
# Using what was read: tokenizer, normaliser, camera map


def local_tokenizer(info: FolderInfo) -> str | None:
    """A local tokenizer file or folder for `info`, or None (e.g. the folder names a hub id only)."""
    if info.tokenizer_name:
        for candidate in (info.folder / Path(info.tokenizer_name).expanduser(), Path(info.tokenizer_name)):
            if candidate.exists():
                return str(candidate)
    for name in (*TOKENIZER_FILES, "tokenizer"):
        if (info.folder / name).exists():
            return str(info.folder / name)
    return None


def resolve_tokenizer(info: FolderInfo, override: str | None = None) -> str:
    """--policy.tokenizer_path wins; then what the folder names or holds; otherwise a clear error."""
    if override:
        return str(override)
    found = local_tokenizer(info)
    if found:
        return found
    if info.tokenizer_name:
        raise CheckpointError(
            f"{info.tokenizer_source} names the tokenizer {info.tokenizer_name!r}, which is not a local file or "
            f"folder (pirecon never downloads); pass --policy.tokenizer_path=PATH to a SentencePiece .model or "
            f"a tokenizer folder, e.g. PaliGemma's tokenizer")
    raise CheckpointError(f"{info.folder}: holds no tokenizer copy; pass --policy.tokenizer_path")


def folder_normalizer(info: FolderInfo, mode: str | None) -> Normalizer | None:
    """The folder's statistics as a Normalizer (None when it has none); errors name the file."""
    if info.stats is None:
        return None
    if mode is None:
        raise ConfigError(info.mode_problem or f"{info.folder}: cannot tell how its statistics normalise; pass "
                                               f"--policy.normalization_mode=mean_std|quantile")
    if "actions" not in info.stats:
        raise CheckpointError(f"{info.stats_source}: holds statistics for {sorted(info.stats)} but none for the "
                              f"actions; pass --policy.use_dataset_stats=true to use the dataset's")
    try:
        return Normalizer(info.stats, mode)
    except ConfigError as exc:
        raise ConfigError(f"{info.stats_source}: {exc}; or pass --policy.use_dataset_stats=true") from None


def folder_camera_map(info: FolderInfo, camera_keys) -> dict[str, str] | None:
    """The folder's camera map when every camera it names is in the data (else None: order mapping)."""
    if not info.camera_map:
        return None
    keys = set(camera_keys or ())
    present = all(k in keys or IMAGE_PREFIX + k in keys for k in info.camera_map)
    if not present:
        log.info("%s: its camera map %s does not fit the data's cameras %s; mapping cameras in order",
                 info.folder, info.camera_map, sorted(keys))
        return None
    return dict(info.camera_map)
