"""One flag parser and one `--help` format for every command.

Flags are dotted paths into nested frozen dataclasses (`--policy.type=pi05 --peft.r=16`);
`--flag value` and `--flag=value` are the same, and a bare `--flag` means `--flag=true`.

Precedence (lowest to highest): the dataclass defaults < a `base` dict (e.g. a resumed run's
saved config) < `--config_path=FILE` < the other flags. `parse_command` also returns which
fields were *typed*: present on the command line or in the config file, whatever their value.
Commands use that set to let exactly those values win over a pretrained folder's config.

Every field's help text is the comment on its line in the dataclass (or the comment block just
above it); `tests/configs` checks that every field of every config has one.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import inspect
import io
import json
import re
import textwrap
import tokenize
import types
import typing
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from pirecon.errors import ConfigError

# ---------------------------------------------------------------------------------------------
# Dict / JSON round trip


def to_dict(cfg: Any) -> dict:
    """A dataclass (possibly nested) as plain JSON-able values."""
    return {f.name: _plain(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return to_dict(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def from_dict(cls: type, data: dict, where: str = "config") -> Any:
    """Build `cls` from a dict, converting values to the field types; unknown keys are an error."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            raise ConfigError(f"{where}: unknown key {key!r}{suggest(key, names)}")
        kwargs[key] = _convert(value, hints[key], _join(where, key))
    return cls(**kwargs)


def _join(where: str, key: str) -> str:
    return f"{where}{key}" if where.endswith("--") else f"{where}.{key}"


def suggest(name: str, choices) -> str:
    """'; did you mean a, b?' for the close matches of `name` among `choices` (or '')."""
    close = difflib.get_close_matches(name, list(choices), n=3, cutoff=0.5)
    return f"; did you mean {', '.join(close)}?" if close else ""


def _convert(value: Any, tp: Any, where: str) -> Any:
    """Convert a parsed JSON value or a command-line string to type `tp`."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{where}: cannot be None")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a JSON object, got {value!r}")
        return from_dict(tp, value, where)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "0", "no", "off"):
            return False
        raise ConfigError(f"{where}={value!r}: expected true or false")
    if tp in (int, float):
        try:
            if isinstance(value, bool):
                raise ValueError
            result = tp(value)
            if tp is int and isinstance(value, float) and value != result:
                raise ValueError
            return result
        except (TypeError, ValueError):
            raise ConfigError(f"{where}={value!r}: expected {'an integer' if tp is int else 'a number'}") from None
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}={value!r}: expected a string")
        return value
    if origin in (tuple, list):
        if isinstance(value, str):
            value = _parse_list(value)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}={value!r}: expected a list such as [a,b]")
        if origin is tuple and len(args) > 1 and args[1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{where}={value!r}: expected {len(args)} values")
            return tuple(_convert(v, t, where) for v, t in zip(value, args))
        item_tp = args[0] if args else str
        items = [_convert(v, item_tp, where) for v in value]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                raise ConfigError(f"{where}={value!r}: expected a JSON object such as '{{\"a\": \"b\"}}'") from None
        if not isinstance(value, dict):
            raise ConfigError(f"{where}={value!r}: expected a JSON object")
        key_tp, val_tp = args if args else (str, str)
        return {_convert(k, key_tp, where): _convert(v, val_tp, where) for k, v in value.items()}
    if tp is Any:
        return value
    raise ConfigError(f"{where}: unsupported field type {tp}")


def _parse_list(text: str) -> list:
    text = text.strip()
    try:
        parsed = json.loads(text)
        if isinstance(parsed, list):
            return parsed
    except json.JSONDecodeError:
        pass
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    if not text:
        return []
    return [part.strip().strip("'\"") for part in text.split(",")]


def load_json(path: Path, error: type[Exception] = ConfigError, missing: str | None = None) -> dict:
    """A JSON object from `path`; a missing file, bad JSON or a non-object raises `error`
    naming the file (`missing` replaces the default "config file not found" text)."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: {missing or 'config file not found'}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise error(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise error(f"{path}: expected a JSON object at the top level")
    return data


# ---------------------------------------------------------------------------------------------
# Command-line flags


@dataclass(frozen=True)
class Parsed:
    """A parsed command line: the config, and the dotted names of the fields the user typed
    (on the command line or in the `--config_path` file)."""

    config: Any
    typed: frozenset[str]
    config_file: Path | None = None
    from_preset: frozenset[str] = frozenset()  # typed fields whose value is --preset's, not typed by the user
    from_file: frozenset[str] = frozenset()  # typed fields whose value comes from the --config_path file alone

    def was_typed(self, name: str) -> bool:
        """`name` ("policy.chunk_size" or a group such as "peft") or any field under it was typed."""
        return any(t == name or t.startswith(name + ".") for t in self.typed)


def join_flag_values(argv: list[str]) -> list[str]:
    """['--port', '8000', '--flag'] -> ['--port=8000', '--flag']; `--flag=value` and a bare
    `--flag` stay as they are."""
    out: list[str] = []
    for arg in argv:
        if out and not arg.startswith("--") and out[-1].startswith("--") and "=" not in out[-1]:
            out[-1] = f"{out[-1]}={arg}"
        else:
            out.append(arg)
    return out


ENV_FIXED = ("type", "task", "options")  # --env.* flags that are fields, not environment settings


def split_env_options(argv: list[str]) -> tuple[list[str], dict[str, str]]:
    """`--env.<name>=value` flags other than type and task are the environment's own settings:
    (the other flags, {name: value text})."""
    rest, options = [], {}
    for arg in join_flag_values(argv):
        if arg.startswith("--env."):
            name, sep, value = arg[len("--env."):].partition("=")
            if name not in ENV_FIXED:
                if not name.isidentifier():
                    raise ConfigError(f"unknown flag {arg.partition('=')[0]}: environment settings look like "
                                      f"--env.<name>=value")
                options[name] = value if sep else "true"
                continue
        rest.append(arg)
    return rest, options


def parse_command(argv: list[str], cls: type, base: dict | None = None, config_path_flag: bool = False,
                  read_config_file=None, translate=None) -> Parsed:
    """Parse `--a.b=value` / `--a.b value` flags into dataclass `cls` (see the module docstring).

    `read_config_file(path) -> dict` turns a `--config_path` file into values of `cls` (default:
    the file's JSON object as it is); only commands with `config_path_flag` accept the flag.
    `translate([(name, text)]) -> [(name, text)]` renames or consumes flags first (LeRobot's names)."""
    data = copy.deepcopy(base) if base else {}
    overrides: list[tuple[str, str]] = []
    typed: set[str] = set()
    file_typed: set[str] = set()
    config_file = None
    for arg in join_flag_values(argv):
        if not arg.startswith("--"):
            raise ConfigError(f"unexpected argument {arg!r}: flags look like --name=value or --name value")
        name, sep, value = arg[2:].partition("=")
        if not sep:
            value = "true"
        if name == "config_path" and config_path_flag:
            config_file = Path(value)
            loaded = read_config_file(config_file) if read_config_file else load_json(config_file)
            _check_keys(loaded, cls, str(config_file))
            _merge(data, loaded)
            file_typed |= set(_leaf_paths(loaded, cls))
            continue
        overrides.append((name, value))
    if translate is not None:
        overrides = translate(overrides)
    for name, value in overrides:
        _set_path(data, name, value, cls)
        typed.add(name)
    return Parsed(from_dict(cls, data, where="--"), frozenset(typed | file_typed), config_file,
                  from_file=frozenset(file_typed - typed))


def parse_flags(argv: list[str], cls: type, base: dict | None = None, config_path_flag: bool = False) -> Any:
    """`parse_command(...).config`, for commands that need no typed-field set."""
    return parse_command(argv, cls, base=base, config_path_flag=config_path_flag).config


def _merge(into: dict, data: dict) -> None:
    for key, value in data.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = copy.deepcopy(value)


def _check_keys(data: dict, cls: type, where: str) -> None:
    """Unknown keys in a config file are an error naming the file and the key."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key, value in data.items():
        if key not in names:
            raise ConfigError(f"{where}: unknown key {key!r}{suggest(key, names)}")
        if dataclasses.is_dataclass(_unwrap(hints[key])) and isinstance(value, dict):
            _check_keys(value, _unwrap(hints[key]), f"{where}:{key}")


def _unwrap(tp):
    """`X | None` -> X."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0] if len(args) == 1 else tp
    return tp


def _leaf_paths(data: dict, cls: type, prefix: str = "") -> list[str]:
    hints = typing.get_type_hints(cls)
    out = []
    for key, value in data.items():
        tp = _unwrap(hints[key])
        if dataclasses.is_dataclass(tp) and isinstance(value, dict):
            out += _leaf_paths(value, tp, f"{prefix}{key}.")
        else:
            out.append(prefix + key)
    return out


def _set_path(data: dict, dotted: str, value: str, cls: type) -> None:
    parts = dotted.split(".")
    node, node_cls = data, cls
    for i, part in enumerate(parts):
        names = {f.name for f in dataclasses.fields(node_cls)}
        if part not in names:
            hint = suggest(dotted, all_flags(cls))
            raise ConfigError(f"unknown flag --{dotted}{hint.replace('mean ', 'mean --').replace(', ', ', --')}"
                              f" (`--help` lists the flags)")
        tp = _unwrap(typing.get_type_hints(node_cls)[part])
        if i == len(parts) - 1:
            node[part] = value
            return
        if not dataclasses.is_dataclass(tp):
            raise ConfigError(f"unknown flag --{dotted}: --{'.'.join(parts[:i + 1])} has no sub-fields")
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node, node_cls = child, tp


def all_flags(cls: type, prefix: str = "") -> list[str]:
    """Every leaf field of `cls` as a dotted flag name."""
    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        name = prefix + f.name
        tp = _unwrap(hints[f.name])
        if dataclasses.is_dataclass(tp):
            out += all_flags(tp, name + ".")
        else:
            out.append(name)
    return out


# ---------------------------------------------------------------------------------------------
# Field documentation and --help


@lru_cache(maxsize=None)
def field_docs(cls: type) -> dict[str, str]:
    """{field name: help text} from the comments in `cls`'s source: the comment on the field's
    line, else the comment lines directly above it. Fields a dataclass inherits keep the help
    text of the class that declares them."""
    docs: dict[str, str] = {}
    for base in reversed(cls.__mro__[1:]):
        if dataclasses.is_dataclass(base):
            docs.update(field_docs(base))
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return docs
    names = {f.name for f in dataclasses.fields(cls)}
    lines = source.splitlines()
    trailing: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            trailing[tok.start[0]] = tok.string.lstrip("#").strip()
    own: dict[str, str] = {}
    for number, line in enumerate(lines, 1):
        stripped = line.strip()
        name = stripped.split(":", 1)[0].strip()
        if name not in names or name in own or not line.startswith(" ") or ":" not in stripped:
            continue
        if line[:len(line) - len(line.lstrip())] != _body_indent(lines):
            continue
        if number in trailing and not stripped.startswith("#"):
            own[name] = trailing[number]
            continue
        above = []
        k = number - 1
        while k >= 1 and lines[k - 1].strip().startswith("#"):
            above.insert(0, lines[k - 1].strip().lstrip("#").strip())
            k -= 1
        if above:
            own[name] = " ".join(above)
    return {**docs, **own}


def _body_indent(lines: list[str]) -> str:
    """The indentation of the class body (the first indented line after `class ...:`)."""
    for line in lines:
        if line.strip() and line[0] in " \t":
            return line[:len(line) - len(line.lstrip())]
    return "    "


def _type_name(tp) -> str:
    tp_u = _unwrap(tp)
    optional = tp_u is not tp
    origin = typing.get_origin(tp_u)
    if origin in (list, tuple):
        name = "LIST"
    elif origin is dict:
        name = "JSON"
    elif tp_u is bool:
        name = "BOOL"
    elif tp_u is int:
        name = "INT"
    elif tp_u is float:
        name = "FLOAT"
    else:
        name = "STR"
    return name + ("|none" if optional else "")


def _default_text(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        value = f.default_factory()  # type: ignore[misc]
    else:
        return "required"
    if dataclasses.is_dataclass(value):
        return ""
    if value is None:
        return "none"
    if isinstance(value, str):
        return value
    text = json.dumps(_plain(value))
    if len(text) > 100 and isinstance(value, dict):  # e.g. LeRobot's six image transforms
        return "{" + ", ".join(f'"{k}": ...' for k in value) + "}"
    return text


def help_lines(cls: type, prefix: str = "") -> list[str]:
    """Every flag of `cls`: `--name TYPE (default: X)` and its help line, groups in order."""
    out: list[str] = []
    groups: list[tuple[str, type]] = []
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    for f in dataclasses.fields(cls):
        tp = _unwrap(hints[f.name])
        if dataclasses.is_dataclass(tp):
            groups.append((prefix + f.name, tp))
            continue
        out.append(f"  --{prefix}{f.name} {_type_name(hints[f.name])}  (default: {_default_text(f)})")
        doc = docs.get(f.name, "")
        for line in textwrap.wrap(doc, 94):
            out.append(f"      {line}")
    for name, tp in groups:
        title = re.sub(r"^`--[\w.]+\*`:\s*", "", (inspect.getdoc(tp) or "").split("\n")[0])
        out.append("")
        out.append(f" --{name}.*: {title}" if title else f" --{name}.*")
        out += help_lines(tp, name + ".")
    return out


def format_help(command: str, doc: str, cls: type, extra: str = "") -> str:
    """A command's `--help`: usage, its docstring, then every flag from the field docs."""
    lines = [f"usage: pirecon {command} [--flag=value | --flag value ...]", "", (doc or "").strip()]
    if extra:
        lines += ["", extra.strip()]
    lines += ["", "flags:"] + help_lines(cls)
    return "\n".join(lines) + "\n"


def wants_help(argv: list[str]) -> bool:
    return "--help" in argv or "-h" in argv
