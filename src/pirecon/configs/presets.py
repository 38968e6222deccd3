"""Named training presets: openpi's fine-tuning configs as pirecon flags (`pirecon train --preset=NAME`).

Each preset mirrors one `TrainConfig` of openpi's `src/openpi/training/config.py` and the model
config it builds (`src/openpi/models/pi0_config.py`, `gemma.py`, `pi0.py`); its `source` names the
config (the preset's docstring, printed by `pirecon presets NAME`). Every value is listed with the
openpi name it comes from, also where it equals pirecon's default, so the user sees the whole recipe.
An openpi setting pirecon lacks, or runs differently, is one of the preset's `notes`, never dropped
in silence and never claimed by a flag.

Precedence (`pirecon train`): typed flags > --preset > --config_path > the pretrained folder >
defaults. `--preset` is itself typed on the command line, so it outranks a file as every typed flag
does (a saved train_config.json holds every field: below it a preset would never take effect); a
`"preset"` key inside a --config_path file applies beneath that file's own values. Preset values win
over the pretrained folder as typed flags do, and a value the folder's weights cannot take (a model
size) is an error that names the preset.

This module is data and a lookup: `pirecon.train.command` applies a preset, `pirecon.presets` prints one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from pirecon.configs.parse import suggest
from pirecon.errors import ConfigError

CONFIG_PY = "src/openpi/training/config.py"


@dataclass(frozen=True)
class Value:
    """One flag of a preset."""

    flag: str  # pirecon's flag without the leading --, e.g. "policy.chunk_size"
    value: Any  # the value as the field holds it (None: none)
    what: str  # what it sets, in a few words
    source: str  # where openpi sets it, e.g. "Pi0Config.action_horizon"

    @property
    def text(self) -> str:
        return flag_text(self.value)

    @property
    def argument(self) -> str:
        return f"--{self.flag}={self.text}"


@dataclass(frozen=True)
class Preset:
    name: str  # openpi's config name
    summary: str  # one line for `pirecon presets`
    source: str  # the docstring: which openpi config (file and name) the values come from
    values: tuple[Value, ...]
    notes: tuple[str, ...]  # openpi settings pirecon lacks or runs differently

    def value(self, flag: str) -> Any:
        return next(v.value for v in self.values if v.flag == flag)

    def arguments(self) -> list[str]:
        return [v.argument for v in self.values]


def flag_text(value: Any) -> str:
    """A value as it is typed on the command line (`--flag=TEXT`)."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, dict):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(flag_text(v) for v in value) + "]"
    return repr(value) if isinstance(value, float) else str(value)


# ---------------------------------------------------------------------------------------------
# The parts openpi's configs share


def _policy(pi05: bool, horizon: int, horizon_source: str, replan: int, replan_source: str) -> tuple[Value, ...]:
    """Pi0Config's model values (pi0_config.py, pi0.py, model.py) and the data pipeline's model transforms."""
    return (
        Value("policy.type", "pi05" if pi05 else "pi0", "Pi0.5" if pi05 else "Pi0", f"Pi0Config.pi05={pi05}"),
        Value("policy.vision_variant", "siglip_so400m_14", "SigLIP So400m/14 vision tower", 'pi0.py: variant="So400m/14"'),
        Value("policy.paligemma_variant", "gemma_2b", "the VLM's Gemma size", "Pi0Config.paligemma_variant"),
        Value("policy.action_expert_variant", "gemma_300m", "the action expert's Gemma size",
              "Pi0Config.action_expert_variant"),
        Value("policy.chunk_size", horizon, "actions per predicted chunk (action horizon)", horizon_source),
        Value("policy.n_action_steps", replan, "actions executed per chunk at evaluation", replan_source),
        Value("policy.max_state_dim", 32, "state zero-padded to this width", "Pi0Config.action_dim (PadStatesAndActions)"),
        Value("policy.max_action_dim", 32, "actions zero-padded to this width", "Pi0Config.action_dim"),
        Value("policy.tokenizer_max_length", 200 if pi05 else 48, "prompt tokens after padding",
              f"Pi0Config.max_token_len ({200 if pi05 else 48} for {'pi05' if pi05 else 'pi0'})"),
        Value("policy.image_resolution", 224, "images resized with padding to this side",
              "ModelTransformFactory: ResizeImages(224, 224)"),
        Value("policy.camera_names", ["base_0_rgb", "left_wrist_0_rgb", "right_wrist_0_rgb"], "the model's views",
              "model.py: IMAGE_KEYS"),
        Value("policy.num_inference_steps", 10, "Euler steps of sample_actions", "Pi0.sample_actions(num_steps=10)"),
        Value("policy.time_beta_alpha", 1.5, "flow time t = Beta(1.5, 1) * 0.999 + 0.001",
              "Pi0.compute_loss: jax.random.beta(1.5, 1)"),
        Value("policy.time_beta_beta", 1.0, "flow time t = Beta(1.5, 1) * 0.999 + 0.001",
              "Pi0.compute_loss: jax.random.beta(1.5, 1)"),
        Value("policy.loss_reduction", "all", "loss averaged over every padded action dim and step",
              "Pi0.compute_loss mean over dims, train_step jnp.mean"),
        Value("policy.dtype", "bfloat16", "weights and compute in bfloat16 (trained weights: float32 masters)",
              "Pi0Config.dtype / TrainConfig.pytorch_training_precision"),
        Value("policy.gradient_checkpointing", True, "each layer's activations recomputed in the backward pass",
              "gemma.py: nn.remat(Block, policy=nothing_saveable); train_pytorch.py: gradient_checkpointing_enable()"),
        Value("policy.normalization_mode", "quantile" if pi05 else "mean_std",
              "state/action normalisation: q01/q99 to [-1, 1]" if pi05 else "state/action normalisation: mean/std",
              f"DataConfig.use_quantile_norm={pi05} (model_type != PI0)"),
    )


FULL_FINE_TUNE = (
    Value("policy.use_peft", False, "every weight trains (no LoRA)", "TrainConfig.freeze_filter=nnx.Nothing"),
    Value("policy.freeze_vision_encoder", False, "SigLIP and the projector train", "freeze_filter=nnx.Nothing"),
    Value("policy.train_expert_only", False, "the VLM trains too", "freeze_filter=nnx.Nothing"),
)

LORA_FINE_TUNE = (
    Value("policy.use_peft", True, "LoRA adapters, the base weights they adapt frozen",
          'Pi0Config(paligemma_variant="gemma_2b_lora", action_expert_variant="gemma_300m_lora")'),
    Value("peft.preset", "openpi", "LoRA on q/k/v/o and gate/up/down of both Gemma stacks; the rest of both "
          "stacks frozen", "Pi0Config.get_freeze_filter(): .*llm.* frozen except .*lora.*"),
    Value("peft.r", None, "rank 16 on the VLM, 32 on the action expert",
          "gemma.py: gemma_2b_lora / gemma_300m_lora LoRAConfig(rank=16 / 32)"),
    Value("peft.lora_alpha", None, "alpha = rank (scaling 1)", "LoRAConfig(alpha=16.0 / 32.0)"),
    Value("peft.lora_dropout", 0.0, "no dropout on the LoRA branch", "lora.py: LoRAConfig has no dropout"),
    Value("policy.freeze_vision_encoder", False, "SigLIP and the projector train in full",
          "get_freeze_filter() freezes only .*llm.*"),
    Value("policy.train_expert_only", False, "the VLM's adapters train too", "paligemma_variant=gemma_2b_lora"),
)


def _optimization(peak_lr: float = 2.5e-5, warmup: int = 1000, decay_steps: int = 30_000, decay_lr: float = 2.5e-6,
                  schedule: str = "CosineDecaySchedule() defaults", decay_source: str | None = None) -> tuple[Value, ...]:
    """openpi's AdamW (optimizer.py) and cosine schedule, through the policy's training preset."""
    return (
        Value("use_policy_training_preset", True, "the --policy.optimizer_* / scheduler_* values below run",
              "TrainConfig.optimizer=AdamW, lr_schedule=CosineDecaySchedule"),
        Value("policy.optimizer_lr", peak_lr, "AdamW peak learning rate", f"{schedule}: peak_lr"),
        Value("policy.optimizer_betas", [0.9, 0.95], "AdamW betas", "AdamW.b1, AdamW.b2"),
        Value("policy.optimizer_eps", 1e-8, "AdamW epsilon", "AdamW.eps"),
        Value("policy.optimizer_weight_decay", 1e-10, "AdamW weight decay (negligible)", "AdamW.weight_decay"),
        Value("policy.optimizer_grad_clip_norm", 1.0, "global gradient-norm clip", "AdamW.clip_gradient_norm"),
        Value("policy.scheduler_warmup_steps", warmup, "linear warm-up steps", f"{schedule}: warmup_steps"),
        Value("policy.scheduler_decay_steps", decay_steps, "the step where the cosine reaches decay_lr",
              decay_source or f"{schedule}: decay_steps"),
        Value("policy.scheduler_decay_lr", decay_lr, "learning rate at the end of the decay", f"{schedule}: decay_lr"),
    )


def _run(steps: int, batch_size: int, ema_decay: float | None, ema_source: str,
         steps_source: str = "TrainConfig.num_train_steps", batch_source: str = "TrainConfig.batch_size (default)",
         ) -> tuple[Value, ...]:
    return (
        Value("steps", steps, "optimizer steps", steps_source),
        Value("batch_size", batch_size, "samples per step (openpi's is global: see the notes)", batch_source),
        Value("ema_decay", ema_decay, "EMA of the weights" if ema_decay else "no EMA", ema_source),
        Value("seed", 42, "seed of weights, data order, noise and time", "TrainConfig.seed"),
        Value("num_workers", 2, "data loader workers", "TrainConfig.num_workers"),
        Value("log_freq", 100, "log every N steps", "TrainConfig.log_interval"),
        Value("save_freq", 1000, "checkpoint every N steps", "TrainConfig.save_interval"),
    )


AUGMENTATION = (
    Value("dataset.image_transforms.enable", True, "augment training images", "model.py: preprocess_observation(train=True)"),
    Value("dataset.image_transforms.recipe", "openpi", "crop 95 % + rotate 5 deg (not wrist views), colour jitter",
          "model.py: preprocess_observation augmax chain"),
)


def _data(camera_map: dict[str, str], camera_source: str, dataset_stats: bool, stats_source: str,
          asset_id: str | None = None) -> tuple[Value, ...]:
    values = (
        Value("dataset.camera_map", camera_map, "dataset camera -> model view (views left out are masked)", camera_source),
        Value("policy.use_dataset_stats", dataset_stats,
              "normalise with this dataset's statistics" if dataset_stats else "normalise with the folder's statistics",
              stats_source),
    )
    if asset_id is not None:
        values += (Value("policy.asset_id", asset_id, "the statistics of an openpi folder's assets/<asset_id>",
                         f'AssetsConfig(asset_id="{asset_id}")'),)
    return values + AUGMENTATION


COMMON_NOTES = (
    "batch size: openpi's batch_size is global, split over the devices; pirecon's --batch_size is per process "
    "(effective batch = batch_size x processes x --grad_accum_steps): under `accelerate launch --num_processes N` "
    "divide it by N.",
    "weights: openpi's weight_loader downloads the base checkpoint; pass --policy.pretrained_path=<a local folder of "
    "it> (and --policy.tokenizer_path=<paligemma_tokenizer.model>).",
    "learning-rate schedule: pirecon runs LeRobot's cosine_decay_with_warmup, whose cosine counts from step 0 "
    "(openpi's from the end of warm-up): over 30000 steps with warm-up 1000 the learning rate is up to 4.4 % lower "
    "mid-run than openpi's. When --steps < the decay steps pirecon (as LeRobot) shrinks warm-up and decay into the "
    "run; openpi does not.",
    "EMA: --ema_decay is the constant-decay EMA of openpi's JAX trainer (scripts/train.py); openpi's PyTorch trainer "
    "(scripts/train_pytorch.py) keeps none.",
    "data: pirecon reads LeRobot's column names (observation.state, action) and prompts with each frame's task "
    "(openpi: prompt_from_task=True).",
    "not set: openpi keeps its newest checkpoint and every 5000th (max_to_keep=1, keep_period=5000), pirecon the "
    "newest --keep_last_checkpoints; openpi logs to W&B by default (wandb_enabled=True), pirecon with "
    "--wandb.enable=true; openpi's pytorch_compile_mode compiles sample_actions, pirecon's --policy.compile_model "
    "the training forward.",
)

LIBERO_CAMERAS = {"image": "base_0_rgb", "wrist_image": "left_wrist_0_rgb"}
LIBERO_CAMERA_SOURCE = "LeRobotLiberoDataConfig repack + LiberoInputs (right_wrist_0_rgb masked)"
LIBERO_REPLAN = "examples/libero/main.py: replan_steps"
LIBERO_STATS = "scripts/compute_norm_stats.py over the dataset (assets/<config>/physical-intelligence/libero)"
LIBERO_NOTES = (
    "dataset: openpi trains on physical-intelligence/libero (columns image, wrist_image, state, actions); pirecon "
    "needs LeRobot's names. The camera map names openpi's cameras (observation.images.image / .wrist_image); "
    "LeRobot's HuggingFaceVLA/libero calls the wrist camera image2: type "
    "--dataset.camera_map='{\"image\": \"base_0_rgb\", \"image2\": \"left_wrist_0_rgb\"}' there.",
)
PI0_LIBERO_DELTA = (
    "not in pirecon: openpi's pi0 LIBERO configs set extra_delta_transform=True (the first 6 action dims made "
    "relative to the state, kept for its old Pi0 checkpoints); pirecon learns the actions as the dataset stores "
    "them (LIBERO's are already deltas), as openpi's pi05_libero does.",
)

DROID_CAMERAS = {"exterior_image_1_left": "base_0_rgb", "wrist_image_left": "left_wrist_0_rgb"}
DROID_REPLAN = "examples/droid/main.py: open_loop_horizon"
DROID_NOTES = (
    "DROID data: DroidInputs builds the 8-d state from joint_position (7) and gripper_position (1), and reads "
    "exterior_image_1_left and wrist_image_left (exterior_image_2_left is not used); openpi's "
    "convert_droid_data_to_lerobot.py writes them as separate columns and `actions`. pirecon reads "
    "observation.state and action: store the joined state and the actions under those names.",
    "statistics: --policy.asset_id picks assets/droid/norm_stats.json of an openpi folder; a pirecon or LeRobot "
    "folder holds one set of statistics, which is used.",
)

ALOHA_NOTES = (
    "not in pirecon: openpi's ALOHA configs convert state and actions into the joint space pi's base models were "
    "trained in (AlohaInputs adapt_to_pi=True: joints 1, 2, 8, 9 flipped, grippers mapped to angles); pirecon "
    "learns them in the dataset's units.",
    "not in pirecon: default_prompt=\"Transfer cube\" (the prompt when a sample has none); pirecon prompts with "
    "the dataset's task texts.",
    "use_delta_joint_actions=False: absolute joint actions, as pirecon learns them. AlohaInputs feeds "
    "cam_left_wrist / cam_right_wrist to the wrist views when the dataset has them (aloha_sim has one camera).",
)


# ---------------------------------------------------------------------------------------------
# The presets

PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset(
        name="pi0_libero",
        summary="Pi0 full fine-tune on LIBERO",
        source=f'{CONFIG_PY}: TrainConfig(name="pi0_libero"), model Pi0Config() (src/openpi/models/pi0_config.py), '
               f'data LeRobotLiberoDataConfig(extra_delta_transform=True), weights pi0_base',
        values=(*_policy(False, 50, "Pi0Config.action_horizon (default 50)", 5, LIBERO_REPLAN), *FULL_FINE_TUNE,
                *_data(LIBERO_CAMERAS, LIBERO_CAMERA_SOURCE, True, LIBERO_STATS),
                *_optimization(), *_run(30_000, 32, 0.99, "TrainConfig.ema_decay (default 0.99)")),
        notes=(*PI0_LIBERO_DELTA, *LIBERO_NOTES, *COMMON_NOTES),
    ),
    Preset(
        name="pi0_libero_low_mem_finetune",
        summary="Pi0 LoRA fine-tune on LIBERO (openpi's low-memory config)",
        source=f'{CONFIG_PY}: TrainConfig(name="pi0_libero_low_mem_finetune"), model Pi0Config(paligemma_variant='
               f'"gemma_2b_lora", action_expert_variant="gemma_300m_lora") (src/openpi/models/pi0_config.py, '
               f'gemma.py), freeze_filter=get_freeze_filter(), ema_decay=None, weights pi0_base',
        values=(*_policy(False, 50, "Pi0Config.action_horizon (default 50)", 5, LIBERO_REPLAN), *LORA_FINE_TUNE,
                *_data(LIBERO_CAMERAS, LIBERO_CAMERA_SOURCE, True, LIBERO_STATS),
                *_optimization(), *_run(30_000, 32, None, "TrainConfig.ema_decay=None (EMA off for LoRA)")),
        notes=(
            "LoRA structure: openpi adapts the attention einsums per head (one rank-r pair per query head and "
            "for the output per head; k and v one each) and starts both LoRA matrices from normal(0, 0.01); "
            "pirecon adapts each projection (q/k/v/o, gate/up/down) as one linear layer of rank r with PEFT's "
            "initialisation (B = 0, so training starts from the base model).",
            *PI0_LIBERO_DELTA, *LIBERO_NOTES, *COMMON_NOTES),
    ),
    Preset(
        name="pi05_libero",
        summary="Pi0.5 full fine-tune on LIBERO",
        source=f'{CONFIG_PY}: TrainConfig(name="pi05_libero"), model Pi0Config(pi05=True, action_horizon=10, '
               f'discrete_state_input=False) (src/openpi/models/pi0_config.py), CosineDecaySchedule(warmup_steps='
               f'10_000, peak_lr=5e-5, decay_steps=1_000_000, decay_lr=5e-5), AdamW(clip_gradient_norm=1.0), '
               f'batch_size=256, ema_decay=0.999, weights pi05_base',
        values=(*_policy(True, 10, "Pi0Config(action_horizon=10)", 5, LIBERO_REPLAN), *FULL_FINE_TUNE,
                *_data(LIBERO_CAMERAS, LIBERO_CAMERA_SOURCE, True, LIBERO_STATS),
                *_optimization(5e-5, 10_000, 30_000, 5e-5, "CosineDecaySchedule(...)",
                               "CosineDecaySchedule(decay_steps=1_000_000), flat after warm-up: see the notes"),
                *_run(30_000, 256, 0.999, "TrainConfig(ema_decay=0.999)", batch_source="TrainConfig(batch_size=256)")),
        notes=(
            "not in pirecon: discrete_state_input=False (openpi's pi05_libero feeds no state to the model); "
            "pirecon's Pi0.5 always writes the state into the prompt, as Pi0.5's default (and LeRobot's) does.",
            "decay steps: openpi's decay_steps=1_000_000 with decay_lr = peak_lr keeps the rate flat at 5e-5 after "
            "warm-up. Given 1_000_000, pirecon would shrink the 10000-step warm-up to 300 in a 30000-step run; "
            "30000 gives openpi's learning rate at every step (for --steps >= 30000; fewer steps shrink warm-up "
            "in proportion).",
            *LIBERO_NOTES, *COMMON_NOTES),
    ),
    Preset(
        name="pi05_droid",
        summary="Pi0.5 on DROID as openpi serves pi05_droid (its training values are TrainConfig's defaults)",
        source=f'{CONFIG_PY}: TrainConfig(name="pi05_droid"), model Pi0Config(action_horizon=15, pi05=True) '
               f'(src/openpi/models/pi0_config.py), data SimpleDataConfig(AssetsConfig(asset_id="droid"), DroidInputs, '
               f'prompt_from_task=True); TrainConfig defaults otherwise',
        values=(*_policy(True, 15, "Pi0Config(action_horizon=15)", 8, DROID_REPLAN), *FULL_FINE_TUNE,
                *_data(DROID_CAMERAS, "DroidInputs (right_wrist_0_rgb masked)", False,
                       "the checkpoint's assets/droid statistics", asset_id="droid"),
                *_optimization(), *_run(30_000, 32, 0.99, "TrainConfig.ema_decay (default 0.99)")),
        notes=(
            "openpi uses pi05_droid to serve its pi05_droid checkpoint; it names no weights to start from "
            "(weight_loader default), so its training values are TrainConfig's defaults. To fine-tune on your own "
            "DROID data openpi uses pi05_droid_finetune.",
            *DROID_NOTES, *COMMON_NOTES),
    ),
    Preset(
        name="pi05_droid_finetune",
        summary="Pi0.5 full fine-tune of pi05_droid on your own DROID data",
        source=f'{CONFIG_PY}: TrainConfig(name="pi05_droid_finetune"), model Pi0Config(pi05=True, action_dim=32, '
               f'action_horizon=16) (src/openpi/models/pi0_config.py), data LeRobotDROIDDataConfig(assets pi05_droid '
               f'checkpoint, asset_id="droid"), num_train_steps=20_000, batch_size=32, weights pi05_droid',
        values=(*_policy(True, 16, "Pi0Config(action_horizon=16)", 8, DROID_REPLAN), *FULL_FINE_TUNE,
                *_data(DROID_CAMERAS, "LeRobotDROIDDataConfig repack + DroidInputs (right_wrist_0_rgb masked)", False,
                       "AssetsConfig: the pi05_droid checkpoint's statistics", asset_id="droid"),
                *_optimization(), *_run(20_000, 32, 0.99, "TrainConfig.ema_decay (default 0.99)",
                                        "TrainConfig(num_train_steps=20_000)", "TrainConfig(batch_size=32)")),
        notes=(
            "schedule: openpi's 20000-step run stops part-way down its 30000-step cosine (at lr 8.5e-6); pirecon "
            "shrinks warm-up to 666 steps and decays to 2.5e-6 at step 20000.",
            *DROID_NOTES, *COMMON_NOTES),
    ),
    Preset(
        name="pi0_aloha_sim",
        summary="Pi0 full fine-tune on the ALOHA sim transfer-cube demonstrations",
        source=f'{CONFIG_PY}: TrainConfig(name="pi0_aloha_sim"), model Pi0Config() (src/openpi/models/pi0_config.py), '
               f'data LeRobotAlohaDataConfig(repo_id="lerobot/aloha_sim_transfer_cube_human", default_prompt="Transfer '
               f'cube", use_delta_joint_actions=False), num_train_steps=20_000, weights pi0_base',
        values=(*_policy(False, 50, "Pi0Config.action_horizon (default 50)", 10,
                         "examples/aloha_sim/main.py: action_horizon"), *FULL_FINE_TUNE,
                *_data({"observation.images.top": "base_0_rgb"}, "LeRobotAlohaDataConfig repack (cam_high) + AlohaInputs",
                       True, "scripts/compute_norm_stats.py over the dataset"),
                *_optimization(), *_run(20_000, 32, 0.99, "TrainConfig.ema_decay (default 0.99)",
                                        "TrainConfig(num_train_steps=20_000)")),
        notes=(
            "schedule: openpi's 20000-step run stops part-way down its 30000-step cosine (at lr 8.5e-6); pirecon "
            "shrinks warm-up to 666 steps and decays to 2.5e-6 at step 20000.",
            *ALOHA_NOTES, *COMMON_NOTES),
    ),
)}

# A typed flag that sets the same thing as a preset flag (another spelling) replaces it.
SUPERSEDED_BY = {
    "dataset.camera_map": ("rename_map",),
    "policy.normalization_mode": ("policy.normalization_mapping",),
    "policy.vision_variant": ("policy.variant",),
    "policy.paligemma_variant": ("policy.variant",),
    "policy.action_expert_variant": ("policy.variant",),
}


def get_preset(name: str, flag: str = "--preset") -> Preset:
    """The preset called `name`; an unknown name is one error listing the close matches."""
    if name not in PRESETS:
        hint = suggest(name, PRESETS) or f"; expected one of {list(PRESETS)}"
        raise ConfigError(f"{flag}={name}: no such preset{hint} (`pirecon presets` lists them)")
    return PRESETS[name]


def preset_arguments(preset: Preset, typed: set[str] | frozenset[str]) -> list[Value]:
    """The preset's values that apply beneath the `typed` flag names (dotted): those not typed
    themselves nor under another spelling (SUPERSEDED_BY)."""
    return [v for v in preset.values
            if v.flag not in typed and not any(other in typed for other in SUPERSEDED_BY.get(v.flag, ()))]


def nested(values: list[Value] | tuple[Value, ...]) -> dict:
    """{"policy": {"chunk_size": 10}, ...} of the values, as a config file holds them."""
    out: dict = {}
    for v in values:
        node = out
        *parents, last = v.flag.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = list(v.value) if isinstance(v.value, tuple) else v.value
    return out


def preset_markdown(name: str) -> str:
    """A preset as docs show it: a table of its values, then its notes (docs/finetune-libero.md)."""
    preset = get_preset(name)
    lines = ["| flag | value | what it sets | openpi |", "| --- | --- | --- | --- |"]
    lines += [f"| `--{v.flag}` | `{v.text}` | {v.what} | `{v.source}` |" for v in preset.values]
    lines += ["", f"Where pirecon differs from openpi's `{name}` (`pirecon presets {name}` prints the same notes):", ""]
    lines += [f"- {note}" for note in preset.notes]
    return "\n".join(lines) + "\n"


def beneath_file_values(data: dict, where: str) -> dict:
    """A --config_path file's values over the preset its "preset" key names (none: as they are)."""
    name = data.get("preset")
    if not isinstance(name, str):
        return data
    preset = get_preset(name, flag=f"{where}: preset")
    given = {v.flag for v in preset.values if _holds(data, v.flag)}
    given |= {other for others in SUPERSEDED_BY.values() for other in others if _holds(data, other)}
    out = nested(preset_arguments(preset, given))
    _merge(out, data)
    return out


def _holds(data: dict, dotted: str) -> bool:
    for part in dotted.split("."):
        if not isinstance(data, dict) or part not in data:
            return False
        data = data[part]
    return True


def _merge(into: dict, data: dict) -> None:
    """`data` over `into` (groups merged; the preset holds no value the file gives, so no value dict is)."""
    for key, value in data.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


@dataclass(frozen=True)
class PresetsConfig:
    """`pirecon presets [NAME]`: the training presets (openpi's configs as pirecon flags)."""

    name: str | None = None  # the preset to print as flags (also `pirecon presets NAME`); none: list them all

    def __post_init__(self) -> None:
        if self.name is not None:
            get_preset(self.name, flag="--name")
