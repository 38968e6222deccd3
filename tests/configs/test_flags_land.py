"""Every flag of every command takes effect or fails naming itself.

For each leaf field of each command's config a value different from the default is typed; the
parsed config must hold it at that field, or parsing must raise ConfigError naming the flag."""

from __future__ import annotations

import dataclasses
import importlib
import typing

import pytest

from pirecon.cli import COMMANDS
from pirecon.configs.parse import _unwrap, all_flags, field_docs, parse_command
from pirecon.errors import ConfigError

# The flags dataclass of each command (sim: its sub-commands).
COMMAND_CONFIGS = {
    "demo": ("pirecon.configs.demo", "DemoConfig"), "smoke": ("pirecon.configs.demo", "SmokeConfig"),
    "stats": ("pirecon.configs.data", "StatsConfig"), "doctor": ("pirecon.configs.data", "DoctorConfig"),
    "train": ("pirecon.configs.train", "TrainConfig"), "export": ("pirecon.configs.checkpoint", "ExportConfig"),
    "plan": ("pirecon.configs.plan", "PlanCommandConfig"),
    "push": ("pirecon.configs.checkpoint", "PushFlags"), "recon-viz": ("pirecon.configs.recon", "ReconVizConfig"),
    "serve": ("pirecon.configs.serve", "ServeConfig"), "eval": ("pirecon.configs.eval", "EvalConfig"),
    "eval-offline": ("pirecon.configs.eval", "OfflineConfig"),
    "tokenizer": ("pirecon.configs.data", "TokenizerConfig"),
    "presets": ("pirecon.configs.presets", "PresetsConfig"),
    "sim record": ("pirecon.configs.sim", "RecordFlags"), "sim eval": ("pirecon.configs.sim", "SimEvalFlags"),
    "sim preview": ("pirecon.configs.sim", "PreviewFlags"),
}


def config_class(command: str) -> type:
    module, name = COMMAND_CONFIGS[command]
    return getattr(importlib.import_module(module), name)


def test_every_command_is_listed():
    assert {c.split()[0] for c in COMMAND_CONFIGS} == set(COMMANDS)
    # One configuration package: every command's flags are declared in pirecon.configs.
    assert all(module.startswith("pirecon.configs.") for module, _ in COMMAND_CONFIGS.values())


def leaf(cls: type, dotted: str) -> tuple[type, dataclasses.Field, typing.Any]:
    """(owning class, field, its type) of a dotted flag name."""
    parts = dotted.split(".")
    for part in parts[:-1]:
        cls = _unwrap(typing.get_type_hints(cls)[part])
    f = next(f for f in dataclasses.fields(cls) if f.name == parts[-1])
    return cls, f, typing.get_type_hints(cls)[parts[-1]]


def default_of(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory()  # type: ignore[misc]


def other_value(tp, default) -> tuple[str, typing.Any]:
    """(typed text, the value it must parse to) different from `default`."""
    base = _unwrap(tp)
    origin = typing.get_origin(base)
    if base is bool:
        return str(not default).lower(), not default
    if base is int:
        value = (default or 0) + 3
        return str(value), value
    if base is float:
        value = (default or 0.0) + 0.25
        return repr(value), value
    if origin in (list, tuple):
        args = typing.get_args(base)
        if args and args[0] is int:
            return "[0,2]", [0, 2] if origin is list else (0, 2)
        if args and args[0] is float:
            return "[0.5,0.75]", (0.5, 0.75) if origin is tuple else [0.5, 0.75]
        return "[view_a,view_b]", ("view_a", "view_b") if origin is tuple else ["view_a", "view_b"]
    if origin is dict:
        return '{"k": "v"}', {"k": "v"}
    return "other_value", "other_value"


# LeRobot's spelling of one of our fields: the value lands in ours.
LANDS_AT = {("train", "policy.path"): "policy.pretrained_path", ("plan", "policy.path"): "policy.pretrained_path"}


def cases():
    for command in COMMAND_CONFIGS:
        for flag in all_flags(config_class(command)):
            yield pytest.param(command, flag, id=f"{command}:{flag}")


@pytest.mark.parametrize("command,flag", list(cases()))
def test_a_typed_flag_lands_or_fails_naming_itself(command, flag):
    cls = config_class(command)
    _, f, tp = leaf(cls, flag)
    text, expected = other_value(tp, default_of(f))
    try:
        parsed = parse_command([f"--{flag}", text], cls)
    except ConfigError as exc:
        assert f"--{flag}" in str(exc) or flag in str(exc), f"the error does not name --{flag}: {exc}"
        return
    node = parsed.config
    for part in LANDS_AT.get((command, flag), flag).split("."):
        node = getattr(node, part)
    assert node == expected, f"--{flag} {text} parsed to {node!r}"
    assert flag in parsed.typed


@pytest.mark.parametrize("command", sorted(COMMAND_CONFIGS))
def test_every_field_has_a_help_line(command):
    cls = config_class(command)
    for flag in all_flags(cls):
        owner, f, _ = leaf(cls, flag)
        assert field_docs(owner).get(f.name), f"{owner.__name__}.{f.name} (--{flag}) has no doc comment"


@pytest.mark.parametrize("command", sorted(COMMAND_CONFIGS))
def test_help_is_the_generated_one_and_lists_every_flag(command, capsys):
    from pirecon.cli import main
    assert main([*command.split(), "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: pirecon {command} [--flag=value | --flag value ...]")
    for flag in all_flags(config_class(command)):
        if command == "eval" and flag == "env.options":
            continue  # filled from --env.<name>=value, explained in the text
        assert f"  --{flag} " in out, f"--{flag} missing from `pirecon {command} --help`"
