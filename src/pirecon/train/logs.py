"""Training logs: log.jsonl (always), TensorBoard and WandB (when asked), a loss-curve PNG at the end.

Only the main process writes; other ranks get a logger that does nothing.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

from pirecon.errors import ConfigError

LOG_FILE = "log.jsonl"
PLOT_FILE = "loss_curves.png"


class RunLogger:
    """resume_step: the step of the checkpoint a resumed run starts from (None: a new run). Lines
    logged after it by the interrupted run are dropped, so every step appears once in log.jsonl."""

    def __init__(self, output_dir: Path, enabled: bool, tensorboard: bool, wandb_cfg, run_config: dict,
                 resume_step: int | None = None, name: str | None = None, tags: list[str] | None = None):
        self.enabled = enabled
        self.path = Path(output_dir) / LOG_FILE
        self.tb = None
        self.wandb = None
        if not enabled:
            return
        if resume_step is None and self.path.exists():
            self.path.unlink()
        elif resume_step is not None:
            truncate_log(self.path, resume_step)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter  # lazy: only with --tensorboard=true
            except ImportError:
                raise ConfigError("--tensorboard=true needs the tensorboard package: pip install tensorboard") from None
            self.tb = SummaryWriter(log_dir=str(Path(output_dir) / "tensorboard"))
        if wandb_cfg.enable:
            try:
                import wandb  # lazy: an optional extra, only with --wandb.enable=true
            except ImportError:
                raise ConfigError("--wandb.enable=true needs the wandb package: pip install 'pirecon[wandb]'") from None
            mode = wandb_cfg.mode or os.environ.get("WANDB_MODE") or "online"
            if mode not in ("online", "offline", "disabled"):
                raise ConfigError(f"--wandb.mode={mode!r}: expected online, offline or disabled")
            run_id = wandb_cfg.run_id or (previous_wandb_run(output_dir) if resume_step is not None else None)
            # Never block on the network: short init timeout; offline mode works with no network.
            self.wandb = wandb.init(project=wandb_cfg.project, entity=wandb_cfg.entity, name=name,
                                    notes=wandb_cfg.notes, id=run_id, resume="allow" if run_id else None,
                                    tags=tags if wandb_cfg.add_tags else None, job_type="train_eval",
                                    mode=mode, dir=str(output_dir), config=run_config,
                                    settings=wandb.Settings(init_timeout=30, silent=True))

    def log(self, record: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        step = record["step"]
        numbers = {k: v for k, v in record.items() if k != "step" and isinstance(v, (int, float))}
        # Training values go under train/; a key that names its group (eval/success_rate) keeps it.
        named = {(k if "/" in k else f"train/{k}"): v for k, v in numbers.items()}
        if self.tb is not None:
            for key, value in named.items():
                self.tb.add_scalar(key, value, step)
            self.tb.flush()
        if self.wandb is not None:
            self.wandb.log(named, step=step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


def previous_wandb_run(output_dir: Path) -> str | None:
    """The id of the W&B run a resumed run continues: output_dir/wandb/latest-run/run-<id>.wandb."""
    found = sorted((Path(output_dir) / "wandb" / "latest-run").glob("run-*.wandb"))
    return found[-1].stem[len("run-"):] if found else None


def read_log(path: Path, warn: bool = True) -> list[dict]:
    """The records of a log.jsonl; a line that is not a JSON record (e.g. torn by a kill) is skipped,
    with one warning naming the file and the line numbers."""
    if not Path(path).is_file():
        return []
    records, bad = [], []
    for number, line in enumerate(Path(path).read_text(errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if isinstance(record, dict) and isinstance(record.get("step"), int):
            records.append(record)
        else:
            bad.append(number)
    if bad and warn:
        print(f"warning: {path}: skipped {len(bad)} line(s) that are not log records (line {', '.join(map(str, bad[:5]))}"
              f"{', ...' if len(bad) > 5 else ''}; a torn last line comes from an interrupted run)", file=sys.stderr)
    return records


def truncate_log(path: Path, step: int) -> None:
    """Keep the records of steps <= `step` (and drop unreadable lines), rewritten atomically."""
    path = Path(path)
    if not path.is_file():
        return
    kept = [r for r in read_log(path) if r["step"] <= step]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
    os.replace(tmp, path)


def plot_losses(log_path: Path, output: Path) -> Path | None:
    """A PNG with the loss curves of log.jsonl (log scale); None when there is nothing to plot."""
    records = read_log(log_path)
    if not records:
        return None
    import matplotlib  # lazy: slow to import, used once at the end
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: slow to import, used once at the end

    keys = [k for k in ("loss", "action_loss", "recon_loss") if any(k in r for r in records)]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    for key in keys:
        points = [(r["step"], r[key]) for r in records if key in r and math.isfinite(r[key]) and r[key] > 0]
        if points:
            ax.plot(*zip(*points), label=key)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(output)
    plt.close(fig)
    return output
