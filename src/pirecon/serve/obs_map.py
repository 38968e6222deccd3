"""Request keys (what a robot client sends) -> dataset keys (what the checkpoint was trained on).

An obs map is `{request key: dataset key}`:

    request key   where the value sits in the request. `a/b` is the key "a/b" itself when the request
                  has it (openpi's LIBERO sends flat keys such as "observation/image"), else the key "b"
                  inside the dict under "a" (openpi's ALOHA sends {"images": {"cam_high": ...}}).
    dataset key   `observation.images.<camera>` (a bare `<camera>` means the same), `observation.state`,
                  or `task` (the instruction; `prompt` means the same).

Several request keys may map to `observation.state`: their values are joined in map order (DROID
sends joint_position (7) and gripper_position (1) for an 8-dim state). Images arrive as uint8
(H, W, 3) or (3, H, W) (openpi's ALOHA client sends channels first) and leave as (3, H, W) uint8,
which `Preprocessor.from_observation` resizes with padding to the model's resolution.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from pirecon.errors import ConfigError, InputError

IMAGE_PREFIX = "observation.images."
STATE_KEY = "observation.state"
TASK_KEY = "task"
MAP_FLAG = "--serve.obs_map"
MAX_IMAGE_SIDE = 4096  # larger request images are refused


@dataclass(frozen=True)
class RequestField:
    """One value of a client's request: where it sits, what it is and where it goes by default."""

    path: tuple[str, ...]  # ("observation/image",) is a flat key; ("images", "cam_high") is nested
    kind: str  # "image" | "state" | "prompt"
    shape: tuple[int, ...]  # what the client sends (images uint8, state float)
    target: str  # the dataset key it maps to unless --serve.obs_map says otherwise

    @property
    def key(self) -> str:
        return "/".join(self.path)


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    fields: tuple[RequestField, ...]

    @property
    def obs_map(self) -> dict[str, str]:
        return {f.key: f.target for f in self.fields}


def _image(path: tuple[str, ...], shape: tuple[int, ...], camera: str) -> RequestField:
    return RequestField(path, "image", shape, IMAGE_PREFIX + camera)


_HWC, _CHW = (224, 224, 3), (3, 224, 224)
_PROMPT = RequestField(("prompt",), "prompt", (), TASK_KEY)

PRESETS: dict[str, Preset] = {
    "libero": Preset("libero", "openpi's LIBERO client (examples/libero)", (
        _image(("observation/image",), _HWC, "image"),
        # The LeRobot LIBERO layout (HuggingFaceVLA/libero), as `pirecon eval --env.type=libero` writes it.
        _image(("observation/wrist_image",), _HWC, "image2"),
        RequestField(("observation/state",), "state", (8,), STATE_KEY),
        _PROMPT)),
    "aloha": Preset("aloha", "openpi's ALOHA clients (examples/aloha_sim, aloha_real): nested images, channels first", (
        _image(("images", "cam_high"), _CHW, "cam_high"),
        _image(("images", "cam_low"), _CHW, "cam_low"),
        _image(("images", "cam_left_wrist"), _CHW, "cam_left_wrist"),
        _image(("images", "cam_right_wrist"), _CHW, "cam_right_wrist"),
        RequestField(("state",), "state", (14,), STATE_KEY),
        _PROMPT)),
    "droid": Preset("droid", "openpi's DROID client (examples/droid); state = joint_position + gripper_position", (
        _image(("observation/exterior_image_1_left",), _HWC, "exterior_image_1_left"),
        _image(("observation/wrist_image_left",), _HWC, "wrist_image_left"),
        RequestField(("observation/joint_position",), "state", (7,), STATE_KEY),
        RequestField(("observation/gripper_position",), "state", (1,), STATE_KEY),
        _PROMPT)),
}


def presets_help() -> str:
    lines = ["presets (--serve.preset=NAME; request key -> default dataset key):"]
    for preset in PRESETS.values():
        lines.append(f"  {preset.name}: {preset.description}")
        for f in preset.fields:
            what = f"{f.kind} {f.shape}" if f.shape else f.kind
            lines.append(f"    {f.key:<34} -> {f.target:<42} ({what})")
    return "\n".join(lines)


def canonical_target(target: str) -> str:
    """`prompt` -> `task`; a bare camera name `top` -> `observation.images.top`."""
    if target in (TASK_KEY, "prompt"):
        return TASK_KEY
    if "." in target or "/" in target:
        return target
    return IMAGE_PREFIX + target


def resolve_obs_map(preset: str | None, overrides: Mapping[str, str | None],
                    camera_keys: Sequence[str] | None) -> dict[str, str]:
    """The preset's map (or, without a preset, dataset keys sent as they are plus `prompt` -> `task`),
    updated by `overrides`; an override to null (None or "") drops a request key."""
    if preset is not None:
        if preset not in PRESETS:
            raise ConfigError(f"--serve.preset={preset!r}: expected one of {sorted(PRESETS)} or none")
        merged = dict(PRESETS[preset].obs_map)
    else:
        merged = {key: key for key in camera_keys or ()}
        merged.update({STATE_KEY: STATE_KEY, "prompt": TASK_KEY})
    for key, target in overrides.items():
        if target is None or target == "":
            if key not in merged:
                raise ConfigError(f"{MAP_FLAG}: {key!r}: null drops a request key, but the map has no {key!r}; "
                                  f"its request keys are {list(merged)}")
            del merged[key]
        else:
            merged[key] = target
    return {key: canonical_target(target) for key, target in merged.items()}


def checkpoint_camera_keys(preprocessor) -> list[str] | None:
    """The image keys a checkpoint's Preprocessor reads (None: any, taken in order)."""
    if preprocessor.camera_map:
        return [canonical_target(key) for key in preprocessor.camera_map]
    if preprocessor.camera_keys:
        return [canonical_target(key) for key in preprocessor.camera_keys]
    return None


def checkpoint_state_dim(preprocessor) -> int | None:
    """The state width the checkpoint's statistics describe (before any --dataset.state_dims cut)."""
    stats = preprocessor.dataset_normalizer
    return stats.dim("state") if stats is not None else None


# ---------------------------------------------------------------------------------------------
# Reading one request


def lookup(request: Mapping[str, Any], key: str) -> Any:
    """`request[key]`, else follow `/` into nested dicts (longest matching prefix first)."""
    if key in request:
        return request[key]
    parts = key.split("/")
    for i in range(len(parts) - 1, 0, -1):
        node = request.get("/".join(parts[:i]))
        if isinstance(node, Mapping):
            try:
                return lookup(node, "/".join(parts[i:]))
            except KeyError:
                pass
    raise KeyError(key)


def flat_keys(request: Mapping[str, Any], prefix: str = "") -> Iterator[str]:
    for key, value in request.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            yield from flat_keys(value, name + "/")
        else:
            yield name


def image_chw(value: Any, key: str) -> np.ndarray:
    """A uint8 image (H, W, 3) or (3, H, W) -> a writable (3, H, W) uint8 copy."""
    if not isinstance(value, np.ndarray):
        raise InputError(f"{key!r} is a {type(value).__name__}; expected a uint8 numpy image (H, W, 3) or (3, H, W)")
    if value.dtype != np.uint8:
        raise InputError(f"{key!r} has dtype {value.dtype}; expected uint8 (an image (H, W, 3) or (3, H, W), 0..255)")
    if value.ndim != 3 or 3 not in (value.shape[0], value.shape[-1]) or min(value.shape) < 1:
        raise InputError(f"{key!r} has shape {tuple(value.shape)}; expected an image (H, W, 3) or (3, H, W)")
    chw = value.transpose(2, 0, 1) if value.shape[-1] == 3 else value
    if max(chw.shape[1:]) > MAX_IMAGE_SIDE:
        raise InputError(f"{key!r} has shape {tuple(value.shape)}; expected at most {MAX_IMAGE_SIDE} pixels a side")
    return np.array(chw, dtype=np.uint8, order="C", copy=True)


def state_vector(value: Any, key: str) -> np.ndarray:
    """A float or integer vector (n,) (a 0-d value counts as (1,)) -> float32 (n,)."""
    try:
        array = np.asarray(value)
    except ValueError as exc:
        raise InputError(f"{key!r} is not a numeric array ({exc}); expected a float vector") from None
    if array.dtype.kind not in "fiu":
        raise InputError(f"{key!r} has dtype {array.dtype}; expected a float or integer vector")
    if array.ndim > 1:
        raise InputError(f"{key!r} has shape {tuple(array.shape)}; expected a vector (n,)")
    array = array.astype(np.float32).reshape(-1)
    if not np.isfinite(array).all():
        raise InputError(f"{key!r} holds NaN or inf values: {array.tolist()}")
    return array


def prompt_text(value: Any, key: str) -> str:
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise InputError(f"{key!r} is bytes that are not UTF-8; expected a string") from None
    if isinstance(value, np.ndarray) and value.ndim == 0 and value.dtype.kind == "U":
        return str(value)
    if not isinstance(value, str):
        raise InputError(f"{key!r} is a {type(value).__name__}; expected the instruction as a string")
    return value


class ObsMapper:
    """One decoded request -> one observation in dataset keys, checked against the checkpoint.

    obs_map:      {request key: dataset key} (from `resolve_obs_map`).
    camera_keys:  the image keys the checkpoint reads (None: any `observation.image*`, in map order).
    state_dim:    the state width the checkpoint expects (None: not checked here).
    default_prompt: the instruction when no request key maps to `task` or the request lacks it.

    Mistakes in the map are a ConfigError at start-up; mistakes in a request are an InputError
    naming the request key and what was expected.
    """

    def __init__(self, obs_map: Mapping[str, str], camera_keys: Sequence[str] | None = None,
                 state_dim: int | None = None, default_prompt: str | None = None):
        self.obs_map = {key: canonical_target(target) for key, target in obs_map.items()}
        self.camera_keys = list(camera_keys) if camera_keys is not None else None
        self.state_dim = state_dim
        self.default_prompt = default_prompt
        self.images: dict[str, str] = {}  # request key -> dataset image key
        self.state: list[str] = []  # request keys joined into observation.state, in order
        self.prompt: str | None = None  # request key of the instruction
        for key, target in self.obs_map.items():
            if target == TASK_KEY:
                if self.prompt is not None:
                    raise ConfigError(f"{MAP_FLAG}: both {self.prompt!r} and {key!r} map to 'task'; keep one")
                self.prompt = key
            elif target == STATE_KEY:
                self.state.append(key)
            elif self._is_camera(target):
                other = next((k for k, t in self.images.items() if t == target), None)
                if other is not None:
                    raise ConfigError(f"{MAP_FLAG}: both {other!r} and {key!r} map to camera {target!r}; keep one")
                self.images[key] = target
            else:
                expected = (f"one of its camera keys {self.camera_keys}" if self.camera_keys is not None
                            else f"a camera key '{IMAGE_PREFIX}<name>'")
                example = json.dumps({key: self._example()})
                raise ConfigError(
                    f"{MAP_FLAG}: request key {key!r} maps to {target!r}, which the checkpoint does not read; expected "
                    f"'{TASK_KEY}', '{STATE_KEY}' or {expected} (e.g. {MAP_FLAG}='{example}')")
        missing = [c for c in self.camera_keys or () if c not in self.images.values()]
        if missing:
            raise ConfigError(
                f"{MAP_FLAG}: no request key maps to the checkpoint's camera(s) {missing}; the map is "
                f"{json.dumps(self.obs_map)} (add e.g. {MAP_FLAG}='{json.dumps({'<request key>': missing[0]})}')")
        if not self.images:
            raise ConfigError(f"{MAP_FLAG}: no request key maps to a camera '{IMAGE_PREFIX}<name>'; the map is "
                              f"{json.dumps(self.obs_map)}")
        if not self.state:
            raise ConfigError(
                f"{MAP_FLAG}: no request key maps to '{STATE_KEY}'; the map is {json.dumps(self.obs_map)}")
        if self.prompt is None and default_prompt is None:
            raise ConfigError(f"{MAP_FLAG}: no request key maps to '{TASK_KEY}' (the instruction); map one, e.g. "
                              f"{MAP_FLAG}='{{\"prompt\": \"task\"}}', or pass --serve.default_prompt")

    def _is_camera(self, target: str) -> bool:
        if self.camera_keys is not None:
            return target in self.camera_keys
        return target.startswith("observation.image")

    def _example(self) -> str:
        """A camera key to suggest: the first one nothing maps to yet."""
        if not self.camera_keys:
            return IMAGE_PREFIX + "<camera>"
        free = [c for c in self.camera_keys if c not in self.obs_map.values()]
        return (free or self.camera_keys)[0]

    def _get(self, request: Mapping[str, Any], key: str) -> Any:
        try:
            return lookup(request, key)
        except KeyError:
            keys = list(flat_keys(request))
            shown = keys[:20] + (["..."] if len(keys) > 20 else [])
            raise InputError(
                f"the request has no {key!r} (mapped to {self.obs_map[key]!r}); its keys are {shown}") from None

    def __call__(self, request: Any) -> dict[str, Any]:
        """request (nested dict of numpy arrays / strings) -> {dataset key: value, ..., 'task': str}."""
        if not isinstance(request, Mapping):
            raise InputError(f"a request must be a msgpack map of observation keys, got a {type(request).__name__}")
        obs: dict[str, Any] = {}
        for key, target in self.images.items():
            obs[target] = image_chw(self._get(request, key), key)
        parts = [state_vector(self._get(request, key), key) for key in self.state]
        state = np.concatenate(parts) if len(parts) > 1 else parts[0]
        if self.state_dim is not None and state.shape[0] != self.state_dim:
            joined = " + ".join(f"{k!r} ({p.shape[0]})" for k, p in zip(self.state, parts))
            source = (f"{self.state[0]!r} has shape {tuple(parts[0].shape)}" if len(parts) == 1 else
                      f"{joined} make {state.shape[0]} dims")
            raise InputError(f"{source}; the checkpoint expects {STATE_KEY} with {self.state_dim} dims")
        obs[STATE_KEY] = state
        if self.prompt is not None and (self.default_prompt is None or _has(request, self.prompt)):
            obs[TASK_KEY] = prompt_text(self._get(request, self.prompt), self.prompt)
        else:
            obs[TASK_KEY] = self.default_prompt
        return obs


def _has(request: Mapping[str, Any], key: str) -> bool:
    try:
        lookup(request, key)
        return True
    except KeyError:
        return False


def example_request(preset: str, seed: int = 0, state_dims: Mapping[str, int] | None = None,
                    prompt: str = "pick up the red block") -> dict[str, Any]:
    """A request shaped like the preset's openpi client sends (random images and state).

    state_dims: request key -> width, to fit a checkpoint whose state differs from the robot's.
    """
    rng = np.random.default_rng(seed)
    request: dict[str, Any] = {}
    for f in PRESETS[preset].fields:
        node = request
        for part in f.path[:-1]:
            node = node.setdefault(part, {})
        if f.kind == "image":
            value: Any = rng.integers(0, 256, size=f.shape, dtype=np.uint8)
        elif f.kind == "state":
            width = (state_dims or {}).get(f.key, f.shape[0])
            value = rng.standard_normal(width).astype(np.float32)
        else:
            value = prompt
        node[f.path[-1]] = value
    return request
