import torch

from pirecon import PolicyConfig
from pirecon.batch import synthetic_batch
from pirecon.model.backbone import make_attention_mask, position_ids
from pirecon.model.pi0 import Pi0Policy


def test_mask_matches_hand_computed_example():
    # 2 prefix tokens (one padded), then pi0's suffix: state token [1], first action [1], action [0].
    pads = torch.tensor([[True, False, True, True, True]])
    starts = torch.tensor([[0, 0, 1, 1, 0]])
    expected = torch.tensor([
        # keys: p0  p1(pad) state a0  a1
        [1, 0, 0, 0, 0],  # p0 sees the prefix only
        [0, 0, 0, 0, 0],  # padded query sees nothing
        [1, 0, 1, 0, 0],  # state sees prefix + itself
        [1, 0, 1, 1, 1],  # actions see everything
        [1, 0, 1, 1, 1],
    ], dtype=torch.bool)
    assert torch.equal(make_attention_mask(pads, starts)[0], expected)


def test_position_ids_skip_padding():
    pads = torch.tensor([[True, False, True, True], [False, False, True, True]])
    assert position_ids(pads).tolist() == [[0, 0, 1, 2], [-1, -1, 0, 1]]


def _policy(kind="pi0"):
    return Pi0Policy(PolicyConfig(type=kind, variant="tiny", chunk_size=4, n_action_steps=4))


def test_prefix_pads_missing_views_and_text():
    policy = _policy()
    cfg = policy.config
    batch = synthetic_batch(cfg, 2, missing_views=1, text_lengths=[5, 9])
    prefix = policy.embed_prefix(batch)
    n = cfg.tokens_per_image
    views = len(cfg.camera_names)
    assert prefix.num_image_tokens == views * n
    assert prefix.pad_masks[:, :(views - 1) * n].all()
    assert not prefix.pad_masks[:, (views - 1) * n:views * n].any()  # the missing view
    text = prefix.pad_masks[:, views * n:]
    assert text.sum(1).tolist() == [5, 9]


def test_padding_content_does_not_change_the_loss():
    """What sits in masked-out views and padded text tokens must not influence the result."""
    policy = _policy("pi05")
    with torch.no_grad():  # open the adaRMS gates so the expert really reads the prefix
        for m in policy.modules():
            if hasattr(m, "dense"):
                m.dense.weight.normal_(std=0.1)
    batch = synthetic_batch(policy.config, 2, missing_views=1, text_lengths=[5, 9])
    noise = torch.randn_like(batch.actions)
    time = torch.tensor([0.3, 0.7])
    base = policy.compute_loss(batch, noise=noise, time=time)["loss"]
    batch.images[:, -1] = torch.rand_like(batch.images[:, -1])  # garbage in the missing view
    batch.tokens = torch.where(batch.token_masks, batch.tokens, torch.full_like(batch.tokens, 7))
    other = policy.compute_loss(batch, noise=noise, time=time)["loss"]
    assert torch.allclose(base, other, atol=1e-6)
    # ... while the content of a real view does.
    batch.images[:, 0] = -batch.images[:, 0]
    assert not torch.allclose(base, policy.compute_loss(batch, noise=noise, time=time)["loss"], atol=1e-6)
