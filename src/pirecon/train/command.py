"""`pirecon train --policy.type=pi05 --dataset.root=DIR --output_dir=OUT [--policy.use_peft=true ...]`.

Precedence: flags typed on the command line > `--config_path=FILE` > the pretrained folder's config
(`--policy.pretrained_path`) > defaults. A typed value wins whatever it is; one the folder's weights
cannot take is an error naming the flag, the folder and both values. `--config_path` takes a run's
`train_config.json` or a checkpoint's `config.json`.

`--resume=true --output_dir=OUT` continues the run in OUT from its last checkpoint with the saved
configuration; flags typed now still override it (e.g. a larger `--steps`). LeRobot's idiom,
`--resume=true --config_path=OUT/checkpoints/last/pretrained_model/train_config.json`, does the same.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from pirecon.checkpoint.layout import PRETRAINED_MODEL, last_checkpoint, read_config
from pirecon.configs.parse import Parsed, format_help, load_json, parse_command, split_env_options, wants_help
from pirecon.configs.lerobot import looks_like_lerobot, translate_flags, translate_train_config
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
            return upgrade_saved(data["train"])
        return {k: data[k] for k in ("policy", "recon") if isinstance(data.get(k), dict)}
    return upgrade_saved(data)


def parse_train_command(argv: list[str]) -> Parsed:
    argv, env_options = split_env_options(argv)
    parsed = with_env_options(parse_command(argv, TrainConfig, config_path_flag=True,
                                            read_config_file=read_config_file, translate=translate_flags), env_options)
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
    # The saved config is the base; only the flags typed now override it.
    return with_env_options(parse_command(argv, TrainConfig, base=upgrade_saved(read_config(last)["train"]),
                                          config_path_flag=True, read_config_file=read_config_file,
                                          translate=translate_flags), env_options)


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
    result = train(parsed.config, typed=parsed.typed)
    if result.checkpoint is not None:
        print(f"pirecon train: {result.steps} steps, final loss {result.final_loss:.4f}; "
              f"checkpoint {result.checkpoint}; log {Path(result.output_dir) / 'log.jsonl'}")
    return 0
