"""The start-up summary of `pirecon train`: one block saying what was loaded from where, what
trains, in which precision, on which device, with which batch. The full resolved configuration
goes to `OUT/train_config.json`, not to the terminal."""

from __future__ import annotations

from collections import defaultdict

import torch
from torch import nn

from pirecon.configs.presets import flag_text, get_preset
from pirecon.configs.train import PRESET_FLAGS, TrainConfig
from pirecon.train.schedule import scaled_steps

# Parts of a Pi0Policy as the summary names them (first matching prefix wins).
PARTS = (("backbone.vision.", "vision"), ("backbone.projector.", "projector"), ("backbone.vlm.", "vlm"),
         ("backbone.expert.", "expert"), ("recon_head.", "recon head"))
DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


def part_of(name: str) -> str:
    name = name.split("base_model.model.", 1)[-1]
    for prefix, part in PARTS:
        if name.startswith(prefix):
            return part
    return "heads"


def parameter_table(model: nn.Module) -> dict[str, dict[str, int]]:
    """{part: {"trainable": n, "frozen": n, "<dtype> trainable|frozen": n}} of `model`'s parameters
    (LoRA weights count under the part they adapt)."""
    table: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for name, param in model.named_parameters():
        row = table[part_of(name)]
        kind = "trainable" if param.requires_grad else "frozen"
        row[kind] += param.numel()
        row[f"{DTYPE_NAMES.get(param.dtype, str(param.dtype))} {kind}"] += param.numel()
    return table


# A preset's --policy.optimizer_* / scheduler_* values run as these fields of the resolved optimizer and scheduler.
RUNS_AS = {f"policy.{ours}": theirs for theirs, ours in PRESET_FLAGS.items() if theirs != "scheduler.peak_lr"}


def running_value(cfg: TrainConfig, flag: str):
    """The value a resolved run uses for a preset's `flag`."""
    node = cfg
    for part in RUNS_AS.get(flag, flag).split("."):
        node = getattr(node, part)
    return node


def _plain(value):
    return [_plain(v) for v in value] if isinstance(value, (list, tuple)) else value


def preset_overrides(cfg: TrainConfig) -> list[tuple[str, object, object]]:
    """(flag, the preset's value, the value the run uses) of every preset value the run does not use."""
    preset = get_preset(cfg.preset)
    return [(v.flag, v.value, running_value(cfg, v.flag)) for v in preset.values
            if _plain(running_value(cfg, v.flag)) != _plain(v.value)]


def preset_lines(cfg: TrainConfig) -> list[str]:
    if cfg.preset is None:
        return []
    overrides = preset_overrides(cfg)
    count = len(get_preset(cfg.preset).values)
    lines = [f"  preset      {cfg.preset}: openpi's {cfg.preset} config, {count} values, {len(overrides)} overridden by "
             f"typed flags; where it differs from openpi: `pirecon presets {cfg.preset}`"]
    lines += [f"  overridden  {flag}: preset {flag_text(mine)}, running {flag_text(running)}"
              for flag, mine, running in overrides]
    return lines


def _count(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)


def summary_block(cfg: TrainConfig, model: nn.Module, *, weights_from: str, adapted: list[str], tokenizer: str,
                  dataset: str, device: str, processes: int, autocast: str | None, resumed_from: str | None,
                  peft_note: str | None, peft: str | None = None, evaluation: str | None = None,
                  sharding: str | None = None) -> str:
    """The text block printed once at start-up by the main process."""
    policy = cfg.policy
    table = parameter_table(model)
    trainable = sum(row["trainable"] for row in table.values())
    total = sum(row["trainable"] + row["frozen"] for row in table.values())
    sizes = f"{policy.vision_variant} / {policy.paligemma_variant} / {policy.action_expert_variant}"
    lines = [
        "pirecon train",
        f"  policy      {policy.type} ({sizes}), chunk {policy.chunk_size}, {policy.image_resolution}px, "
        f"views {list(policy.camera_names)}",
        f"  weights     {weights_from}" + (f"; resumed from {resumed_from}" if resumed_from else ""),
    ]
    lines += preset_lines(cfg)
    lines += [f"  adapted     {note}" for note in adapted]
    lines += [f"  tokenizer   {tokenizer}", f"  dataset     {dataset}"]
    if peft:
        lines.append(f"  training    {peft}")
    else:
        lines.append("  training    every weight (no LoRA)")
    if peft_note:
        lines.append(f"  note        {peft_note}")
    lines.append(f"  parameters  {_count(trainable)} trainable of {_count(total)} ({100 * trainable / max(total, 1):.1f} %)")
    for part, row in sorted(table.items(), key=lambda kv: [p for _, p in PARTS].index(kv[0])
                            if kv[0] in [p for _, p in PARTS] else len(PARTS)):
        kinds = ", ".join(f"{_count(n)} {k}" for k, n in sorted(row.items()) if " " in k)
        lines.append(f"    {part:<11} {kinds}")
    lines.append(f"  precision   policy.dtype={policy.dtype}, autocast {autocast or 'off'}")
    if policy.full_bf16:
        lines.append("  note        --policy.full_bf16=true: trained weights and optimizer state in bfloat16, no float32 "
                     "master copies; an update smaller than bfloat16's step (0.2-0.4 % of the weight) rounds away, so the loss "
                     "may end higher than with float32 masters (openpi notes the same)")
    if cfg.wandb.enable and not cfg.wandb.disable_artifact:
        lines.append("  note        W&B gets the logs, not the checkpoints (LeRobot uploads them as artifacts unless "
                     "--wandb.disable_artifact=true)")
    if policy.use_amp:
        lines.append("  note        --policy.use_amp=true is not used by training (as in LeRobot): --policy.dtype decides")
    lines.append(f"  device      {device} x {processes} process(es)")
    if sharding:
        lines.append(f"  sharding    {sharding}")
    lines.append(f"  batch       {cfg.batch_size} per process x {processes} process(es) x {cfg.grad_accum_steps} "
                 f"accumulation step(s) = {cfg.batch_size * processes * cfg.grad_accum_steps} samples per step")
    opt, sched = cfg.optimizer, cfg.scheduler
    warmup, decay, scaled = scaled_steps(sched, cfg.steps)
    source = "the policy's preset" if cfg.use_policy_training_preset else "--optimizer.* / --scheduler.*"
    lines.append(f"  optimizer   {opt.type}, lr {opt.lr:g}, betas {tuple(opt.betas)}, weight decay {opt.weight_decay:g}, "
                 f"clip {opt.grad_clip_norm:g} ({source})")
    lines.append(f"  schedule    {cfg.steps} steps, warm-up {warmup}, cosine to {sched.decay_lr:g} at step {decay}"
                 + (f", EMA {cfg.ema_decay}" if cfg.ema_decay else ""))
    if scaled:
        lines.append(f"  note        {scaled}")
    if evaluation:
        lines.append(f"  evaluation  {evaluation}")
    if policy.rtc_training_max_delay:
        lines.append(f"  rtc         training-time real-time chunking: per example a delay d in 0..{policy.rtc_training_max_delay}, "
                     f"the first d actions given clean and left out of the loss (run it with --policy.rtc_mode=trained)")
    if cfg.recon.enable:
        lines.append(f"  recon       λ={cfg.recon.weight} on {list(cfg.recon.views)}, target {cfg.recon.target}, "
                     f"region {cfg.recon.region}")
    lines.append(f"  output      {cfg.output_dir}, run {cfg.job_name} (full config: train_config.json)"
                 + ("; no checkpoints (--save_checkpoint=false)" if not cfg.save_checkpoint else ""))
    return "\n".join(lines)
