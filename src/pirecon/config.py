"""Configuration: frozen dataclasses and one LeRobot-style command-line parser.

Flags are dotted paths into nested dataclasses (`--policy.type=pi05 --peft.r=16 --steps=100`).
Field names follow LeRobot's where the concept exists so that existing scripts carry over.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pirecon.errors import ConfigError
from pirecon.model.variants import gemma_spec, policy_variant, siglip_spec

DEFAULT_CAMERAS = ("base_0_rgb", "left_wrist_0_rgb", "right_wrist_0_rgb")


@dataclass(frozen=True)
class PolicyConfig:
    """Everything that decides the shape of a Pi0 / Pi0.5 policy."""

    type: str = "pi0"  # "pi0" | "pi05"
    # Shorthand that sets vision_variant, paligemma_variant and action_expert_variant at once.
    variant: str | None = None
    vision_variant: str = "siglip_so400m_14"
    paligemma_variant: str = "gemma_2b"
    action_expert_variant: str = "gemma_300m"
    chunk_size: int = 50
    n_action_steps: int = 50
    max_state_dim: int = 32
    max_action_dim: int = 32
    num_inference_steps: int = 10
    tokenizer_max_length: int | None = None  # None: 48 for pi0, 200 for pi05
    image_resolution: int = 224
    camera_names: tuple[str, ...] = DEFAULT_CAMERAS
    dtype: str = "float32"  # "float32" | "bfloat16"
    freeze_vision_encoder: bool = False
    train_expert_only: bool = False
    gradient_checkpointing: bool = False
    compile_model: bool = False
    # Flow-matching time distribution t = Beta(a, b) * 0.999 + 0.001 (REFERENCE.md §1).
    time_beta_alpha: float = 1.5
    time_beta_beta: float = 1.0
    # Where weights, tokenizer and statistics come from; none of these change the model's shape.
    pretrained_path: str | None = None  # a pirecon, openpi or LeRobot folder (None: random init)
    tokenizer_path: str | None = None  # SentencePiece .model file or a Hugging Face tokenizer folder
    use_peft: bool = False  # LoRA adapters through PEFT (see --peft.*)
    normalization_mode: str | None = None  # "mean_std" | "quantile"; None: mean_std for pi0, quantile for pi05
    # Normalise with the dataset's statistics even when pretrained_path holds its own.
    use_dataset_stats: bool = False
    asset_id: str | None = None  # openpi folders: which assets/<asset_id>/norm_stats.json to use
    # Upload the final checkpoint of `pirecon train` to the Hugging Face Hub repo repo_id ("org/name").
    push_to_hub: bool = False
    repo_id: str | None = None

    def __post_init__(self) -> None:
        if self.type not in ("pi0", "pi05"):
            raise ConfigError(f"--policy.type={self.type!r}: expected 'pi0' or 'pi05'")
        if self.variant is not None:
            vision, vlm, expert = policy_variant(self.variant)
            object.__setattr__(self, "vision_variant", vision)
            object.__setattr__(self, "paligemma_variant", vlm)
            object.__setattr__(self, "action_expert_variant", expert)
        if isinstance(self.image_resolution, (list, tuple)):
            h, w = self.image_resolution
            if h != w:
                raise ConfigError(f"--policy.image_resolution={list(self.image_resolution)}: only square images are supported")
            object.__setattr__(self, "image_resolution", int(h))
        object.__setattr__(self, "camera_names", tuple(self.camera_names))
        vision = siglip_spec(self.vision_variant)
        vlm = gemma_spec(self.paligemma_variant, "--policy.paligemma_variant")
        expert = gemma_spec(self.action_expert_variant, "--policy.action_expert_variant")
        if self.image_resolution <= 0 or self.image_resolution % vision.patch_size:
            raise ConfigError(
                f"--policy.image_resolution={self.image_resolution}: expected a positive multiple of the "
                f"patch size {vision.patch_size} (e.g. {vision.patch_size * 16})")
        if (vlm.depth, vlm.num_heads, vlm.num_kv_heads, vlm.head_dim) != (
                expert.depth, expert.num_heads, expert.num_kv_heads, expert.head_dim):
            raise ConfigError(
                f"--policy.paligemma_variant={self.paligemma_variant} and --policy.action_expert_variant="
                f"{self.action_expert_variant} share attention, so they need the same depth, heads and head_dim")
        if self.dtype not in ("float32", "bfloat16"):
            raise ConfigError(f"--policy.dtype={self.dtype!r}: expected 'float32' or 'bfloat16'")
        for name in ("chunk_size", "n_action_steps", "max_state_dim", "max_action_dim", "num_inference_steps"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"--policy.{name}={getattr(self, name)}: expected a positive integer")
        if self.n_action_steps > self.chunk_size:
            raise ConfigError(f"--policy.n_action_steps={self.n_action_steps}: expected <= chunk_size ({self.chunk_size})")
        if not self.camera_names:
            raise ConfigError("--policy.camera_names: expected at least one camera name")
        if self.normalization_mode not in (None, "mean_std", "quantile"):
            raise ConfigError(f"--policy.normalization_mode={self.normalization_mode!r}: expected mean_std or quantile")

    # Derived sizes -----------------------------------------------------------------------------
    @property
    def vision(self):
        return siglip_spec(self.vision_variant)

    @property
    def vlm(self):
        return gemma_spec(self.paligemma_variant)

    @property
    def expert(self):
        return gemma_spec(self.action_expert_variant)

    @property
    def tokens_per_image(self) -> int:
        return (self.image_resolution // self.vision.patch_size) ** 2

    @property
    def max_token_len(self) -> int:
        if self.tokenizer_max_length is not None:
            return self.tokenizer_max_length
        return 200 if self.type == "pi05" else 48

    @property
    def torch_dtype(self):
        import torch
        return {"float32": torch.float32, "bfloat16": torch.bfloat16}[self.dtype]


# ---------------------------------------------------------------------------------------------
# Dict / JSON round trip


def to_dict(cfg: Any) -> dict:
    """A dataclass (possibly nested) as plain JSON-able values."""
    out = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            value = to_dict(value)
        elif isinstance(value, tuple):
            value = list(value)
        out[f.name] = value
    return out


def from_dict(cls: type, data: dict, where: str = "config") -> Any:
    """Build `cls` from a dict, converting values to the field types; unknown keys are an error."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            raise ConfigError(f"{where}: unknown key {key!r}{_suggest(key, names)}")
        kwargs[key] = _convert(value, hints[key], _join(where, key))
    return cls(**kwargs)


def _join(where: str, key: str) -> str:
    return f"{where}{key}" if where.endswith("--") else f"{where}.{key}"


def _suggest(name: str, choices) -> str:
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
            value = _parse_list(value, where)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}={value!r}: expected a list such as [a,b]")
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


def _parse_list(text: str, where: str) -> list:
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


# ---------------------------------------------------------------------------------------------
# Command-line flags


def join_flag_values(argv: list[str]) -> list[str]:
    """['--port', '8000', '--flag'] -> ['--port=8000', '--flag'], for commands that also accept the
    space-separated spelling; `--flag=value` and bare `--flag` stay as they are."""
    out: list[str] = []
    for arg in argv:
        if out and not arg.startswith("--") and out[-1].startswith("--") and "=" not in out[-1]:
            out[-1] = f"{out[-1]}={arg}"
        else:
            out.append(arg)
    return out


def parse_flags(argv: list[str], cls: type, config_path_flag: bool = True, base: dict | None = None) -> Any:
    """Parse `--a.b=value` flags into dataclass `cls`.

    Values come from `base` (a dict such as a saved config), then `--config_path=FILE` (a JSON
    file written by pirecon), then the other flags. A bare `--flag` means `--flag=true`.
    """
    import copy
    base = copy.deepcopy(base) if base else {}
    overrides: list[tuple[str, str]] = []
    for arg in argv:
        if not arg.startswith("--"):
            raise ConfigError(f"unexpected argument {arg!r}: flags look like --name=value")
        name, sep, value = arg[2:].partition("=")
        if not sep:
            value = "true"
        if config_path_flag and name == "config_path":
            base = load_json(Path(value))
            continue
        overrides.append((name, value))
    data = base
    for name, value in overrides:
        _set_path(data, name, value, cls)
    return from_dict(cls, data, where="--")


def _set_path(data: dict, dotted: str, value: str, cls: type) -> None:
    parts = dotted.split(".")
    node, node_cls = data, cls
    for i, part in enumerate(parts):
        names = {f.name: f for f in dataclasses.fields(node_cls)}
        if part not in names:
            prefix = ".".join(parts[:i])
            known = [f"{prefix}.{n}" if prefix else n for n in names]
            full = _all_flags(cls)
            hint = _suggest(dotted, full) or _suggest(part, known)
            raise ConfigError(f"unknown flag --{dotted}{hint.replace('mean ', 'mean --').replace(', ', ', --')}")
        tp = typing.get_type_hints(node_cls)[part]
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


def _all_flags(cls: type, prefix: str = "") -> list[str]:
    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        name = prefix + f.name
        if dataclasses.is_dataclass(hints[f.name]):
            out += _all_flags(hints[f.name], name + ".")
        else:
            out.append(name)
    return out


def load_json(path: Path, error: type[Exception] = ConfigError, missing: str | None = None) -> dict:
    """A JSON object from `path`; a missing file, bad JSON or a non-object raises `error`
    naming the file (`missing` replaces the default "config file not found" text)."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: {missing or 'config file not found'}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise error(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise error(f"{path}: expected a JSON object at the top level")
    return data


def print_help(doc: str, cls: type) -> None:
    """A command's `--help`: its docstring, then every flag with its default (as JSON)."""
    print(doc)
    print(json.dumps(to_dict(cls()), indent=2))
