"""Dataset sample -> model batch: cameras, images, dims, normalisation and the prompt.

The pieces are small pure functions (`resize_with_pad`, `pad_dims`, `format_prompt`, ...) that
`Preprocessor` strings together. A raw sample is what the LeRobot reader yields:

    observation.images.<key>  (C, H, W) float in [0, 1]   (uint8 and (H, W, C) are accepted too)
    observation.state         (S,) float
    action                    (H, D) float, action_is_pad (H,) bool   (training only)
    task                      str
    anything else array-valued (e.g. observation.gaze_bbox (4,)) is carried into Batch.extras.

Choices where openpi and LeRobot differ (documented once here):

- resize-with-pad centres the image and pads with black (-1 after scaling), like openpi;
  LeRobot pads on the left/top and leaves padded pixels at -3. Resizing is bilinear with
  antialiasing, which is close to the PIL resize openpi's data pipeline uses.
- Pi0.5 discretises the normalised state with its real dims (before zero padding), like openpi;
  LeRobot discretises the padded state, which appends a run of "128" bins to every prompt.
- Missing camera views are filled with -1 (black) and masked out.
"""

from __future__ import annotations

import warnings
from typing import Any, Container, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from pirecon.batch import Batch
from pirecon.configs.policy import EMPTY_CAMERA, PolicyConfig
from pirecon.data.normalize import Normalizer
from pirecon.data.tokenizer import Tokenizer, check_vocab, pad_tokens
from pirecon.errors import ConfigError, InputError

IMAGE_PREFIX = "observation.images."
STATE_KEY = "observation.state"
MAX_NORMALIZED_STATE = 1e4  # an observation's state beyond this many normalised units is refused
ACTION_KEY = "action"
CAMERA_FLAG = "--dataset.camera_map"
STATE_BINS = 256
# Raw keys that are consumed or are bookkeeping; they never reach Batch.extras.
# Sample keys that do not travel in Batch.extras (`index` and `episode_index` do: the trainer names
# them when a loss turns NaN).
_NOT_EXTRAS = {STATE_KEY, ACTION_KEY, "action_is_pad", "task", "prompt", "timestamp", "frame_index", "task_index"}


# ---------------------------------------------------------------------------------------------
# Images


def to_chw_float(image: Any, name: str = "image") -> torch.Tensor:
    """An image as a float32 (3, H, W) tensor in [0, 1].

    Accepts torch tensors or numpy arrays, (C, H, W) or (H, W, C), uint8 (0..255) or float
    (0..1); a single channel is repeated to RGB.
    """
    x = torch.as_tensor(np.asarray(image) if not isinstance(image, torch.Tensor) else image)
    if x.dim() != 3:
        raise InputError(f"{name} has shape {tuple(x.shape)}; expected one image (3, H, W) or (H, W, 3)")
    if x.shape[0] not in (1, 3) and x.shape[-1] in (1, 3):
        x = x.permute(2, 0, 1)  # (H, W, C) -> (C, H, W)
    if x.shape[0] not in (1, 3):
        raise InputError(f"{name} has shape {tuple(x.shape)}; expected 3 (RGB) or 1 channels")
    if x.dtype == torch.uint8:
        x = x.float() / 255.0
    elif x.is_floating_point():
        x = x.float()
    else:
        raise InputError(f"{name} has dtype {x.dtype}; expected uint8 (0..255) or float (0..1)")
    return x.repeat(3, 1, 1) if x.shape[0] == 1 else x


def resize_with_pad(images: torch.Tensor, height: int, width: int, pad_value: float = 0.0) -> torch.Tensor:
    """Resize (..., C, h, w) to fit (height, width) keeping the aspect ratio, then pad, centred.

    Same geometry as openpi's `resize_with_pad`: scale by the larger of the two ratios, truncate
    the new size to integers, split the padding evenly with the odd pixel at the bottom/right.
    Values are clamped to [0, 1] after the (bilinear, antialiased) resize.
    """
    lead, (c, h, w) = images.shape[:-3], images.shape[-3:]
    x = images.reshape(-1, c, h, w)
    if (h, w) != (height, width):
        ratio = max(w / width, h / height)
        new_h, new_w = int(h / ratio), int(w / ratio)
        if min(new_h, new_w) < 1:
            raise InputError(f"an image of {h}x{w} pixels is too thin to resize to {height}x{width} (it would be "
                             f"{new_h}x{new_w}); expected an aspect ratio of at most {min(height, width)}:1")
        x = F.interpolate(x, size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=True)
        x = x.clamp(0.0, 1.0)
        pad_top, extra_h = divmod(height - new_h, 2)
        pad_left, extra_w = divmod(width - new_w, 2)
        x = F.pad(x, (pad_left, pad_left + extra_w, pad_top, pad_top + extra_h), value=pad_value)
    return x.reshape(*lead, c, height, width)


def prepare_image(image: Any, resolution: int, name: str = "image") -> torch.Tensor:
    """Any accepted image -> (3, resolution, resolution) in [-1, 1]; padding is exactly -1."""
    try:
        x = resize_with_pad(to_chw_float(image, name), resolution, resolution, pad_value=0.0)
    except InputError as exc:
        raise InputError(f"{name}: {exc}") from None
    return x * 2.0 - 1.0


def camera_sources(camera_names: Sequence[str], camera_map: Mapping[str, str] | None,
                   available: Sequence[str], present: Container[str] | None = None) -> dict[str, str | None]:
    """Model view -> raw image key (None where the view has no source).

    camera_map: dataset key -> model view. A key may omit the `observation.images.` prefix, and
    may name any key in `present` (all keys of the sample, e.g. a robot's `observation/image`).
    Without a map, `available` keys (the dataset's camera keys, in order) go onto the model's
    views in order; extra dataset cameras are left out. Views of --policy.empty_cameras
    (`empty_camera_<i>`) never get a source.
    """
    present = available if present is None else present
    sources: dict[str, str | None] = {view: None for view in camera_names}
    if camera_map is None:
        fed = [view for view in camera_names if not view.startswith(EMPTY_CAMERA)]
        for view, key in zip(fed, available):
            sources[view] = key
        return sources
    for key, view in camera_map.items():
        if key in present:
            sources[view] = key
        elif IMAGE_PREFIX + key in present:
            sources[view] = IMAGE_PREFIX + key
        else:
            raise ConfigError(
                f"{CAMERA_FLAG}: camera {key!r} is not in the data; its camera keys are {list(available)}")
    return sources


def check_camera_map(camera_map: Mapping[str, str], camera_names: Sequence[str]) -> None:
    """Each target must be a model view, and no view may get two sources."""
    seen: dict[str, str] = {}
    for key, view in camera_map.items():
        if view.startswith(EMPTY_CAMERA) and view in camera_names:
            raise ConfigError(f"{CAMERA_FLAG}: {key!r} maps to {view!r}, a view of --policy.empty_cameras, which "
                              f"stays empty; map it to one of {[v for v in camera_names if not v.startswith(EMPTY_CAMERA)]}")
        if view not in camera_names:
            raise ConfigError(
                f"{CAMERA_FLAG}: {key!r} maps to {view!r}, which is not a model view; expected one of "
                f"{list(camera_names)} (--policy.camera_names)")
        if view in seen:
            raise ConfigError(f"{CAMERA_FLAG}: both {seen[view]!r} and {key!r} map to view {view!r}")
        seen[view] = key


def image_keys(sample: Mapping[str, Any]) -> list[str]:
    """The camera keys of a raw sample, in its order (`observation.images.*`, `observation.image`)."""
    return [k for k in sample if k.startswith("observation.image") and not k.endswith("_is_pad")]


# ---------------------------------------------------------------------------------------------
# State / action dims


def pad_dims(x: torch.Tensor, size: int) -> torch.Tensor:
    """Zero-pad the last axis of (..., d) to (..., size); d must be <= size."""
    d = x.shape[-1]
    return F.pad(x, (0, size - d)) if d < size else x


def check_width(width: int, limit: int, what: str) -> None:
    """Data wider than the model: say which flag selects dims and which widens the model."""
    if width <= limit:
        return
    short = "state" if what == "state" else "action"
    raise ConfigError(
        f"{'observation.state' if short == 'state' else 'action'} has {width} dims but the model takes at most "
        f"{limit} (--policy.max_{short}_dim); select the dims to use with --dataset.{short}_dims=[...], or set "
        f"--policy.max_{short}_dim={width} (this freshly initialises the {short} projection instead of loading "
        f"it from a checkpoint)")


def select_dims(x: torch.Tensor, dims: Sequence[int] | None, flag: str) -> torch.Tensor:
    """x[..., dims] (no-op when dims is None); out-of-range indices name the flag."""
    if dims is None:
        return x
    width = x.shape[-1]
    bad = [d for d in dims if not -width <= d < width]
    if bad:
        raise ConfigError(f"{flag}={list(dims)}: indices {bad} are out of range for data with {width} dims")
    return x[..., list(dims)]


# ---------------------------------------------------------------------------------------------
# Prompt


def clean_text(text: str) -> str:
    """openpi's prompt cleaning: strip, '_' -> ' ', newline -> ' '."""
    return text.strip().replace("_", " ").replace("\n", " ")


def discretize_state(state: Any, bins: int = STATE_BINS) -> np.ndarray:
    """Normalised state (d,) -> bin indices (d,) in 0..bins-1 over [-1, 1], as openpi does."""
    state = np.asarray(state, dtype=np.float32).reshape(-1)
    edges = np.linspace(-1.0, 1.0, bins + 1)[:-1]
    return np.clip(np.digitize(state, bins=edges) - 1, 0, bins - 1)


def format_prompt(task: str, state: Any = None, kind: str = "pi0") -> str:
    """The prompt text, without BOS.

    pi0:  "{cleaned task}\\n"                       (state is not part of the text)
    pi05: "Task: {cleaned task}, State: {bins};\\nAction: "  (state: normalised, real dims)
    """
    if kind == "pi0":
        return clean_text(task) + "\n"
    if kind != "pi05":
        raise ConfigError(f"prompt kind {kind!r}: expected 'pi0' or 'pi05'")
    if state is None:
        raise InputError("a pi05 prompt needs the normalised state (observation.state)")
    bins = " ".join(str(int(b)) for b in discretize_state(state))
    return f"Task: {clean_text(task)}, State: {bins};\nAction: "


def tokenize_prompt(tokenizer: Tokenizer, task: str, state: Any = None, kind: str = "pi0",
                    max_len: int = 48) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompt -> tokens (max_len,) long, mask (max_len,) bool, right-padded, BOS first.

    Pi0 encodes the "\\n" separately (openpi's "start of answer" token); Pi0.5 encodes the whole
    formatted prompt at once.
    """
    text = format_prompt(task, state, kind)
    if kind == "pi0":
        ids = tokenizer.encode(text[:-1], add_bos=True) + tokenizer.encode("\n", add_bos=False)
    else:
        ids = tokenizer.encode(text, add_bos=True)
    return pad_tokens(ids, max_len, tokenizer.pad_id)


# ---------------------------------------------------------------------------------------------
# The bundle


class Preprocessor:
    """Raw sample -> per-sample tensors -> Batch, and model actions -> robot actions.

    policy_config: decides views, resolution, padded dims, chunk size, prompt format and length.
    tokenizer:     from `load_tokenizer`; its vocabulary must fit the model's.
    normalizer:    stats in the *dataset's* dims (None: data is used as is). With `action_dims` /
                   `state_dims` the stats are cut to the same dims; `self.normalizer` is the cut one.
    camera_map:    dataset image key -> model view (see `camera_sources`); None or {} maps
                   `camera_keys` (or the sample's image keys, in order) onto the views in order.
    action_dims / state_dims: indices of the dims to keep (state is only cut when given). Select
                   in one place only: here, or when opening the dataset (then pass the cut stats).
    action_dim:    real action width, for `postprocess_actions` when neither `action_dims` nor
                   the stats tell it.
    default_prompt: used when a sample has no `task` / `prompt`.

    Picklable, so it can run inside DataLoader workers.
    """

    def __init__(self, policy_config: PolicyConfig, tokenizer: Tokenizer, normalizer: Normalizer | None = None,
                 camera_map: Mapping[str, str] | None = None, action_dims: Sequence[int] | None = None,
                 state_dims: Sequence[int] | None = None, camera_keys: Sequence[str] | None = None,
                 action_dim: int | None = None, default_prompt: str | None = None):
        self.config = policy_config
        self.tokenizer = tokenizer
        check_vocab(tokenizer, policy_config.vlm.vocab_size)
        self.camera_map = dict(camera_map) if camera_map else None  # {} (the flag's default) = no map
        if self.camera_map is not None:
            check_camera_map(self.camera_map, policy_config.camera_names)
        self.camera_keys = list(camera_keys) if camera_keys is not None else None
        if self.camera_map is None and self.camera_keys and len(self.camera_keys) > len(policy_config.camera_names):
            warnings.warn(
                f"the dataset has {len(self.camera_keys)} cameras {self.camera_keys} but the model has "
                f"{len(policy_config.camera_names)} views; {self.camera_keys[len(policy_config.camera_names):]} "
                f"are not used (choose with {CAMERA_FLAG})", stacklevel=2)
        self.action_dims = list(action_dims) if action_dims is not None else None
        self.state_dims = list(state_dims) if state_dims is not None else None
        for dims, limit, what in ((self.action_dims, policy_config.max_action_dim, "action"),
                                  (self.state_dims, policy_config.max_state_dim, "state")):
            if dims is not None:
                if not dims:
                    raise ConfigError(f"--dataset.{what}_dims: expected at least one index")
                check_width(len(dims), limit, what)
        self.dataset_normalizer = normalizer
        if normalizer is not None and self.action_dims is not None and normalizer.dim("actions") is not None:
            normalizer = normalizer.select("actions", self.action_dims)
        if normalizer is not None and self.state_dims is not None and normalizer.dim("state") is not None:
            normalizer = normalizer.select("state", self.state_dims)
        self.normalizer = normalizer
        if self.action_dims is not None:
            action_dim = len(self.action_dims)
        elif action_dim is None and normalizer is not None:
            action_dim = normalizer.dim("actions")
        self.action_dim = action_dim
        self.default_prompt = default_prompt

    # Per sample ------------------------------------------------------------------------------
    def __call__(self, raw: Mapping[str, Any]) -> dict[str, Any]:
        """Raw sample -> {"images" (V, 3, R, R), "image_masks" (V,), "tokens" (L,), "token_masks" (L,),
        "state" (S,), ["actions" (H, A), "action_is_pad" (H,), "action_dim" int], "extras" {key: tensor}}."""
        cfg = self.config
        images, masks, used_cameras = self._images(raw)
        state = self._state(raw)  # (d_s,) normalised, real dims
        task = raw.get("task", raw.get("prompt", self.default_prompt))
        if task is None:
            raise InputError(f"the sample has no 'task' or 'prompt' (keys: {sorted(raw)}); pass default_prompt")
        tokens, token_masks = tokenize_prompt(self.tokenizer, str(task), state if cfg.type == "pi05" else None,
                                              cfg.type, cfg.max_token_len)
        out: dict[str, Any] = {
            "images": images, "image_masks": masks, "tokens": tokens, "token_masks": token_masks,
            "state": pad_dims(state, cfg.max_state_dim),
            "extras": {k: torch.as_tensor(v) for k, v in raw.items()
                       if k not in _NOT_EXTRAS and k not in used_cameras and not k.startswith("observation.image")
                       and not k.endswith("_is_pad") and isinstance(v, (torch.Tensor, np.ndarray))},
        }
        if ACTION_KEY in raw:
            actions, is_pad = self._actions(raw)
            out.update(actions=pad_dims(actions, cfg.max_action_dim), action_is_pad=is_pad,
                       action_dim=actions.shape[-1])
        return out

    def _images(self, raw: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor, set[str]]:
        """-> images (V, 3, R, R) in [-1, 1], masks (V,) bool, the raw keys used as cameras."""
        res = self.config.image_resolution
        available = image_keys(raw)
        keys = available
        if self.camera_map is None and self.camera_keys is not None:
            missing = [k for k in self.camera_keys if k not in raw]
            if missing:
                raise InputError(f"the sample lacks camera keys {missing}; its camera keys are {available}")
            keys = self.camera_keys
        sources = camera_sources(self.config.camera_names, self.camera_map, keys, present=raw)
        images, masks = [], []
        for view, key in sources.items():
            if key is None:
                images.append(torch.full((3, res, res), -1.0))
                masks.append(False)
            else:
                images.append(prepare_image(raw[key], res, name=key))
                masks.append(True)
        used = {key for key in sources.values() if key is not None}
        return torch.stack(images), torch.tensor(masks, dtype=torch.bool), used

    def _state(self, raw: Mapping[str, Any]) -> torch.Tensor:
        if STATE_KEY not in raw:
            raise InputError(f"the sample has no {STATE_KEY!r} (keys: {sorted(raw)})")
        state = torch.as_tensor(np.asarray(raw[STATE_KEY]) if not isinstance(raw[STATE_KEY], torch.Tensor)
                                else raw[STATE_KEY]).float().reshape(-1)  # (d,)
        state = select_dims(state, self.state_dims, "--dataset.state_dims")
        check_width(state.shape[-1], self.config.max_state_dim, "state")
        if self.normalizer is not None:
            state = self.normalizer.normalize_state(state)
        return state

    def _actions(self, raw: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """-> actions (H, d_a) normalised with real dims, is_pad (H,) bool."""
        actions = torch.as_tensor(raw[ACTION_KEY]).float()
        if actions.dim() != 2 or actions.shape[0] != self.config.chunk_size:
            raise InputError(
                f"'action' has shape {tuple(actions.shape)}; expected a chunk (chunk_size={self.config.chunk_size}, "
                f"dims): read the dataset with action delta timestamps for --policy.chunk_size")
        full = self.dataset_normalizer.dim("actions") if self.dataset_normalizer is not None else None
        if self.action_dims is not None and full is not None and actions.shape[-1] != full:
            raise InputError(
                f"'action' has {actions.shape[-1]} dims but the norm stats have {full}; if the dataset was opened "
                f"with --dataset.action_dims already, do not pass action_dims to the Preprocessor too")
        actions = select_dims(actions, self.action_dims, "--dataset.action_dims")
        check_width(actions.shape[-1], self.config.max_action_dim, "action")
        if self.action_dim is not None and actions.shape[-1] != self.action_dim:
            raise InputError(f"'action' has {actions.shape[-1]} dims; this preprocessor expects {self.action_dim}")
        if self.normalizer is not None:
            actions = self.normalizer.normalize_actions(actions)
        is_pad = raw.get("action_is_pad")
        is_pad = (torch.zeros(actions.shape[0], dtype=torch.bool) if is_pad is None
                  else torch.as_tensor(is_pad).bool().reshape(-1))
        return actions, is_pad

    # Batching --------------------------------------------------------------------------------
    def collate(self, samples: Sequence[Mapping[str, Any]]) -> Batch:
        """Stack processed samples (from `__call__`) into a Batch."""
        if not samples:
            raise InputError("collate got an empty list of samples")
        with_actions = ["actions" in s for s in samples]
        if any(with_actions) and not all(with_actions):
            raise InputError("collate got samples with and without 'action'; a batch must be all one kind")
        action_dim = None
        if all(with_actions):
            dims = {int(s["action_dim"]) for s in samples}
            if len(dims) > 1:
                raise InputError(f"collate got samples with different real action dims {sorted(dims)}")
            action_dim = dims.pop()
        extra_keys = set(samples[0]["extras"])
        for s in samples[1:]:
            if set(s["extras"]) != extra_keys:
                raise InputError(
                    f"collate got samples with different extra keys: {sorted(extra_keys)} vs {sorted(s['extras'])}")

        def stack(name):
            return torch.stack([s[name] for s in samples])

        return Batch(
            images=stack("images"), image_masks=stack("image_masks"),
            tokens=stack("tokens"), token_masks=stack("token_masks"), state=stack("state"),
            actions=stack("actions") if action_dim is not None else None,
            action_is_pad=stack("action_is_pad") if action_dim is not None else None,
            action_dim=action_dim if action_dim is not None else self.action_dim,
            extras={k: torch.stack([s["extras"][k] for s in samples]) for k in sorted(extra_keys)},
        )

    # Inference -------------------------------------------------------------------------------
    def from_observation(self, obs: Mapping[str, Any]) -> Batch:
        """One robot observation -> a Batch of size 1 (no actions).

        obs uses the dataset's keys (`observation.images.<key>` as uint8 (H, W, 3) arrays or float
        (3, H, W) tensors, `observation.state`) and `task` or `prompt` for the instruction.
        """
        sample = {k: v for k, v in obs.items() if k not in (ACTION_KEY, "action_is_pad")}
        self._check_state_range(sample)
        return self.collate([self(sample)])

    def _check_state_range(self, obs: Mapping[str, Any]) -> None:
        """Refuse a state the model was never meant to see: non-finite, or (normalised) beyond
        MAX_NORMALIZED_STATE — its output would be meaningless or non-finite."""
        state = self._state(obs)
        bad = ~torch.isfinite(state) | (state.abs() > MAX_NORMALIZED_STATE)
        if bad.any():
            dims = bad.nonzero().flatten().tolist()
            raw = np.asarray(obs[STATE_KEY], dtype=np.float64).reshape(-1)
            unit = "normalised units (standard deviations for mean_std, half-ranges for quantile)" \
                if self.normalizer is not None else "units (the checkpoint has no statistics)"
            shown = ", ".join(f"{raw[i]:.3g}" for i in dims[:5]) if raw.shape[0] == state.shape[0] else "?"
            raise InputError(f"{STATE_KEY} dims {dims[:5]} ({shown}) lie beyond {MAX_NORMALIZED_STATE:g} {unit}; "
                             f"expected the units the checkpoint was trained on")

    def postprocess_actions(self, actions: Any, action_dim: int | None = None) -> np.ndarray:
        """Model output (B, H, A) (or (H, A)), normalised and padded -> robot units (B, H, d) numpy."""
        x = actions.detach().float().cpu().numpy() if isinstance(actions, torch.Tensor) else np.asarray(
            actions, dtype=np.float32)
        d = action_dim or self.action_dim
        if d is None:
            raise ConfigError("postprocess_actions: the real action dim is unknown; pass action_dims, "
                              "action_dim or norm stats with an 'actions' entry to the Preprocessor")
        if x.shape[-1] < d:
            raise InputError(f"actions have {x.shape[-1]} dims; expected at least the {d} real action dims")
        x = x[..., :d]
        if self.normalizer is not None:
            x = self.normalizer.unnormalize_actions(x)
        return x.astype(np.float32)
