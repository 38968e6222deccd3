"""--policy.full_bf16=true: trained weights and optimizer state in bfloat16 (no float32 master copies)."""

import pytest
import torch

from pirecon import PolicyConfig
from pirecon.batch import synthetic_batch
from pirecon.errors import ConfigError
from pirecon.model.pi0 import Pi0Policy
from pirecon.model.placement import decide_placement, place
from pirecon.train.command import parse_train_flags
from pirecon.train.loop import Trainer
from tests.train.helpers import tiny_train_flags

BF16, F32 = torch.bfloat16, torch.float32


def test_the_decision_names_the_trainable_dtype():
    assert decide_placement("cpu", BF16, cpu_has_bf16=True).trainable_dtype == F32
    assert decide_placement("cpu", BF16, cpu_has_bf16=True, full_bf16=True).trainable_dtype == BF16
    with pytest.raises(ValueError, match="full_bf16 needs dtype torch.bfloat16"):
        decide_placement("cpu", F32, full_bf16=True)


def test_a_full_finetune_in_bf16_keeps_weights_and_adamw_state_in_bf16(sim_dataset, sim_tokenizer, tmp_path, capsys,
                                                                      fresh_accelerator):
    trainer = Trainer(parse_train_flags(tiny_train_flags(sim_dataset, sim_tokenizer, tmp_path / "run", "--steps=2",
                                                         "--policy.dtype=bfloat16", "--policy.full_bf16=true",
                                                         "--save_checkpoint=false")))
    trainer.run()
    policy = trainer.accelerator.unwrap_model(trainer.model)
    keep32 = {id(p) for m in policy.float32_modules() for p in m.parameters(recurse=False)}
    trained = [p for p in policy.parameters() if p.requires_grad]
    assert {p.dtype for p in trained if id(p) in keep32} == {F32}  # norms, embeddings, expert projections
    big = [p for p in trained if id(p) not in keep32]
    assert big and {p.dtype for p in big} == {BF16}
    assert policy.backbone.vlm.layers[0].mlp.up_proj.weight.dtype == BF16
    states = [trainer.optimizer.state[p] for p in big if p in trainer.optimizer.state]  # those that got a gradient
    assert len(states) > len(big) // 2
    assert {s[k].dtype for s in states for k in ("exp_avg", "exp_avg_sq")} == {BF16}
    note = [line for line in capsys.readouterr().out.splitlines() if "full_bf16" in line]
    assert len(note) == 1 and "no float32 master copies" in note[0] and "loss may end higher" in note[0]


def test_full_bf16_needs_bfloat16(sim_dataset, sim_tokenizer, tmp_path):
    with pytest.raises(ConfigError, match=r"--policy.full_bf16=true keeps the trained weights in bfloat16, but the "
                                          r"policy's dtype is float32 .* expected --policy.dtype=bfloat16"):
        Trainer(parse_train_flags(tiny_train_flags(sim_dataset, sim_tokenizer, tmp_path / "run", "--steps=1",
                                                   "--policy.full_bf16=true")))


def test_a_few_bf16_steps_reduce_the_loss():
    torch.manual_seed(0)
    policy = Pi0Policy(PolicyConfig(variant="tiny", image_resolution=28, chunk_size=4, n_action_steps=4,
                                    max_state_dim=8, max_action_dim=8, dtype="bfloat16"))
    place(policy, "cpu", BF16, train=True, full_bf16=True)
    optimizer = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=1e-3)
    batch = synthetic_batch(policy.config, 4, action_dim=4)
    noise, time = torch.randn_like(batch.actions), torch.full((4,), 0.5)
    losses = []
    for _ in range(8):
        with torch.autocast("cpu", dtype=BF16):
            loss = policy.compute_loss(batch, noise=noise, time=time)["loss"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses
