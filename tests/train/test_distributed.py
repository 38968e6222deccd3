"""Multi-process training through `accelerate launch` on CPU (gloo)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.train.fsdp_helpers import DDP_YAML, free_port
from tests.train.helpers import logged, tiny_train_flags


DUMP_SCRIPT = """
import sys
from safetensors.torch import save_file
from pirecon.train.command import parse_train_flags
from pirecon.train.loop import Trainer

out = sys.argv[1]
trainer = Trainer(parse_train_flags(sys.argv[2:]))
trainer.run()
model = trainer.accelerator.unwrap_model(trainer.model)
rank = trainer.accelerator.process_index
save_file({n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad},
          f"{out}/weights_rank{rank}.safetensors")
"""


@pytest.mark.slow
def test_two_processes_end_with_identical_weights(sim_dataset, sim_tokenizer, tmp_path):
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    assert accelerate, "accelerate's launcher is installed with pirecon"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # The shipped DDP config (distributed_type: MULTI_GPU): on a machine without GPUs it starts
    # several CPU processes (gloo).
    launch = [accelerate, "launch", "--config_file", str(DDP_YAML), "--num_processes", "2",
              "--main_process_port", str(free_port())]

    # The documented command line works ...
    cli_out = tmp_path / "cli"
    res = subprocess.run([*launch, "-m", "pirecon", "train",
                          *tiny_train_flags(sim_dataset, sim_tokenizer, cli_out, "--steps=1", "--batch_size=2")],
                         capture_output=True, text=True, timeout=600, env=env)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    assert sorted(logged(cli_out)) == [1]

    # ... and every rank ends with the same weights (each dumps its own copy after training).
    out = tmp_path / "ddp"
    script = tmp_path / "train_and_dump.py"
    script.write_text(DUMP_SCRIPT)
    res = subprocess.run([*launch, str(script), str(out),
                          *tiny_train_flags(sim_dataset, sim_tokenizer, out, "--steps=3", "--batch_size=2",
                                            "--save_freq=3", "--policy.use_peft")],
                         capture_output=True, text=True, timeout=600, env=env)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    dumps = sorted(out.glob("weights_rank*.safetensors"))
    assert [p.name for p in dumps] == ["weights_rank0.safetensors", "weights_rank1.safetensors"]
    a, b = (load_file(str(p)) for p in dumps)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # Only rank 0 wrote checkpoints and logs; the effective batch is 2 per process x 2 processes.
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["000003", "last"]
    assert sorted(logged(out)) == [1, 2, 3]
    import json
    record = json.loads((out / "log.jsonl").read_text().splitlines()[0])
    assert record["world_size"] == 2 and record["effective_batch_size"] == 4
