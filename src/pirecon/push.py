"""`pirecon push CKPT REPO_ID [--private] [--revision=BRANCH] [--use_ema] [--commit_message=TEXT]`.

Uploads a checkpoint folder to the Hugging Face Hub model repo REPO_ID (org/name), creating the
repo if needed. A training checkpoint (OUTPUT_DIR/checkpoints/STEP or .../last) is exported first:
LoRA adapters merged, no optimizer state; `--use_ema` uploads its EMA weights. Needs network access
and a token with write access (`hf auth login` or HF_TOKEN); fails at once under HF_HUB_OFFLINE=1.
"""

from __future__ import annotations

from pirecon.checkpoint.upload import push
from pirecon.configs.checkpoint import PushFlags
from pirecon.configs.parse import format_help, parse_flags
from pirecon.errors import ConfigError


def run(argv: list[str]) -> int:
    if "--help" in argv or "-h" in argv:
        print(format_help("push", __doc__, PushFlags), end="")
        return 0
    positional, flags = _split_args(argv)
    if len(positional) != 2:
        raise ConfigError(f"expected `pirecon push CKPT REPO_ID` (a checkpoint folder and a Hub repo id such as "
                          f"org/name), got {len(positional)} positional argument(s) {positional}")
    cfg = parse_flags(flags, PushFlags)
    push(positional[0], positional[1], private=cfg.private, revision=cfg.revision, use_ema=cfg.use_ema,
         commit_message=cfg.commit_message)
    return 0


def _split_args(argv: list[str]) -> tuple[list[str], list[str]]:
    """Positional arguments and `--flag=value` flags; `--revision BRANCH` (with a space) works too."""
    valued = ("--revision", "--commit_message")
    positional, flags, i = [], [], 0
    while i < len(argv):
        arg = argv[i]
        if arg in valued and i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            flags.append(f"{arg}={argv[i + 1]}")
            i += 2
            continue
        (flags if arg.startswith("--") else positional).append(arg)
        i += 1
    return positional, flags
