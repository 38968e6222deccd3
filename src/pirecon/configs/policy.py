"""PolicyConfig: everything that decides a Pi0 / Pi0.5 policy's shape and how it runs.

Field names follow LeRobot's `PI0Config` / `PI05Config` where the concept exists. `FOLDER_RULES`
says, for every field, what happens when a typed value differs from a pretrained folder's
(`pirecon.checkpoint.resolve` applies it): the value runs as typed, the weights are adapted to it,
or it is an error because the folder's weights cannot take it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from pirecon.configs.variants import gemma_spec, policy_variant, siglip_spec
from pirecon.errors import ConfigError

DEFAULT_CAMERAS = ("base_0_rgb", "left_wrist_0_rgb", "right_wrist_0_rgb")
EMPTY_CAMERA = "empty_camera_"  # --policy.empty_cameras=N appends views empty_camera_0 .. N-1 (never fed)
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
# How real-time chunking conditions a chunk on the previous one (LeRobot's RTCConfig.mode): guidance
# toward it (any checkpoint), or its first actions given clean (a checkpoint trained with
# rtc_training_max_delay > 0).
RTC_MODES = ("guided", "trained")
# LeRobot's NormalizationMode names for state and actions -> ours.
NORMALIZATION_MODES = {"MEAN_STD": "mean_std", "QUANTILES": "quantile"}


def mode_from_mapping(mapping: dict[str, str]) -> str:
    """LeRobot's --policy.normalization_mapping -> our normalization_mode (one mode for state and
    actions; images are never normalised beyond the [-1, 1] scaling)."""
    flag = "--policy.normalization_mapping"
    upper = {str(k).upper(): str(v).upper() for k, v in mapping.items()}
    unknown = set(upper) - {"VISUAL", "STATE", "ACTION"}
    if unknown:
        raise ConfigError(f"{flag}: unknown feature types {sorted(unknown)}; expected VISUAL, STATE, ACTION")
    if upper.get("VISUAL", "IDENTITY") != "IDENTITY":
        raise ConfigError(f"{flag}: VISUAL={upper['VISUAL']}; Pi0 and Pi0.5 take images as they are (IDENTITY)")
    missing = [k for k in ("STATE", "ACTION") if k not in upper]
    if missing:
        raise ConfigError(f"{flag}={mapping}: no {' or '.join(missing)} (LeRobot would then leave it unnormalised, "
                          f"which pirecon does not do); give both, e.g. "
                          f"'{{\"VISUAL\": \"IDENTITY\", \"STATE\": \"MEAN_STD\", \"ACTION\": \"MEAN_STD\"}}'")
    modes = {upper["STATE"], upper["ACTION"]}
    if len(modes) != 1 or not modes <= set(NORMALIZATION_MODES):
        raise ConfigError(f"{flag}: STATE={upper['STATE']}, ACTION={upper['ACTION']}; pirecon normalises both alike "
                          f"with one of {list(NORMALIZATION_MODES)}")
    return NORMALIZATION_MODES[modes.pop()]


@dataclass(frozen=True)
class PolicyConfig:
    """`--policy.*`: the model (type, sizes, chunk) and how it loads, trains and runs."""

    type: str = "pi0"  # pi0 | pi05
    variant: str | None = None  # full | tiny: sets vision_variant, paligemma_variant and action_expert_variant at once
    vision_variant: str = "siglip_so400m_14"  # SigLIP size: siglip_so400m_14 | siglip_tiny
    paligemma_variant: str = "gemma_2b"  # the VLM's Gemma size: gemma_2b | gemma_tiny
    action_expert_variant: str = "gemma_300m"  # the action expert's Gemma size: gemma_300m | gemma_tiny_expert
    chunk_size: int = 50  # actions predicted per chunk (the action horizon)
    n_action_steps: int = 50  # actions of each chunk executed before the policy is asked again (<= chunk_size)
    max_state_dim: int = 32  # the state is zero-padded to this width
    max_action_dim: int = 32  # actions are zero-padded to this width
    num_inference_steps: int = 10  # Euler steps of the flow from noise to actions in sample_actions
    tokenizer_max_length: int | None = None  # prompt tokens after padding; none: 48 for pi0, 200 for pi05
    image_resolution: int = 224  # square side each camera image is resized (with padding) to
    camera_names: tuple[str, ...] = DEFAULT_CAMERAS  # the model's camera views, in order
    empty_cameras: int = 0  # LeRobot's: this many extra views empty_camera_0.. appended, always masked (-1 images)
    dtype: str = "float32"  # float32 | bfloat16: frozen weights and compute (trainable weights keep float32 masters)
    full_bf16: bool = False  # with dtype=bfloat16: trainable weights and AdamW state in bf16 too, no float32 masters (openpi's pytorch_training_precision=bfloat16; less memory, coarser updates)
    device: str = "auto"  # auto | cpu | cuda | cuda:N (auto: cuda when available, else cpu; one per rank under accelerate)
    freeze_vision_encoder: bool = False  # keep SigLIP and the projector frozen
    train_expert_only: bool = False  # train only the action expert and the heads around it (VLM frozen)
    gradient_checkpointing: bool = False  # recompute layer activations in the backward pass to save memory
    compile_model: bool = False  # torch.compile the training forward and sample_actions' denoising step (as LeRobot)
    compile_mode: str = "max-autotune"  # torch.compile mode (LeRobot's default)
    loss_reduction: str = "real"  # real: mean over the real action dims and chunk steps (LeRobot) | all: over every padded dim and step (openpi)
    time_beta_alpha: float = 1.5  # flow-matching time t = Beta(alpha, beta) * 0.999 + 0.001: alpha
    time_beta_beta: float = 1.0  # flow-matching time t = Beta(alpha, beta) * 0.999 + 0.001: beta
    rtc_training_max_delay: int = 0  # training-time real-time chunking: each example gives its first d ~ U{0..D} actions clean (0: off)
    pretrained_path: str | None = None  # a pirecon, openpi or LeRobot folder, or a hub id in the local cache (none: random init)
    path: str | None = None  # LeRobot's --policy.path (start from a trained policy): the same as pretrained_path
    tokenizer_path: str | None = None  # SentencePiece .model file or a tokenizer folder (none: the folder's, or built from the dataset for tiny)
    use_peft: bool = False  # train LoRA adapters through PEFT (see --peft.*) instead of every weight
    normalization_mode: str | None = None  # mean_std | quantile; none: the folder's, else mean_std for pi0, quantile for pi05
    normalization_mapping: dict[str, str] | None = None  # LeRobot's {"VISUAL": "IDENTITY", "STATE": m, "ACTION": m}, m MEAN_STD | QUANTILES: sets normalization_mode
    use_dataset_stats: bool = False  # normalise with the dataset's statistics even when pretrained_path holds its own
    asset_id: str | None = None  # openpi folders: which assets/<asset_id>/norm_stats.json to use
    push_to_hub: bool = False  # upload the final checkpoint of `pirecon train` to the Hub repo repo_id
    # The training preset (LeRobot's PI0Config / PI05Config values; used with --use_policy_training_preset=true).
    optimizer_lr: float = 2.5e-5  # AdamW peak learning rate
    optimizer_betas: tuple[float, float] = (0.9, 0.95)  # AdamW betas
    optimizer_eps: float = 1e-8  # AdamW epsilon
    optimizer_weight_decay: float = 0.01  # AdamW weight decay
    optimizer_grad_clip_norm: float = 1.0  # clip the global gradient norm to this value (<= 0: no clipping)
    scheduler_warmup_steps: int = 1000  # linear warm-up steps (scaled down when --steps < scheduler_decay_steps)
    scheduler_decay_steps: int = 30000  # cosine decay steps (scaled down to --steps when fewer)
    scheduler_decay_lr: float = 2.5e-6  # learning rate at the end of the decay
    repo_id: str | None = None  # the Hub repo ("org/name") push_to_hub uploads to
    # LeRobot fields with one possible value here, accepted so LeRobot command lines run unchanged.
    n_obs_steps: int = 1  # observation frames per sample (Pi0 / Pi0.5 read one)
    input_features: dict[str, Any] | None = None  # none (or {}): read from the dataset, as LeRobot's null does
    output_features: dict[str, Any] | None = None  # none (or {}): read from the dataset, as LeRobot's null does
    use_amp: bool = False  # LeRobot's training ignores it; precision is --policy.dtype (a note says so when true)

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
        self._lerobot_fields()
        object.__setattr__(self, "optimizer_betas", tuple(self.optimizer_betas))
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
        check_device_flag(self.device)
        if self.loss_reduction not in ("real", "all"):
            raise ConfigError(f"--policy.loss_reduction={self.loss_reduction!r}: expected real or all")
        if not 0 <= self.rtc_training_max_delay < self.chunk_size:
            raise ConfigError(f"--policy.rtc_training_max_delay={self.rtc_training_max_delay}: expected 0 <= delay < "
                              f"chunk_size ({self.chunk_size}); 0 turns training-time real-time chunking off")
        if self.normalization_mode not in (None, "mean_std", "quantile"):
            raise ConfigError(f"--policy.normalization_mode={self.normalization_mode!r}: expected mean_std or quantile")

    def _lerobot_fields(self) -> None:
        """--policy.path, empty_cameras, normalization_mapping and the one-value fields, in our terms."""
        if self.path is not None:
            if self.pretrained_path is not None and str(self.pretrained_path) != str(self.path):
                raise ConfigError(f"--policy.path={self.path} and --policy.pretrained_path={self.pretrained_path}: "
                                  f"give one (they mean the same here)")
            object.__setattr__(self, "pretrained_path", str(self.path))
            object.__setattr__(self, "path", None)  # one home: pretrained_path
        if self.empty_cameras < 0:
            raise ConfigError(f"--policy.empty_cameras={self.empty_cameras}: expected >= 0")
        empties = tuple(f"{EMPTY_CAMERA}{i}" for i in range(self.empty_cameras))
        real = tuple(name for name in self.camera_names if not name.startswith(EMPTY_CAMERA))
        object.__setattr__(self, "camera_names", real + empties)
        if self.normalization_mapping is not None:
            mode = mode_from_mapping(self.normalization_mapping)
            if self.normalization_mode is not None and self.normalization_mode != mode:
                raise ConfigError(f"--policy.normalization_mapping={self.normalization_mapping} means "
                                  f"normalization_mode={mode}, but --policy.normalization_mode={self.normalization_mode}")
            object.__setattr__(self, "normalization_mode", mode)
        if self.n_obs_steps != 1:
            raise ConfigError(f"--policy.n_obs_steps={self.n_obs_steps}: Pi0 and Pi0.5 read one observation frame (1)")
        for name in ("input_features", "output_features"):
            if getattr(self, name):
                raise ConfigError(f"--policy.{name}: pirecon reads the features from the dataset (as LeRobot's "
                                  f"null does); map cameras with --rename_map or --dataset.camera_map instead")
        if self.compile_mode not in COMPILE_MODES:
            raise ConfigError(f"--policy.compile_mode={self.compile_mode!r}: expected one of {list(COMPILE_MODES)}")

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
        import torch  # lazy: torch is slow to import; configs stay light for --help
        return {"float32": torch.float32, "bfloat16": torch.bfloat16}[self.dtype]


def check_device_flag(value: str, flag: str = "--policy.device") -> None:
    """The spelling of a device flag: auto, cpu, cuda or cuda:N (whether this machine has it:
    `pirecon.model.placement.resolve_device`)."""
    if not (value in ("auto", "cpu", "cuda") or (isinstance(value, str) and value.startswith("cuda:")
                                                 and value[5:].isdigit())):
        raise ConfigError(f"{flag}={value!r}: expected auto, cpu, cuda or cuda:N")


# ---------------------------------------------------------------------------------------------
# A typed value against a pretrained folder's config

RUN = "takes effect as typed"
ADAPT = "the folder's weights are adapted to it"
FIXED = "the folder's weights cannot take another value"
THIS_RUN = "never taken from the folder: this run's choice"

# How each PolicyConfig field is resolved when --policy.pretrained_path names a folder. Untyped
# fields take the folder's value (THIS_RUN ones: the default); typed ones win as the rule says.
FOLDER_RULES: dict[str, str] = {
    "type": FIXED, "variant": FIXED, "vision_variant": FIXED, "paligemma_variant": FIXED,
    "action_expert_variant": FIXED,
    "image_resolution": ADAPT, "max_state_dim": ADAPT, "max_action_dim": ADAPT,
    "chunk_size": RUN, "n_action_steps": RUN, "num_inference_steps": RUN, "tokenizer_max_length": RUN,
    "camera_names": RUN, "empty_cameras": RUN, "compile_mode": RUN, "normalization_mapping": RUN,
    "n_obs_steps": RUN, "input_features": RUN, "output_features": RUN, "use_amp": RUN, "path": THIS_RUN,
    "dtype": RUN, "full_bf16": RUN, "freeze_vision_encoder": RUN, "train_expert_only": RUN,
    "gradient_checkpointing": RUN, "compile_model": RUN, "loss_reduction": RUN, "time_beta_alpha": RUN, "time_beta_beta": RUN,
    "rtc_training_max_delay": RUN,
    "tokenizer_path": RUN, "use_peft": RUN, "normalization_mode": RUN, "use_dataset_stats": RUN,
    "asset_id": RUN, "optimizer_lr": RUN, "optimizer_betas": RUN, "optimizer_eps": RUN,
    "optimizer_weight_decay": RUN, "optimizer_grad_clip_norm": RUN, "scheduler_warmup_steps": RUN,
    "scheduler_decay_steps": RUN, "scheduler_decay_lr": RUN,
    "pretrained_path": THIS_RUN, "device": THIS_RUN, "push_to_hub": THIS_RUN, "repo_id": THIS_RUN,
}


def merge_with_folder(cfg: PolicyConfig, folder_cfg: PolicyConfig, typed: set[str] | frozenset[str],
                      folder: str) -> tuple[PolicyConfig, list[str]]:
    """The policy config of a run on `folder`'s weights: the folder's values, the typed fields of
    `cfg` over them (`typed`: field names without the `policy.` prefix). Returns the config and one
    note per adapted weight. A typed value the weights cannot take raises ConfigError naming the
    flag, the folder and both values."""

    values = dataclasses.asdict(folder_cfg)
    values["variant"] = None  # the three part variants carry the sizes
    notes: list[str] = []
    for name, rule in FOLDER_RULES.items():
        mine, theirs = getattr(cfg, name), getattr(folder_cfg, name)
        if rule == THIS_RUN:
            values[name] = mine
            continue
        if name not in typed:
            continue
        if name == "variant":
            if mine is not None and policy_variant(mine) != (folder_cfg.vision_variant, folder_cfg.paligemma_variant,
                                                            folder_cfg.action_expert_variant):
                raise ConfigError(f"--policy.variant={mine} but {folder} holds a {folder_cfg.vision_variant} / "
                                  f"{folder_cfg.paligemma_variant} / {folder_cfg.action_expert_variant} model; "
                                  f"{FIXED}: drop the flag or start from other weights")
            continue
        if rule == FIXED and mine != theirs:
            raise ConfigError(f"--policy.{name}={mine} but {folder} holds a model with {name}={theirs}; {FIXED}: "
                              f"drop the flag or start from other weights")
        if rule == ADAPT and mine != theirs:
            if name == "image_resolution":
                notes.append(f"SigLIP position embeddings interpolated from {theirs}px to {mine}px "
                             f"({(theirs // folder_cfg.vision.patch_size) ** 2} -> "
                             f"{(mine // folder_cfg.vision.patch_size) ** 2} tokens per image)")
            elif name == "max_state_dim" and folder_cfg.type == "pi05":
                pass  # Pi0.5 reads the state as prompt text: no weight depends on its width
            elif mine < theirs:
                raise ConfigError(f"--policy.{name}={mine} but {folder} was trained with {name}={theirs}; only a "
                                  f"wider padding can be adapted (real dims are chosen with --dataset.action_dims / "
                                  f"--dataset.state_dims)")
            else:
                layers = "action_in_proj columns, action_out_proj rows" if name == "max_action_dim" \
                    else "state_proj columns"
                notes.append(f"{name} widened from {theirs} to {mine}: new {layers} initialised to zero")
        values[name] = mine
    values["camera_names"] = tuple(values["camera_names"])
    # normalization_mapping sets normalization_mode: the typed one of the two wins over the folder's.
    if "normalization_mapping" in typed and "normalization_mode" not in typed:
        values["normalization_mode"] = None
    elif "normalization_mode" in typed and "normalization_mapping" not in typed:
        values["normalization_mapping"] = None
    return PolicyConfig(**values), notes


# The fields that decide the shapes of the weights: saved beside them as config.json's "model".
MODEL_FIELDS = tuple(name for name, rule in FOLDER_RULES.items() if rule in (FIXED, ADAPT) and name != "variant")


def model_config(cfg: PolicyConfig) -> dict:
    """The shape-only model config of `cfg` ({field: value} for MODEL_FIELDS)."""
    return {name: getattr(cfg, name) for name in MODEL_FIELDS}
