"""Skipping what the whole batch masks in the training forward: same loss and gradients as the
reference work (every view, full prompt padding), less work."""

import pytest
import torch

from pirecon import PolicyConfig
from pirecon.batch import synthetic_batch
from pirecon.configs.recon import ReconConfig
from pirecon.errors import InputError
from pirecon.model.pi0 import Pi0Policy
from pirecon.model.trim import TrimPlan, apply_plan, trim_plan, untrim_prefix

CAMS = ("base_0_rgb", "left_wrist_0_rgb", "right_wrist_0_rgb")


def test_plan_keeps_views_some_sample_has_and_tokens_up_to_the_longest_prompt():
    image_masks = torch.tensor([[True, False, False], [False, False, True]])
    token_masks = torch.tensor([[1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 0, 0]], dtype=torch.bool)
    assert trim_plan(image_masks, token_masks) == TrimPlan(views=(0, 2), num_views=3, length=4, full_length=6)
    # Nothing present: one view and one token stay, so the prefix is never empty.
    nothing = trim_plan(torch.zeros(2, 3, dtype=torch.bool), torch.zeros(2, 6, dtype=torch.bool))
    assert (nothing.views, nothing.length) == ((0,), 1)
    assert trim_plan(torch.ones(2, 3, dtype=torch.bool), torch.ones(2, 6, dtype=torch.bool)).is_identity


def test_apply_plan_drops_a_middle_view_and_the_padding():
    config = PolicyConfig(variant="tiny", image_resolution=28)
    batch = synthetic_batch(config, 2, text_lengths=[3, 5])
    batch.image_masks[:, 1] = False
    short = apply_plan(batch, trim_plan(batch.image_masks, batch.token_masks))
    assert torch.equal(short.images, batch.images[:, [0, 2]])
    assert short.tokens.tolist() == batch.tokens[:, :5].tolist() and short.token_masks.shape == (2, 5)
    assert short.state is batch.state and short.actions is batch.actions
    with pytest.raises(InputError, match="the trim plan is for 2 views and 5 prompt tokens; the batch has 3 views"):
        apply_plan(batch, TrimPlan((0, 1), 2, 5, 5))


def test_untrim_puts_the_states_back_in_the_full_layout():
    plan = TrimPlan(views=(0, 2), num_views=3, length=2, full_length=4)
    # 2 tokens per image, width 1: kept view 0 -> [1, 2], kept view 2 -> [3, 4], prompt -> [5, 6].
    short = torch.tensor([[1.0, 2, 3, 4, 5, 6]])[..., None]
    full = untrim_prefix(short, plan, tokens_per_image=2)
    assert full[0, :, 0].tolist() == [1, 2, 0, 0, 3, 4, 5, 6, 0, 0]


def _policy(kind: str, recon: bool) -> Pi0Policy:
    torch.manual_seed(0)
    config = PolicyConfig(type=kind, variant="tiny", chunk_size=4, n_action_steps=4, image_resolution=56,
                          camera_names=CAMS)
    policy = Pi0Policy(config, recon=ReconConfig(enable=True, views=CAMS[:2]) if recon else None)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # open the zero-initialised gates (adaRMS, the head's adaLN-Zero) so every path counts
        for name, p in policy.named_parameters():
            if "dense" in name or name.startswith("recon_head"):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    return policy


@pytest.mark.parametrize("kind", ["pi0", "pi05"])
@pytest.mark.parametrize("recon", [False, True])
def test_trimmed_training_forward_gives_the_reference_loss_and_gradients(kind, recon):
    """3 views with the third masked in every sample, prompts of 5 and 9 tokens padded to 48 / 200."""
    policy = _policy(kind, recon)
    batch = synthetic_batch(policy.config, 2, missing_views=1, text_lengths=[5, 9])
    noise = torch.randn_like(batch.actions)
    time = torch.tensor([0.3, 0.7])

    def run(trim):
        policy.zero_grad()
        torch.manual_seed(5)  # the reconstruction head's own noise and time
        out = policy.compute_loss(batch, noise=noise, time=time, trim=trim)
        out["loss"].backward()
        return out, {n: p.grad.clone() for n, p in policy.named_parameters() if p.grad is not None}

    ref, ref_grads = run(False)
    short, grads = run(True)
    planned, _ = run(trim_plan(batch.image_masks, batch.token_masks))
    assert ref["prefix_out"].shape == short["prefix_out"].shape
    for key in ("loss", "action_loss") + (("recon_loss",) if recon else ()):
        assert torch.allclose(short[key], ref[key], rtol=1e-5, atol=1e-6), key
        assert torch.equal(planned[key], short[key])
    assert set(grads) == set(ref_grads)
    for name, grad in grads.items():
        scale = ref_grads[name].abs().max()
        assert (grad - ref_grads[name]).abs().max() <= 1e-5 * scale + 1e-7, name
    # The real tokens' states agree; the skipped ones are zeros.
    n = policy.config.tokens_per_image
    real = torch.cat([torch.ones(2, 2 * n, dtype=torch.bool), torch.zeros(2, n, dtype=torch.bool),
                      batch.token_masks], dim=1)
    assert torch.allclose(short["prefix_out"][real], ref["prefix_out"][real], rtol=1e-4, atol=1e-5)
    assert not short["prefix_out"][:, 2 * n:3 * n].any() and not short["prefix_out"][:, 3 * n + 9:].any()


def test_trimming_a_view_one_sample_has_is_not_done():
    policy = _policy("pi0", recon=False)
    batch = synthetic_batch(policy.config, 2, text_lengths=[5, 48])
    batch.image_masks[0, 2] = False
    assert trim_plan(batch.image_masks, batch.token_masks).is_identity
