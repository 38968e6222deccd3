import pytest
import torch

from pirecon import PolicyConfig
from pirecon.batch import synthetic_batch
from pirecon.model import backbone, cpu_bf16
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


# openpi's additive mask value: finite, so a padded query (which may see nothing) averages uniformly.
OPENPI_MASK_VALUE = -2.3819763e38


def _additive_reference(monkeypatch):
    """Make the backbone's attention use the additive bias openpi builds instead of the boolean mask
    (through cpu_bf16's attention, which computes in float32 where the CPU emulates bfloat16)."""
    def attention(q, k, v, attn_mask):
        bias = torch.zeros(attn_mask.shape, dtype=q.dtype).masked_fill(~attn_mask, OPENPI_MASK_VALUE)
        return cpu_bf16.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    monkeypatch.setattr(backbone, "scaled_dot_product_attention", attention)


@pytest.mark.parametrize("kind", ["pi0", "pi05"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "bfloat16-emulated"])
def test_boolean_masks_give_the_additive_bias_results_bit_for_bit(kind, dtype, monkeypatch):
    """Padded views and prompt tokens, one view masked in one sample only: sampling (with and without
    trimming and the cache) and the loss are those of openpi's additive bias, exactly."""
    if dtype == "bfloat16-emulated":  # attention in float32 (a CPU without bfloat16 arithmetic)
        monkeypatch.setattr(cpu_bf16, "cpu_has_bf16_arithmetic", lambda: False)
        dtype = "bfloat16"
    torch.manual_seed(0)
    policy = Pi0Policy(PolicyConfig(type=kind, variant="tiny", chunk_size=4, n_action_steps=4, dtype=dtype))
    with torch.no_grad():  # open the adaRMS gates so the expert really reads the prefix
        for m in policy.modules():
            if hasattr(m, "dense"):
                m.dense.weight.normal_(std=0.1)
    batch = synthetic_batch(policy.config, 2, missing_views=1, text_lengths=[5, 9])
    batch.image_masks[1, 0] = False
    noise = torch.randn(2, 4, policy.config.max_action_dim)
    time = torch.tensor([0.3, 0.7])

    def results():
        out = [policy.sample_actions(batch, noise=noise, num_steps=2, trim=trim, use_cache=cache)
               for trim in (True, False) for cache in (True, False)]
        return out + [policy.compute_loss(batch, noise=noise, time=time)["loss"].detach()]
    ours = results()
    _additive_reference(monkeypatch)
    for got, expected in zip(ours, results(), strict=True):
        assert torch.equal(got, expected)


def test_one_boolean_mask_serves_every_layer_and_padded_queries_stay_finite(monkeypatch):
    policy = _policy("pi05")
    batch = synthetic_batch(policy.config, 2, missing_views=1, text_lengths=[5, 9])
    seen, real = [], backbone.scaled_dot_product_attention

    def spy(q, k, v, attn_mask):
        seen.append(attn_mask)
        return real(q, k, v, attn_mask=attn_mask)
    monkeypatch.setattr(backbone, "scaled_dot_product_attention", spy)
    out = policy.compute_loss(batch, noise=torch.randn_like(batch.actions), time=torch.tensor([0.3, 0.7]))
    assert len(seen) == policy.config.vlm.depth
    assert all(mask is seen[0] for mask in seen)  # built once per pass
    assert seen[0].dtype == torch.bool and seen[0].shape[1] == 1  # broadcast over the heads
    assert torch.isfinite(out["prefix_out"]).all()  # the masked view's queries see nothing: zeros, not NaN
    out["loss"].backward()
    assert all(torch.isfinite(p.grad).all() for p in policy.parameters() if p.grad is not None)
