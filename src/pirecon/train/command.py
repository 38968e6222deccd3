"""`pirecon train --policy.type=pi05 --dataset.root=DIR --output_dir=OUT [--policy.use_peft=true ...]`.

Precedence: flags typed on the command line > `--preset=NAME` > `--config_path=FILE` > the pretrained
folder's config (`--policy.pretrained_path`) > defaults. A typed value wins whatever it is; one the
folder's weights cannot take is an error naming the flag, the folder and both values. `--config_path`
takes a run's `train_config.json` or a checkpoint's `config.json`.

`--preset=NAME` (`pirecon presets` lists them: openpi's training configs) stands for its flags, typed
beneath yours: a flag you type (or another spelling of it, e.g. --rename_map for the camera map)
replaces the preset's value, and the preset's values win over the folder's as typed flags do. A
"preset" key in a --config_path file applies beneath that file's values. The start-up summary names
the preset and the values typed flags overrode.

`--resume=true --output_dir=OUT` continues the run in OUT from its last checkpoint with the saved
configuration; flags typed now still override it (e.g. a larger `--steps`). LeRobot's idiom,
`--resume=true --config_path=OUT/checkpoints/last/pretrained_model/train_config.json`, does the same.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from pirecon.checkpoint.layout import PRETRAINED_MODEL, last_checkpoint, read_config
from pirecon.configs.parse import (Parsed, format_help, join_flag_values, load_json, parse_command, split_env_options,
                                   wants_help)
from pirecon.configs.lerobot import AS, FLAG_BY_NAME, looks_like_lerobot, translate_flags, translate_train_config
from pirecon.configs.presets import beneath_file_values, get_preset, preset_arguments
from pirecon.configs.train import TrainConfig, upgrade_saved
from pirecon.errors import ConfigError


def read_config_file(path: Path) -> dict:
    """`--config_path`: our `train_config.json` (TrainConfig fields), a checkpoint's `config.json`
    ({"format": "pirecon", "train": {...}} from training, or {"policy": ..., "recon": ...} from export),
    or LeRobot's `train_config.json` (translated: configs.lerobot)."""
    data = load_json(path)
    if looks_like_lerobot(data, TrainConfig):
        return translate_train_config(data, TrainConfig, str(path))
    if data.get("format") == "pirecon":
        if isinstance(data.get("train"), dict):
            return beneath_file_values(upgrade_saved(data["train"]), str(path))
        return {k: data[k] for k in ("policy", "recon") if isinstance(data.get(k), dict)}
    return beneath_file_values(upgrade_saved(data), str(path))


def parse_train_command(argv: list[str]) -> Parsed:
    argv, env_options = split_env_options(argv)
    parsed = with_env_options(parse_with_preset(argv), env_options)
    cfg = parsed.config
    if not cfg.resume:
        return parsed
    if not cfg.output_dir:
        raise ConfigError("--resume=true needs --output_dir: the folder of the run to continue")
    last = last_checkpoint(cfg.output_dir)
    if last is None:
        raise ConfigError(f"--resume=true but {Path(cfg.output_dir) / 'checkpoints'} holds no checkpoint")
    named = parsed.config_file
    if named is not None and named.parent.name == PRETRAINED_MODEL and \
            named.parent.parent.resolve() != Path(last).resolve():
        raise ConfigError(f"--config_path={named}: resuming continues from the run's last checkpoint ({last}); "
                          f"an earlier one cannot be resumed with later checkpoints in the folder")
    # The saved config is the base (its preset's values included); only the flags typed now override it.
    saved = upgrade_saved(read_config(last)["train"])
    if cfg.preset is not None and cfg.preset != saved.get("preset"):
        raise ConfigError(f"--preset={cfg.preset} but the run being resumed ({last}) was started with "
                          f"preset={saved.get('preset')}; a resumed run keeps its configuration (drop --preset)")
    return with_env_options(parse_command(argv, TrainConfig, base=saved, config_path_flag=True,
                                          read_config_file=read_config_file, translate=translate_flags), env_options)


def parse_with_preset(argv: list[str]) -> Parsed:
    """The flags parsed with --preset's values beneath the typed ones (and above --config_path)."""
    joined = join_flag_values(argv)
    names = [arg[2:].partition("=")[0] for arg in joined if arg.startswith("--")]
    name = next((arg.partition("=")[2] for arg in reversed(joined) if arg.partition("=")[0] == "--preset"), None)
    values = []
    if name is not None and name.lower() not in ("none", "null"):
        typed = {FLAG_BY_NAME[n].ours if n in FLAG_BY_NAME and FLAG_BY_NAME[n].status == AS else n for n in names}
        values = preset_arguments(get_preset(name), typed)
    # parse_command merges --config_path files first, then applies the flags in order: the preset's
    # values land above the file and beneath the flags typed after them.
    from_preset = frozenset(v.flag for v in values)
    try:
        parsed = parse_command([v.argument for v in values] + joined, TrainConfig, config_path_flag=True,
                               read_config_file=read_config_file, translate=translate_flags)
    except ConfigError as exc:
        raise ConfigError(explain_preset(str(exc), name, from_preset)) from None
    return dataclasses.replace(parsed, from_preset=from_preset)


def explain_preset(message: str, preset: str | None, from_preset: frozenset[str]) -> str:
    """An error message naming a flag whose value came from --preset says so."""
    flags = [f"--{f}" for f in dict.fromkeys(re.findall(r"--([\w.]+)=", message)) if f in from_preset]
    if not flags:
        return message
    return (f"{message} [{', '.join(flags)}: the value of --preset={preset}; type the flag to override it"
            + (", or --policy.variant to set every size at once]" if any("variant" in f for f in flags) else "]"))


def with_env_options(parsed: Parsed, options: dict[str, str]) -> Parsed:
    """`--env.<name>=value` settings joined into `env.options` (typed as env.options.<name>)."""
    if not options:
        return parsed
    cfg = parsed.config
    env = dataclasses.replace(cfg.env, options={**cfg.env.options, **options})
    return dataclasses.replace(parsed, config=dataclasses.replace(cfg, env=env),
                               typed=parsed.typed | {f"env.options.{name}" for name in options})


def parse_train_flags(argv: list[str]) -> TrainConfig:
    return parse_train_command(argv).config


def run(argv: list[str]) -> int:
    if wants_help(argv):
        print(format_help("train", __doc__, TrainConfig), end="")
        return 0
    parsed = parse_train_command(argv)
    from pirecon.train.loop import train  # lazy: torch and accelerate, not needed for --help
    try:
        result = train(parsed.config, typed=parsed.typed, from_preset=parsed.from_preset, from_file=parsed.from_file)
    except ConfigError as exc:
        raise type(exc)(explain_preset(str(exc), parsed.config.preset, parsed.from_preset)) from None
    if result.checkpoint is not None:
        print(f"pirecon train: {result.steps} steps, final loss {result.final_loss:.4f}; "
              f"checkpoint {result.checkpoint}; log {Path(result.output_dir) / 'log.jsonl'}")
    return 0
