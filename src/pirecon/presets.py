"""`pirecon presets [NAME]`: openpi's training configs as pirecon flags.

Without NAME: every preset with a one-line description and its main values. With NAME: the preset
as flags, one per line with what each sets and the openpi name it comes from, then the notes (what
openpi does that pirecon does not, or does differently). `pirecon train --preset=NAME ...` applies
the flags beneath the ones you type (see `pirecon train --help`).
"""

from __future__ import annotations

import shlex
import textwrap

from pirecon.configs.parse import format_help, parse_flags
from pirecon.configs.presets import PRESETS, Preset, PresetsConfig, flag_text, get_preset


def run(argv: list[str]) -> int:
    if "--help" in argv or "-h" in argv:
        print(format_help("presets", __doc__, PresetsConfig), end="")
        return 0
    # `pirecon presets NAME` is `pirecon presets --name=NAME`.
    flags = [arg if arg.startswith("--") else f"--name={arg}" for arg in argv]
    cfg = parse_flags(flags, PresetsConfig)
    print(listing() if cfg.name is None else as_flags(get_preset(cfg.name)))
    return 0


def key_values(preset: Preset) -> str:
    """chunk, batch, steps, learning rate, EMA and LoRA of a preset, in a few words."""
    ema = preset.value("ema_decay")
    lora = "LoRA" if preset.value("policy.use_peft") else "full"
    return (f"{preset.value('policy.type')}, {lora}, chunk {preset.value('policy.chunk_size')}, "
            f"batch {preset.value('batch_size')}, {preset.value('steps')} steps, "
            f"lr {flag_text(preset.value('policy.optimizer_lr'))}, EMA {flag_text(ema) if ema else 'off'}")


def listing() -> str:
    width = max(len(name) for name in PRESETS)
    lines = ["Training presets: openpi's fine-tuning configs (src/openpi/training/config.py) as pirecon flags.",
             "`pirecon presets NAME` prints one; `pirecon train --preset=NAME ...` applies it (flags you type win).", ""]
    for name, preset in PRESETS.items():
        lines.append(f"  {name:<{width}}  {preset.summary}")
        lines.append(f"  {'':<{width}}  ({key_values(preset)})")
    return "\n".join(lines)


def as_flags(preset: Preset) -> str:
    """The preset as `--flag=value  # what (openpi: source)` lines, then its notes, as comments."""
    arguments = [f"--{v.flag}={shlex.quote(v.text)}" for v in preset.values]
    width = max(len(a) for a in arguments)
    lines = [f"# {preset.name}: {preset.summary}"]
    lines += textwrap.wrap(f"openpi: {preset.source}", 110, initial_indent="# ", subsequent_indent="#   ")
    lines += [f"# `pirecon train --preset={preset.name} --policy.pretrained_path=DIR --dataset.root=DIR ...` "
              f"applies these; a flag you type overrides its value.", ""]
    lines += [f"{a:<{width}}  # {v.what} (openpi: {v.source})" for a, v in zip(arguments, preset.values)]
    lines += ["", "# Notes: what openpi does that pirecon does not, or does differently"]
    for note in preset.notes:
        lines += textwrap.wrap(note, 110, initial_indent="# - ", subsequent_indent="#   ")
    return "\n".join(lines)
