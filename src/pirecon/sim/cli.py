"""`pirecon sim <record|eval|preview> [--flags]`: the built-in simulator on the command line.

    pirecon sim record --episodes=50 --output=data/sim [--seed=0] [--image_size=96] [--version=v3.0]
                       [--num_blocks=3] [--action_noise=0] [--drift=0]
    pirecon sim eval --episodes=50 [--policy=expert|random]
    pirecon sim preview --output=sim.png [--seed=0]

Flags may be written `--name=value` or `--name value`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from pirecon.configs.parse import format_help, parse_flags
from pirecon.configs.sim import PreviewFlags, RecordFlags, SimEvalFlags
from pirecon.errors import ConfigError


SUBCOMMANDS = {"record": RecordFlags, "eval": SimEvalFlags, "preview": PreviewFlags}


def usage() -> str:
    lines = ["usage: pirecon sim <subcommand> [--flag=value ...]", "", "subcommands:"]
    lines += [f"  {name:<8} {cls.__doc__}" for name, cls in SUBCOMMANDS.items()]
    lines += ["", "`pirecon sim <subcommand> --help` shows its flags."]
    return "\n".join(lines)


def run(argv: list[str]) -> int:
    """Entry point of `pirecon sim`; returns the exit code."""
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"pirecon sim: unknown subcommand {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    if any(a in ("-h", "--help") for a in rest):
        print(format_help(f"sim {name}", SUBCOMMANDS[name].__doc__, SUBCOMMANDS[name]), end="")
        return 0
    flags = parse_flags(rest, SUBCOMMANDS[name])
    return {"record": _record, "eval": _eval, "preview": _preview}[name](flags)


def _record(flags: RecordFlags) -> int:
    from pirecon.sim.env import SimConfig
    from pirecon.sim.record import record

    if not flags.output:
        raise ConfigError("--output: required, e.g. --output=data/sim_demos")

    def progress(done: int, total: int) -> None:
        if done == total or done % max(total // 10, 1) == 0:
            print(f"  {done}/{total} episodes", flush=True)

    config = SimConfig(image_size=flags.image_size, cells=flags.cells, max_steps=flags.max_steps,
                       num_blocks=flags.num_blocks, drift=flags.drift)
    summary = record(flags.output, flags.episodes, seed=flags.seed, image_size=flags.image_size,
                     version=flags.version, config=config, overwrite=flags.overwrite,
                     action_noise=flags.action_noise, progress=progress)
    print(summary.describe())
    return 0


def _eval(flags: SimEvalFlags) -> int:
    from pirecon.sim.env import SimConfig
    from pirecon.sim.expert import RandomPolicy, ScriptedExpert, evaluate

    makers = {"expert": ScriptedExpert, "random": lambda env: RandomPolicy(env.action_dim, seed=flags.seed)}
    if flags.policy not in makers:
        raise ConfigError(f"--policy={flags.policy!r}: expected one of {list(makers)}")
    result = evaluate(makers[flags.policy], flags.episodes, flags.seed, SimConfig(image_size=flags.image_size))
    print(f"{flags.policy}: success {result.successes}/{result.episodes} = {result.success_rate:.1%}, "
          f"mean steps {result.mean_steps:.1f}")
    width = max(len(t) for t in result.per_task)
    for task, (ok, n) in result.per_task.items():
        print(f"  {task:<{width}}  {ok}/{n}")
    return 0


def _preview(flags: PreviewFlags) -> int:
    from PIL import Image

    from pirecon.sim.env import SimConfig, SimEnv
    from pirecon.sim.expert import ScriptedExpert, run_episode

    if not flags.output:
        raise ConfigError("--output: required, e.g. --output=sim_preview.png")
    env = SimEnv(SimConfig(image_size=flags.image_size))
    columns: list[np.ndarray] = []

    def keep(obs: dict, action: np.ndarray) -> None:
        if env.steps % max(flags.every, 1) == 0:
            columns.append(np.concatenate([obs["observation.images.top"], obs["observation.images.wrist"]], axis=0))

    result = run_episode(env, ScriptedExpert(env), flags.seed, on_step=keep)
    columns.append(np.concatenate([env.observation()[k] for k in env.camera_keys], axis=0))  # final frame
    sheet = np.concatenate([np.pad(c, ((0, 0), (0, 2), (0, 0)), constant_values=255) for c in columns], axis=1)
    Path(flags.output).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(sheet).save(flags.output)
    print(f"{flags.output}: {len(columns)} frames of '{result['task']}' (seed {flags.seed}), "
          f"success={result['success']} after {result['steps']} steps")
    return 0
