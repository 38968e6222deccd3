"""Running FSDP training under `accelerate launch` on CPU (gloo), and one process standing in for two."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import torch

from pirecon.data.loader import make_dataloader

REPO_ROOT = Path(__file__).resolve().parents[2]
FSDP_YAML = REPO_ROOT / "examples" / "accelerate" / "fsdp.yaml"
DDP_YAML = REPO_ROOT / "examples" / "accelerate" / "ddp.yaml"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(args: list[str], config: Path = FSDP_YAML, processes: int = 2) -> subprocess.CompletedProcess:
    """`accelerate launch --config_file CONFIG --num_processes N ARGS`, one thread per process."""
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    assert accelerate, "accelerate's launcher is installed with pirecon"
    command = [accelerate, "launch", "--config_file", str(config), "--num_processes", str(processes),
               "--main_process_port", str(free_port()), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "src"), str(REPO_ROOT)])}
    res = subprocess.run(command, capture_output=True, text=True, timeout=900, env=env, cwd=REPO_ROOT)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    return res


class AsTwoProcesses:
    """Makes a one-process Trainer (built with --grad_accum_steps=2) compute what two processes
    compute: micro-step r of every step gets rank r's batch (every second sample of the shared epoch
    permutation) and rank r's random draws (noise, time), from rank r's loader position and RNG state
    (`state`: a checkpoint's training_state, which keeps both for every rank). The optimizer step then
    follows the gradient averaged over the two batches, as data parallel training does."""

    def __init__(self, trainer, state: dict | None = None):
        cfg = trainer.cfg
        self.loaders = [make_dataloader(trainer.dataset, trainer.preprocessor, cfg.batch_size, 0, seed=cfg.seed,
                                        rank=rank, world_size=2) for rank in range(2)]
        self.rng = []
        for rank, loader in enumerate(self.loaders):
            if state is not None:
                loader.load_state_dict(state["loader"][rank])
                self.rng.append(state["rng"][rank]["torch"])
            else:
                torch.manual_seed(cfg.seed + rank)  # as the Trainer seeds each rank
                self.rng.append(torch.get_rng_state())
        self.model, self.calls = trainer.forward, 0
        trainer.loader, trainer.forward = self, self.forward

    def forever(self):
        streams = [loader.forever() for loader in self.loaders]
        while True:
            for stream in streams:
                yield next(stream)

    def state_dict(self):
        return self.loaders[0].state_dict()

    def forward(self, batch, **kwargs):
        rank = self.calls % 2
        self.calls += 1
        torch.set_rng_state(self.rng[rank])
        out = self.model(batch, **kwargs)
        self.rng[rank] = torch.get_rng_state()
        return out


def truncated_copy(run: Path, to: Path, step: int) -> Path:
    """A copy of a run folder as if it had been stopped right after checkpoint `step`."""
    shutil.copytree(run, to, symlinks=True)
    checkpoints = to / "checkpoints"
    for folder in checkpoints.iterdir():
        if folder.name.isdigit() and int(folder.name) > step:
            shutil.rmtree(folder)
    (checkpoints / "last").unlink()
    (checkpoints / "last").symlink_to(f"{step:06d}")
    return to
