"""`pirecon <command> [--flags]` — one entry point, one module per sub-command.

Each command module exposes `run(argv: list[str]) -> int`. Modules are imported only when their
command runs, so `pirecon --help` stays fast.
"""

from __future__ import annotations

import difflib
import importlib
import sys

from pirecon.errors import PireconError

# name: (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("pirecon.demo", "record simulator demos, fine-tune a tiny Pi0 with LoRA, evaluate it closed-loop"),
    "smoke": ("pirecon.smoke", "build tiny Pi0 and Pi0.5 models, take one optimiser step, sample actions"),
    "stats": ("pirecon.data.stats", "compute normalisation statistics of a LeRobot dataset (openpi norm_stats.json)"),
    "doctor": ("pirecon.data.doctor", "check a LeRobot dataset folder and print a table of findings"),
    "tokenizer": ("pirecon.data.task_tokenizer", "build a tiny model's tokenizer from a LeRobot dataset's task texts"),
    "train": ("pirecon.train.command", "fine-tune Pi0 / Pi0.5 on a LeRobot dataset (LoRA or full, one or many processes)"),
    "plan": ("pirecon.train.plan_command", "will a train (or serve) run fit on a GPU, and how long will it take? (train's flags)"),
    "presets": ("pirecon.presets", "list openpi's training configs as presets, or print one as `pirecon train` flags"),
    "export": ("pirecon.export", "write a stand-alone checkpoint (LoRA merged, EMA weights if asked)"),
    "push": ("pirecon.push", "upload a checkpoint to the Hugging Face Hub: pirecon push CKPT ORG/NAME [--private]"),
    "recon-viz": ("pirecon.recon_viz", "PNG grid input | target | reconstruction from a checkpoint's recon head"),
    "sim": ("pirecon.sim.cli", "built-in simulator: `pirecon sim record` writes expert demonstrations"),
    "serve": ("pirecon.serve.command", "serve a checkpoint over openpi's websocket protocol (LIBERO/ALOHA/DROID clients)"),
    "eval": ("pirecon.eval.command", "closed-loop evaluation in the built-in sim or LIBERO: success rates, videos"),
    "eval-offline": ("pirecon.eval.offline", "open-loop action error of a checkpoint on dataset frames (robot units)"),
}


def usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = ["usage: pirecon <command> [--flag=value ...]", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "`pirecon <command> --help` shows a command's flags."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        close = difflib.get_close_matches(name, list(COMMANDS), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        print(f"pirecon: unknown command {name!r}{hint}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    try:
        return int(module.run(rest) or 0)
    except PireconError as exc:
        print(f"pirecon {name}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
