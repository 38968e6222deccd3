"""What the training loop does every step without waiting for the device.

On a GPU, reading a value back (`.item()`, `float(t)`, a Python `if` on a tensor, a blocking copy)
makes the host wait until the device has finished all queued work, so the host can no longer
prepare the next step while the device computes. The loop therefore keeps per-step values on the
device and reads them at log, save and evaluation steps only:

- `StepValues` sums the losses and the gradient norm of the steps since the last log line on the
  device, with the host-side timings (the wait for the loader, the whole step);
- `FiniteGuard` keeps each micro-step's loss on the device and the dataset indices of its samples on
  the host; `check()` finds the first non-finite loss and names its step and samples;
- `make_optimizer` builds Adam / AdamW, fused (one kernel for all parameters) on CUDA.
"""

from __future__ import annotations

import torch

from pirecon.errors import TrainingError


def make_optimizer(opt_cfg, params: list[torch.nn.Parameter], device: torch.device) -> torch.optim.Optimizer:
    """`--optimizer.type` adam | adamw over `params`; fused on CUDA (PyTorch's single-kernel update,
    the same arithmetic), PyTorch's default implementation elsewhere."""
    optimizer_class = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[opt_cfg.type]
    extra = {"fused": True} if torch.device(device).type == "cuda" else {}
    return optimizer_class(params, lr=opt_cfg.lr, betas=tuple(opt_cfg.betas), eps=opt_cfg.eps,
                           weight_decay=opt_cfg.weight_decay, **extra)


def wait_for_device(device: torch.device) -> None:
    """Block until `device` has run all queued work (a no-op on the CPU, which computes in line)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


class StepValues:
    """Per-step values since the last log line: device tensors summed on the device, seconds on the host.

    `add(values, step_s, dataloading_s)` once per step; `pop(accelerator)` returns the means as
    floats (one read from the device; under several processes the values are averaged over the
    ranks and the timings take the slowest rank, as LeRobot reports them) and starts a new interval.
    """

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.steps = 0
        self.step_s = 0.0
        self.dataloading_s = 0.0

    def add(self, values: dict[str, torch.Tensor], step_s: float, dataloading_s: float) -> None:
        for key, value in values.items():
            value = value.detach().float()
            self.sums[key] = self.sums[key] + value if key in self.sums else value
        self.steps += 1
        self.step_s += step_s
        self.dataloading_s += dataloading_s

    def pop(self, accelerator=None) -> tuple[dict[str, float], int, float]:
        """(means: the values, then "dataloading_s", "update_s" and "step_s" per step; steps; seconds)."""
        keys = list(self.sums)
        device = self.sums[keys[0]].device if keys else torch.device("cpu")
        values = torch.stack([self.sums[k].reshape(()) for k in keys]) / self.steps if keys else torch.zeros(0)
        timings = torch.tensor([self.dataloading_s, self.step_s], dtype=torch.float64) / self.steps
        if accelerator is not None and accelerator.num_processes > 1:
            values = accelerator.reduce(values, reduction="mean")
            timings = accelerator.gather(timings.to(device).reshape(1, 2)).max(dim=0).values
        means = dict(zip(keys, values.tolist()))
        dataloading, step = timings.tolist()
        means.update(dataloading_s=dataloading, update_s=max(step - dataloading, 0.0), step_s=step)
        out = (means, self.steps, self.step_s)
        self.__init__()
        return out


class FiniteGuard:
    """Stops training at the first loss that is not finite, naming the step and the samples.

    `observe(step, loss, index)` per micro-step keeps the loss on the device and `index` (the
    samples' dataset indices, a host tensor or None) on the host; `check(accelerator, checkpoints)`
    reads the losses since the last check at once and raises `TrainingError` on every rank if any
    rank saw one. Call it before anything is written from the weights (a checkpoint, an evaluation).
    """

    def __init__(self) -> None:
        self.records: list[tuple[int, torch.Tensor, torch.Tensor | None]] = []

    def observe(self, step: int, loss: torch.Tensor, index: torch.Tensor | None) -> None:
        self.records.append((step, loss.detach().reshape(()), index))

    def check(self, accelerator, checkpoints) -> None:
        if not self.records:
            return
        records, self.records = self.records, []
        losses = torch.stack([loss.float() for _, loss, _ in records])
        finite = torch.isfinite(losses)
        bad = (~finite).sum().reshape(1).float()
        rank, processes = (accelerator.process_index, accelerator.num_processes) if accelerator else (0, 1)
        if processes > 1:
            bad = accelerator.reduce(bad, reduction="sum")
        if bad.item() == 0:
            return
        flags = finite.tolist()
        if all(flags):
            raise TrainingError(f"a loss that is not finite on another rank (rank {rank} saw none up to step "
                                f"{records[-1][0]}); stopped without writing a checkpoint (the last good one stays "
                                f"in {checkpoints})")
        step, loss, index = records[flags.index(False)]
        where = f" for samples (dataset index) {index.tolist()}" if index is not None else ""
        raise TrainingError(f"step {step}: the loss is {loss.item()}{where} on rank {rank}; stopped without "
                            f"writing a checkpoint (the last good one stays in {checkpoints})")
