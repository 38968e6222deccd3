"""`pirecon train --policy.type=pi05 --dataset.root=DIR --output_dir=OUT [--policy.use_peft ...]`.

`--resume=true --output_dir=OUT` continues the run in OUT from its last checkpoint with the saved
configuration; flags given on the command line still override it (e.g. a larger `--steps`).
"""

from __future__ import annotations

from pathlib import Path

from pirecon.config import parse_flags, print_help
from pirecon.errors import ConfigError
from pirecon.train.config import TrainConfig


def parse_train_flags(argv: list[str]) -> TrainConfig:
    cfg = parse_flags(argv, TrainConfig)
    if not cfg.resume:
        return cfg
    from pirecon.train.checkpoint import last_checkpoint, read_checkpoint_config
    if not cfg.output_dir:
        raise ConfigError("--resume=true needs --output_dir: the folder of the run to continue")
    last = last_checkpoint(cfg.output_dir)
    if last is None:
        raise ConfigError(f"--resume=true but {Path(cfg.output_dir) / 'checkpoints'} holds no checkpoint")
    # The saved config is the base; only the flags typed now override it.
    return parse_flags(argv, TrainConfig, base=read_checkpoint_config(last)["train"])


def run(argv: list[str]) -> int:
    if "--help" in argv or "-h" in argv:
        print_help(__doc__, TrainConfig)
        return 0
    cfg = parse_train_flags(argv)
    from pirecon.train.loop import train
    result = train(cfg)
    if result.checkpoint is not None:
        print(f"pirecon train: {result.steps} steps, final loss {result.final_loss:.4f}; "
              f"checkpoint {result.checkpoint}; log {Path(result.output_dir) / 'log.jsonl'}")
    return 0
