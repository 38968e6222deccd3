"""FSDP2 through `accelerate launch`: the plugin pirecon asks for, and the collective state-dict
calls a sharded run needs around its checkpoints.

`accelerate launch --config_file fsdp.yaml -m pirecon train ...` (a config with
`distributed_type: FSDP` and `fsdp_version: 2`) makes accelerate shard the model with torch's
`fully_shard`: one unit per Gemma decoder layer and SigLIP encoder layer (the default wrapping;
`fsdp_transformer_layer_cls_to_wrap` may name a subset), the rest in the root unit. The frozen
weights keep their dtype (bfloat16 base) and the trained ones their float32 master copies: FSDP2
gathers each weight in its own dtype (`MixedPrecisionPolicy()` without a `param_dtype`), and the
forward runs under accelerate's autocast as without FSDP, so the numbers are those of DDP.

accelerate (1.15) turns FSDP on only for accelerator devices: on CPU processes (gloo) it silently
wraps the model in DDP instead. `engage_on_cpu` sets accelerate's state as it does for GPUs, so
the same configuration shards on CPU too (how the tests run it).
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from pirecon.checkpoint import sharded as dcp_files
from pirecon.checkpoint.layout import DCP_EMA_DIR, DCP_OPTIMIZER_DIR, EMA_FILE, read_safetensors
from pirecon.errors import ConfigError

# The modules whose `forward` runs each layer's computation: the FSDP units (see GemmaLayer.forward).
WRAP_CLASSES = ("GemmaLayer", "SiglipLayer")


def check_launcher_precision(autocast: torch.dtype | None, dtype: str) -> None:
    """pirecon decides the precision from --policy.dtype; a launcher setting `mixed_precision`
    (accelerate config or --mixed_precision) that says otherwise is an error, not dropped."""
    given = os.environ.get("ACCELERATE_MIXED_PRECISION", "no").lower()
    ours = "bf16" if autocast == torch.bfloat16 else "no"
    if given not in ("no", ours):
        raise ConfigError(f"the accelerate launcher sets mixed_precision: {given} (config file or --mixed_precision) "
                          f"but --policy.dtype={dtype} means mixed precision {ours!r}: pirecon's precision follows "
                          f"--policy.dtype (bfloat16: frozen weights in bfloat16, trained ones in float32, bfloat16 "
                          f"autocast); set mixed_precision: 'no' in the accelerate config")


def requested() -> bool:
    """The launcher asked for FSDP (accelerate's `distributed_type: FSDP` / `--use_fsdp`)."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def make_plugin():
    """accelerate's FSDP plugin from the launcher's settings (its FSDP_* variables), checked and
    completed: FSDP2, pirecon's layers as units unless the config names some, no cast of the
    weights to one dtype. A setting pirecon cannot honour is a ConfigError naming its config key."""
    from accelerate.utils import FullyShardedDataParallelPlugin  # lazy: sharded runs only
    from torch.distributed.fsdp import MixedPrecisionPolicy  # lazy: sharded runs only

    version = os.environ.get("FSDP_VERSION", "1")
    if version != "2":
        raise ConfigError(f"the accelerate config sets fsdp_version: {version}; pirecon trains with FSDP2 "
                          f"(torch's fully_shard, which keeps frozen bfloat16 and trained float32 weights side by "
                          f"side): set fsdp_version: 2")
    if os.environ.get("FSDP_ACTIVATION_CHECKPOINTING", "false").lower() == "true":
        raise ConfigError("the accelerate config sets fsdp_activation_checkpointing: true; pirecon checkpoints "
                          "each Gemma and SigLIP layer itself: set it to false and pass "
                          "--policy.gradient_checkpointing=true")
    policy = os.environ.get("FSDP_AUTO_WRAP_POLICY", "TRANSFORMER_BASED_WRAP").upper()
    if policy == "SIZE_BASED_WRAP":
        raise ConfigError("the accelerate config sets fsdp_auto_wrap_policy: SIZE_BASED_WRAP; pirecon's FSDP "
                          f"units are its layers ({', '.join(WRAP_CLASSES)}): use TRANSFORMER_BASED_WRAP (or "
                          f"NO_WRAP: one unit, the whole model)")
    names = None
    if policy == "TRANSFORMER_BASED_WRAP":
        given = os.environ.get("FSDP_TRANSFORMER_CLS_TO_WRAP")
        names = [n.strip() for n in given.split(",") if n.strip()] if given else list(WRAP_CLASSES)
        unknown = [n for n in names if n not in WRAP_CLASSES]
        if unknown:
            raise ConfigError(f"the accelerate config sets fsdp_transformer_layer_cls_to_wrap: {given}; "
                              f"{', '.join(unknown)} cannot be an FSDP unit of a pirecon model: expected some "
                              f"of {', '.join(WRAP_CLASSES)} (or leave it out: both)")
    # The layer's K/V come back as views; nothing modifies them in place (the warning's concern).
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module \(FSDPGemmaLayer\) returned a view tensor")
    return FullyShardedDataParallelPlugin(
        fsdp_version=2, auto_wrap_policy=policy, transformer_cls_names_to_wrap=names,
        mixed_precision_policy=MixedPrecisionPolicy())


def engage_on_cpu(accelerator, plugin) -> bool:
    """On CPU processes accelerate chose DDP although FSDP was asked for: set its state as it does
    on GPUs (distributed type FSDP with this plugin). Returns whether the run is sharded."""
    from accelerate.utils import DistributedType  # lazy: sharded runs only

    state = accelerator.state
    if state.distributed_type == DistributedType.MULTI_CPU:
        state.distributed_type = DistributedType.FSDP
        state.fsdp_plugin = plugin
    return state.distributed_type == DistributedType.FSDP


def describe(plugin, cfg) -> str:
    """The summary's line: how the model is sharded and how checkpoints are written."""
    names = plugin.transformer_cls_names_to_wrap if plugin.auto_wrap_policy is not None else None
    units = f"one unit per {' / '.join(names)}, the rest in the root unit" if names else "one unit (NO_WRAP)"
    written = {"safetensors": "gathered on the main process (safetensors)",
               "dcp": "sharded (torch.distributed.checkpoint)",
               "safetensors_dcp": "sharded, and the weights also gathered (safetensors)"}[cfg.checkpoint_format]
    return (f"FSDP2 (fully_shard), {units}, reshard after forward {plugin.reshard_after_forward}; checkpoints "
            f"{written}")


# accelerate's fsdp_state_dict_type -> the --checkpoint_format values that agree with it
STATE_DICT_TYPES = {"SHARDED_STATE_DICT": ("dcp", "safetensors_dcp"), "FULL_STATE_DICT": ("safetensors",)}


def check_sharded_run(cfg, sharded: bool, typed: frozenset[str]):
    """`cfg` as this run can honour it. A sharded run: the accelerate config's fsdp_state_dict_type
    chooses --checkpoint_format unless the flag is typed (then they must agree), and evaluation
    during training is an error. Without sharding a typed --checkpoint_format other than
    safetensors is an error; one a resumed run inherited falls back to safetensors (every format
    resumes into every other)."""
    if not sharded:
        if cfg.checkpoint_format != "safetensors" and "checkpoint_format" in typed:
            raise ConfigError(f"--checkpoint_format={cfg.checkpoint_format} needs a sharded run (accelerate launch "
                              f"with an FSDP config and several processes); other runs write safetensors")
        return dataclasses.replace(cfg, checkpoint_format="safetensors")
    given = os.environ.get("FSDP_STATE_DICT_TYPE")
    if given:
        agree = STATE_DICT_TYPES.get(given.upper())
        if agree is None:
            raise ConfigError(f"the accelerate config sets fsdp_state_dict_type: {given}; expected one of "
                              f"{list(STATE_DICT_TYPES)} (or leave it out and pass --checkpoint_format)")
        if "checkpoint_format" not in typed:
            cfg = dataclasses.replace(cfg, checkpoint_format=agree[0])
        elif cfg.checkpoint_format not in agree:
            raise ConfigError(f"--checkpoint_format={cfg.checkpoint_format} but the accelerate config sets "
                              f"fsdp_state_dict_type: {given} (--checkpoint_format={' or '.join(agree)}); give one")
    if cfg.policy.full_bf16:
        raise ConfigError("--policy.full_bf16=true under FSDP: accelerate's FSDP2 keeps float32 master copies of the "
                          "trained weights (it would turn them back to float32); drop the flag (FSDP spreads the "
                          "master copies over the processes) or train without an FSDP config")
    if cfg.env.type and cfg.env_eval_freq > 0:
        raise ConfigError(f"--env.type={cfg.env.type} with --env_eval_freq={cfg.env_eval_freq}: evaluation during "
                          f"training runs in the main process, and under FSDP the weights are spread over all of "
                          f"them; pass --env_eval_freq=0 and evaluate the checkpoints with `pirecon eval`")
    return cfg


def plain(tensor: torch.Tensor) -> torch.Tensor:
    """A DTensor (under FSDP the gradient norm is a replicated one) as an ordinary tensor; other
    tensors as they are."""
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


def trainable_names(model: nn.Module) -> list[str]:
    """The trained parameters' names, in the optimizer's order (it is built over them in this order)."""
    return [name for name, p in model.named_parameters() if p.requires_grad]


# -- saving (collective: every rank calls these together) ------------------------------------------
def full_weights(model: nn.Module) -> dict:
    """The whole model state dict, gathered to the main process on the CPU (others get {})."""
    from torch.distributed.checkpoint import state_dict as sd  # lazy: seconds to import

    return sd.get_model_state_dict(model, options=sd.StateDictOptions(full_state_dict=True, cpu_offload=True))


def full_optimizer(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """The optimizer state gathered to the main process (others get {}), keyed as
    `optimizer.state_dict()` of an unsharded run: by parameter index in `trainable_names` order."""
    from torch.distributed.checkpoint import state_dict as sd  # lazy: seconds to import

    options = sd.StateDictOptions(full_state_dict=True, cpu_offload=True)
    state = sd.get_optimizer_state_dict(model, optimizer, options=options)
    return by_index(state, trainable_names(model)) if state else {}


def full_ema(ema) -> dict[str, torch.Tensor]:
    """The EMA weights, whole (every rank gets them; the main process writes them)."""
    from torch.distributed.tensor import DTensor  # lazy: sharded runs only

    return {k: (v.full_tensor() if isinstance(v, DTensor) else v).cpu() for k, v in ema.shadow.items()}


def sharded_weights(model: nn.Module, trained_only: bool) -> dict:
    """{"model": this rank's shards of the weights}; `trained_only`: a LoRA run's adapters and
    weights trained in full (its frozen base stays where it came from)."""
    from torch.distributed.checkpoint import state_dict as sd  # lazy: seconds to import

    options = sd.StateDictOptions(ignore_frozen_params=trained_only)
    return {"model": sd.get_model_state_dict(model, options=options)}


def sharded_optimizer(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """{"optimizer": this rank's shards of the optimizer state, keyed by parameter names}."""
    from torch.distributed.checkpoint import state_dict as sd  # lazy: seconds to import

    return {"optimizer": sd.get_optimizer_state_dict(model, optimizer)}


# -- resuming -----------------------------------------------------------------------------------
def restore_optimizer(model: nn.Module, optimizer: torch.optim.Optimizer, training_state: dict, folder: Path,
                      sharded: bool) -> None:
    """The optimizer state of checkpoint `folder` into `optimizer`, whichever way either is held:
    gathered (`training_state["optimizer"]`) or sharded (optimizer_0/), into an unsharded or a
    sharded (`sharded`, collective) model, of any number of processes."""
    from torch.distributed.checkpoint import state_dict as sd  # lazy: seconds to import

    if "optimizer" in training_state:
        if not sharded:
            optimizer.load_state_dict(training_state["optimizer"])
            return
        state = by_name(training_state["optimizer"], trainable_names(model))
        options = sd.StateDictOptions(full_state_dict=True)
    else:
        state, options = sharded_optimizer(model, optimizer), None
        dcp_files.load(state, Path(folder) / DCP_OPTIMIZER_DIR, distributed=sharded)
        state = state["optimizer"]
    sd.set_optimizer_state_dict(model, optimizer, state, options=options)


def restore_ema(ema, folder: Path, sharded: bool) -> None:
    """The EMA of checkpoint `folder` (ema.safetensors or ema_0/) into `ema`, whose shadow weights
    are shards of the model's when `sharded` (collective)."""
    from torch.distributed.tensor import DTensor, distribute_tensor  # lazy: sharded runs only

    if (Path(folder) / EMA_FILE).is_file():
        state = read_safetensors(Path(folder) / EMA_FILE)
        for name, mine in ema.shadow.items():
            if isinstance(mine, DTensor) and name in state:  # this rank's slice of the whole tensor
                state[name] = distribute_tensor(state[name].to(mine.device), mine.device_mesh, mine.placements,
                                                src_data_rank=None)
        ema.load_state_dict(state)
    else:
        dcp_files.load({"ema": ema.shadow}, Path(folder) / DCP_EMA_DIR, distributed=sharded)


def by_index(state: dict, names: list[str]) -> dict:
    """An optimizer state keyed by parameter names (torch.distributed.checkpoint's) -> by indices."""
    index = {name: i for i, name in enumerate(names)}
    return {"state": {index[name]: value for name, value in state["state"].items()},
            "param_groups": [{**group, "params": [index[name] for name in group["params"]]}
                             for group in state["param_groups"]]}


def by_name(state: dict, names: list[str]) -> dict:
    """`optimizer.state_dict()` (parameter indices) -> keyed by parameter names."""
    return {"state": {names[i]: value for i, value in state["state"].items()},
            "param_groups": [{**group, "params": [names[i] for i in group["params"]]}
                             for group in state["param_groups"]]}
