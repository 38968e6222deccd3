"""`pirecon plan [the flags of pirecon train] [--plan.gpu=H100 --plan.num_processes=N --plan.fsdp=true
--plan.mode=train|serve --plan.utilization=0.4]`: will this run fit, and how long will it take?

Every `pirecon train` flag is accepted and means what it means to `pirecon train` (a pretrained
folder's config.json is read, never its weights); `--plan.*` says what to plan for. It prints,
per process: weights, gradients, optimizer states, activations (with and without gradient
checkpointing, per camera view and per prompt token), temporary buffers and the peak; the FLOPs of a
training sample and of a `sample_actions` call; the time of an optimizer step at the stated
utilisation; whether it fits; and when it does not, the cheapest changes that make it fit, each with
its peak. `--plan.mode=serve` plans one `pirecon serve` request instead: memory and latency.

The counts come from the real model built on PyTorch's `meta` device and from one training step
over fake tensors (no data, no memory); the dataset is not read (a training batch holds every view
of --policy.camera_names and the prompt padded to its full length). GPU figures are predictions
until measured on the GPU: see docs/lora-and-memory.md for what the plan assumes.
"""

from __future__ import annotations

from pirecon.configs.parse import format_help, join_flag_values, parse_command, wants_help
from pirecon.configs.plan import PlanCommandConfig
from pirecon.errors import ConfigError
from pirecon.train.command import explain_preset, parse_train_command

PLAN_PREFIX = "--plan."


def split_plan_flags(argv: list[str]) -> tuple[list[str], list[str]]:
    """(the --plan.* flags, the others: pirecon train's, parsed by pirecon train's parser)."""
    joined = join_flag_values(argv)
    return ([a for a in joined if a.startswith(PLAN_PREFIX)],
            [a for a in joined if not a.startswith(PLAN_PREFIX)])


def run(argv: list[str]) -> int:
    if wants_help(argv):
        print(format_help("plan", __doc__, PlanCommandConfig), end="")
        return 0
    plan_argv, train_argv = split_plan_flags(argv)
    plan = parse_command(plan_argv, PlanCommandConfig).config.plan
    parsed = parse_train_command(train_argv)
    from pirecon.train.plan import make_plan  # lazy: torch and PEFT, not needed for --help
    from pirecon.train.plan_report import serve_report, train_report  # lazy: with make_plan
    try:
        planner, result, notes, cfg = make_plan(parsed.config, parsed.typed, plan, parsed.from_preset,
                                                parsed.from_file)
    except ConfigError as exc:  # as `pirecon train` says it: which flags a --preset set
        raise type(exc)(explain_preset(str(exc), parsed.config.preset, parsed.from_preset)) from None
    report = serve_report if plan.mode == "serve" else train_report
    print(report(planner, result, cfg, plan, notes))
    return 0
