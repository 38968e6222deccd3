import pytest
import torch

from pirecon import PolicyConfig
from pirecon.batch import synthetic_batch
from pirecon.errors import ConfigError, InputError
from pirecon.model.pi0 import Pi0Policy, sinusoidal_time_embedding


def _open_gates(policy: Pi0Policy) -> None:
    """Pi0.5's adaRMS projections start at zero (the expert then ignores the prefix): give them
    values, as training would, so tests exercise the full path."""
    with torch.no_grad():
        for m in policy.modules():
            if hasattr(m, "dense"):
                m.dense.weight.normal_(std=0.2)


def tiny(kind: str, **kw) -> Pi0Policy:
    policy = Pi0Policy(PolicyConfig(type=kind, variant="tiny", **kw))
    _open_gates(policy)
    return policy


def test_time_embedding_matches_reference_formula():
    t = torch.tensor([0.0, 0.5, 1.0])
    emb = sinusoidal_time_embedding(t, 8)
    fraction = torch.linspace(0, 1, 4, dtype=torch.float64)
    period = 4e-3 * (4.0 / 4e-3) ** fraction
    angle = 2 * torch.pi * t.double()[:, None] / period
    assert torch.allclose(emb, torch.cat([angle.sin(), angle.cos()], -1).float())


@pytest.mark.parametrize("kind", ["pi0", "pi05"])
def test_cached_sampling_equals_recomputing_the_prefix(kind):
    policy = tiny(kind).eval()
    batch = synthetic_batch(policy.config, 2, action_dim=7, missing_views=1, text_lengths=[4, 20])
    noise = torch.randn(2, policy.config.chunk_size, policy.config.max_action_dim)
    cached = policy.sample_actions(batch, noise=noise)
    recomputed = policy.sample_actions(batch, noise=noise, use_cache=False)
    assert cached.shape == (2, policy.config.chunk_size, 7)
    assert torch.allclose(cached, recomputed, atol=1e-5)
    # The images matter (so the equality above is not trivial) ...
    batch.images[:, 0] = -batch.images[:, 0]
    assert not torch.allclose(policy.sample_actions(batch, noise=noise), cached, atol=1e-4)


def test_sampling_runs_the_euler_loop_with_the_given_steps():
    policy = tiny("pi0").eval()
    batch = synthetic_batch(policy.config, 1)
    noise = torch.randn(1, policy.config.chunk_size, policy.config.max_action_dim)
    calls = []
    original = policy.velocity_cached

    def spy(prefix, kv, state, x_t, time):
        calls.append(time.item())
        return original(prefix, kv, state, x_t, time)

    policy.velocity_cached = spy
    policy.sample_actions(batch, noise=noise, num_steps=4)
    assert calls == pytest.approx([1.0, 0.75, 0.5, 0.25])
    calls.clear()
    policy.sample_actions(batch, noise=noise)
    assert len(calls) == policy.config.num_inference_steps == 10


def test_loss_follows_flow_matching_convention():
    """With v_t forced to zero the loss is mean((noise - actions)^2) over real dims and steps."""
    policy = tiny("pi0")
    batch = synthetic_batch(policy.config, 2, action_dim=5)
    batch.action_is_pad[:, -10:] = True
    with torch.no_grad():
        policy.action_out_proj.weight.zero_()
        policy.action_out_proj.bias.zero_()
    noise = torch.randn_like(batch.actions)
    loss = policy.compute_loss(batch, noise=noise, time=torch.tensor([0.2, 0.9]))["action_loss"]
    target = (noise - batch.actions)[:, :-10, :5]
    assert loss.item() == pytest.approx((target ** 2).mean().item(), rel=1e-5)


@pytest.mark.parametrize("kind", ["pi0", "pi05"])
def test_tiny_policy_overfits_one_batch(kind):
    torch.manual_seed(0)
    policy = Pi0Policy(PolicyConfig(type=kind, variant="tiny", chunk_size=8, n_action_steps=8,
                                    image_resolution=56))
    batch = synthetic_batch(policy.config, 2, action_dim=4)
    noise = torch.randn_like(batch.actions)
    time = torch.tensor([0.4, 0.6])
    opt = torch.optim.Adam(policy.parameters(), lr=3e-3)
    first = None
    for _ in range(300):
        loss = policy.compute_loss(batch, noise=noise, time=time)["action_loss"]
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first / 10, (first, loss.item())


def test_bf16_forward_is_close_to_float32():
    policy = tiny("pi05")
    batch = synthetic_batch(policy.config, 2, action_dim=7)
    noise = torch.randn_like(batch.actions)
    time = torch.tensor([0.3, 0.8])
    ref = policy.compute_loss(batch, noise=noise, time=time)["loss"]
    policy.apply_dtype(torch.bfloat16)
    assert policy.backbone.vlm.layers[0].q_proj.weight.dtype == torch.bfloat16
    assert policy.backbone.vlm.layers[0].input_norm.weight.dtype == torch.float32
    assert policy.backbone.vision.patch_embed.weight.dtype == torch.float32
    assert policy.action_in_proj.weight.dtype == torch.float32
    low = policy.compute_loss(batch, noise=noise, time=time)["loss"]
    assert low.dtype == torch.float32
    assert abs(low.item() - ref.item()) / ref.item() < 0.03
    actions = policy.sample_actions(batch, noise=noise)
    assert torch.isfinite(actions).all()


@pytest.mark.parametrize("action_dim,max_dim", [(7, 32), (14, 32), (44, 44)])
def test_action_dims(action_dim, max_dim):
    policy = tiny("pi0", max_action_dim=max_dim, max_state_dim=max_dim, chunk_size=6, n_action_steps=6)
    batch = synthetic_batch(policy.config, 2, action_dim=action_dim)
    loss = policy.compute_loss(batch)["loss"]
    assert torch.isfinite(loss)
    assert policy.sample_actions(batch).shape == (2, 6, action_dim)


@pytest.mark.parametrize("resolution,tokens", [(224, 256), (336, 576), (56, 16)])
def test_token_count_derived_from_resolution(resolution, tokens):
    cfg = PolicyConfig(variant="tiny", image_resolution=resolution, camera_names=("a", "b"), chunk_size=4,
                       n_action_steps=4)
    assert cfg.tokens_per_image == tokens
    policy = Pi0Policy(cfg)
    batch = synthetic_batch(cfg, 1)
    assert policy.embed_prefix(batch).num_image_tokens == 2 * tokens


def test_bad_inputs_name_the_field():
    with pytest.raises(ConfigError, match="image_resolution=100.*patch size 14"):
        PolicyConfig(variant="tiny", image_resolution=100)
    with pytest.raises(ConfigError, match="--policy.variant='huge'.*tiny"):
        PolicyConfig(variant="huge")
    with pytest.raises(ConfigError, match="--policy.type"):
        PolicyConfig(type="pi1")
    policy = tiny("pi0", chunk_size=4, n_action_steps=4)
    batch = synthetic_batch(policy.config, 1)
    batch.images = batch.images[..., :112, :112]
    with pytest.raises(InputError, match=r"batch.images has shape .*expected \(batch, 3 views .* 224, 224\)"):
        policy.compute_loss(batch)
    batch = synthetic_batch(policy.config, 1)
    batch.actions = torch.zeros(1, 4, 40)
    with pytest.raises(InputError, match="max_action_dim=32"):
        policy.compute_loss(batch)
    batch = synthetic_batch(policy.config, 1)
    batch.state = torch.zeros(1, 33)
    with pytest.raises(InputError, match="max_state_dim=32"):
        policy.sample_actions(batch)


def test_freeze_options_count_trainable_parameters():
    def trainable(**kw):
        return sum(p.numel() for p in Pi0Policy(PolicyConfig(variant="tiny", **kw)).parameters() if p.requires_grad)

    full = trainable()
    policy = Pi0Policy(PolicyConfig(variant="tiny"))
    vision = sum(p.numel() for p in policy.backbone.vision.parameters())
    vlm_side = vision + sum(p.numel() for p in policy.backbone.projector.parameters()) + sum(
        p.numel() for p in policy.backbone.vlm.parameters())
    assert trainable(freeze_vision_encoder=True) == full - vision
    assert trainable(train_expert_only=True) == full - vlm_side


def test_loss_reduction_real_and_all():
    """real: mean over real dims and unpadded steps; all: over everything (openpi). Checked against
    the per-element losses computed from the same noise and time."""
    from pirecon.batch import synthetic_batch
    from pirecon.configs.policy import PolicyConfig
    from pirecon.model.pi0 import Pi0Policy

    torch.manual_seed(0)
    real = Pi0Policy(PolicyConfig(variant="tiny", chunk_size=4, n_action_steps=4, max_action_dim=8))
    every = Pi0Policy(PolicyConfig(variant="tiny", chunk_size=4, n_action_steps=4, max_action_dim=8,
                                   loss_reduction="all"))
    every.load_state_dict(real.state_dict())
    batch = synthetic_batch(real.config, 2, action_dim=3)
    batch.action_is_pad = torch.tensor([[False, False, False, True], [False] * 4])
    noise, time = torch.randn(2, 4, 8), torch.tensor([0.3, 0.8])
    t = time[:, None, None]
    actions = torch.nn.functional.pad(batch.actions.float(), (0, 8 - batch.actions.shape[-1]))
    with torch.no_grad():
        v, _ = real.velocity_joint(real.embed_prefix(batch), batch.state.float(), t * noise + (1 - t) * actions, time)
        per_element = (noise - actions - v) ** 2
        a = real.compute_loss(batch, noise=noise, time=time)["loss"]
        b = every.compute_loss(batch, noise=noise, time=time)["loss"]
    kept = per_element[..., :3].clone()
    kept[0, 3] = 0
    assert torch.allclose(a, kept.sum() / (7 * 3), rtol=1e-5)
    assert torch.allclose(b, per_element.mean(), rtol=1e-5)


@pytest.mark.parametrize("kind", ["pi0", "pi05"])
def test_sampling_skips_what_the_whole_batch_masks_with_the_same_result(kind):
    from pirecon.batch import synthetic_batch
    from pirecon.configs.policy import PolicyConfig
    from pirecon.model.pi0 import Pi0Policy, trimmed

    torch.manual_seed(0)
    policy = Pi0Policy(PolicyConfig(type=kind, variant="tiny")).eval()
    batch = synthetic_batch(policy.config, 2, missing_views=1, text_lengths=[5, 9])
    short = trimmed(batch)
    assert short.images.shape[1] == 2 and short.tokens.shape[1] == 9  # the third view and the padding are gone
    noise = torch.randn(2, policy.config.chunk_size, policy.config.max_action_dim)
    reference = policy.sample_actions(batch, noise=noise, trim=False)
    assert torch.allclose(policy.sample_actions(batch, noise=noise), reference, atol=1e-5)
    one_view_missing_in_one_sample = synthetic_batch(policy.config, 2)
    one_view_missing_in_one_sample.image_masks[0, 1] = False
    assert trimmed(one_view_missing_in_one_sample).images.shape[1] == 3  # not masked for the whole batch
