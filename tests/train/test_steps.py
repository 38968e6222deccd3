"""The per-step bookkeeping of the training loop: values kept on the device, read at log steps only;
data wait vs update time in the log; the non-finite loss stop; fused AdamW on CUDA."""

import sys
import time

import pytest
import torch

from pirecon.checkpoint.layout import last_checkpoint
from pirecon.configs.train import OptimizerConfig
from pirecon.errors import TrainingError
from pirecon.train.command import parse_train_flags
from pirecon.train.loop import Trainer
from pirecon.train.steps import FiniteGuard, StepValues, make_optimizer
from tests.train.helpers import logged, tiny_train_flags


def test_step_values_are_interval_means_with_data_wait_and_update_time():
    values = StepValues()
    values.add({"loss": torch.tensor(1.0), "grad_norm": torch.tensor(4.0)}, step_s=0.5, dataloading_s=0.1)
    values.add({"loss": torch.tensor(3.0), "grad_norm": torch.tensor(2.0)}, step_s=0.7, dataloading_s=0.3)
    means, steps, seconds = values.pop()
    assert steps == 2 and seconds == pytest.approx(1.2)
    assert means == pytest.approx({"loss": 2.0, "grad_norm": 3.0, "dataloading_s": 0.2, "update_s": 0.4,
                                   "step_s": 0.6})
    values.add({"loss": torch.tensor(5.0)}, step_s=1.0, dataloading_s=0.0)
    assert values.pop()[0]["loss"] == 5.0  # a new interval


def test_finite_guard_names_the_first_bad_step_and_its_samples():
    guard = FiniteGuard()
    guard.observe(1, torch.tensor(0.5), torch.tensor([3, 4]))
    guard.check(None, "ckpts")  # all finite: nothing happens
    guard.observe(2, torch.tensor(0.4), torch.tensor([5, 6]))
    guard.observe(3, torch.tensor(float("inf")), torch.tensor([7, 8]))
    guard.observe(4, torch.tensor(float("nan")), None)
    with pytest.raises(TrainingError, match=r"^step 3: the loss is inf for samples \(dataset index\) \[7, 8\] on rank "
                                            r"0; stopped without writing a checkpoint \(the last good one stays in ckpts\)"):
        guard.check(None, "ckpts")


def test_fused_adamw_on_cuda_only():
    params = [torch.nn.Parameter(torch.zeros(3))]
    cfg = OptimizerConfig(type="adamw", lr=1e-3, weight_decay=0.01)
    assert make_optimizer(cfg, params, torch.device("cuda")).defaults["fused"] is True
    on_cpu = make_optimizer(cfg, params, torch.device("cpu"))
    assert isinstance(on_cpu, torch.optim.AdamW) and not on_cpu.defaults["fused"]
    assert isinstance(make_optimizer(OptimizerConfig(type="adam", weight_decay=0.0), params, torch.device("cuda")), torch.optim.Adam)


def test_the_log_says_how_long_each_step_waited_for_data(sim_dataset, sim_tokenizer, tmp_path):
    trainer = Trainer(parse_train_flags(tiny_train_flags(sim_dataset, sim_tokenizer, tmp_path / "run", "--steps=4",
                                                         "--log_freq=2", "--save_checkpoint=false")))
    batches = trainer.loader.forever

    def slow_loader():  # a loader that takes 0.3 s per batch
        for batch in batches():
            time.sleep(0.3)
            yield batch

    trainer.loader.forever = slow_loader
    trainer.run()
    waited, updated, step = (logged(tmp_path / "run", key) for key in ("dataloading_s", "update_s", "step_s"))
    assert list(waited) == [2, 4]
    for s in (2, 4):
        assert 0.3 <= waited[s] < step[s] and updated[s] > 0
        assert waited[s] + updated[s] == pytest.approx(step[s])


def test_nan_stop_between_log_steps_names_the_step(sim_dataset, sim_tokenizer, tmp_path):
    """The loss is read at log and save steps only; a NaN at step 3 is found at step 4 and named as step 3."""
    out = tmp_path / "run"
    trainer = Trainer(parse_train_flags(tiny_train_flags(sim_dataset, sim_tokenizer, out, "--steps=6",
                                                         "--save_freq=2", "--log_freq=4")))
    original = trainer.forward

    def poisoned(batch, **kwargs):
        result = original(batch, **kwargs)
        if trainer.step == 2:
            result["loss"] = result["loss"] * float("nan")
        return result

    trainer.forward = poisoned
    with pytest.raises(TrainingError, match=r"step 3: the loss is nan for samples \(dataset index\) \[\d+, \d+, \d+, \d+\]"):
        trainer.run()
    assert trainer.step == 4 and last_checkpoint(out).name == "000002"


def test_the_loop_reads_device_values_only_at_log_and_save_steps(sim_dataset, sim_tokenizer, tmp_path, monkeypatch):
    """On a GPU each read of a tensor's value waits for the device; the loop's own code reads none
    between log / save steps (here steps 3 and 6)."""
    trainer = Trainer(parse_train_flags(tiny_train_flags(sim_dataset, sim_tokenizer, tmp_path / "run", "--steps=6",
                                                         "--log_freq=3", "--save_freq=6", "--ema_decay=0.9")))
    reads = []

    def spy(name):
        original = getattr(torch.Tensor, name)

        def read(self, *args, **kwargs):
            if "pirecon/train/" in sys._getframe(1).f_code.co_filename:
                reads.append(trainer.step)
            return original(self, *args, **kwargs)
        monkeypatch.setattr(torch.Tensor, name, read)

    for name in ("item", "tolist", "__float__", "__int__", "__bool__", "cpu", "numpy"):
        spy(name)
    trainer.run()
    assert reads and set(reads) <= {3, 6}
