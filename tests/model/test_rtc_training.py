"""Training-time real-time chunking (--policy.rtc_training_max_delay, rtc_mode="trained"): the clean
prefix and per-token time in training, its loss mask, the delays drawn, sampling with the prefix
held fixed; and without it, every plain path exactly as it was before (values saved from main)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from pirecon.batch import synthetic_batch
from pirecon.configs.policy import PolicyConfig
from pirecon.errors import ConfigError, InputError
from pirecon.model import rtc
from pirecon.model.gemma import AdaRMSNorm
from pirecon.model.pi0 import Pi0Policy, trimmed

DATA = Path(__file__).parent / "data"


def _golden_module():
    spec = importlib.util.spec_from_file_location("make_plain_path_golden", DATA / "make_plain_path_golden.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny(kind: str, max_delay: int = 0, **kw) -> Pi0Policy:
    torch.manual_seed(0)
    kw = {"chunk_size": 6, "n_action_steps": 3, "max_action_dim": 4, "num_inference_steps": 4, **kw}
    policy = Pi0Policy(PolicyConfig(type=kind, variant="tiny", rtc_training_max_delay=max_delay, **kw))
    with torch.no_grad():  # Pi0.5's adaRMS projections start at zero: give them values, as training would
        for module in policy.modules():
            if isinstance(module, AdaRMSNorm):
                module.dense.weight.normal_(std=0.2)
    return policy


# -- without the flag: bit for bit what main computed ------------------------------------------------

@pytest.mark.parametrize("kind", ["pi0", "pi05"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_without_the_flag_loss_gradients_and_sampling_are_the_values_saved_before(kind, dtype):
    """tests/model/data/plain_path_golden.safetensors holds what main (619928e, before this feature)
    computed: loss, gradients, the random stream compute_loss consumes, plain / uncached / guided
    sampling. Exact on the torch version and CPU kind that wrote it; elsewhere kernels may round
    differently, so there the check is to float tolerance."""
    golden = _golden_module()
    with safe_open(str(golden.OUT), "pt") as f:
        meta = f.metadata()
        saved = {k[len(f"{kind}.{dtype}."):]: f.get_tensor(k) for k in f.keys() if k.startswith(f"{kind}.{dtype}.")}
    exact = meta == {"torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    now = golden.values(kind, dtype)
    assert set(now) == set(saved) and len(saved) == 9
    for name, value in now.items():
        if exact:
            assert torch.equal(value.float(), saved[name]), name
        else:
            assert torch.allclose(value.float(), saved[name], rtol=1e-3, atol=1e-4), name


# -- training ------------------------------------------------------------------------------------------

def test_delays_are_uniform_in_0_to_D_and_follow_the_generator():
    policy = tiny("pi0", max_delay=3)
    delays = policy.sample_delays(4000, "cpu", generator=torch.Generator().manual_seed(0))
    assert delays.dtype == torch.int64 and delays.shape == (4000,)
    assert int(delays.min()) == 0 and int(delays.max()) == 3
    counts = torch.bincount(delays, minlength=4)
    assert ((counts > 900) & (counts < 1100)).all(), counts  # 1000 each expected
    again = policy.sample_delays(4000, "cpu", generator=torch.Generator().manual_seed(0))
    assert torch.equal(delays, again)
    assert not torch.equal(delays, policy.sample_delays(4000, "cpu", generator=torch.Generator().manual_seed(1)))


@pytest.mark.parametrize("max_delay", [-1, 6, 9])
def test_the_flag_must_be_below_the_chunk(max_delay):
    with pytest.raises(ConfigError, match=rf"--policy.rtc_training_max_delay={max_delay}: expected 0 <= delay < "
                                          r"chunk_size \(6\)"):
        tiny("pi0", max_delay=max_delay)


def test_compute_loss_draws_noise_then_time_then_delays():
    policy = tiny("pi0", max_delay=4)
    batch = synthetic_batch(policy.config, 3, action_dim=4)
    torch.manual_seed(7)
    noise = torch.randn(3, 6, 4)
    time = policy.sample_time(3, "cpu")
    delays = torch.randint(0, 5, (3,))
    with torch.no_grad():
        explicit = policy.compute_loss(batch, noise=noise, time=time, delays=delays)["loss"]
        torch.manual_seed(7)
        drawn = policy.compute_loss(batch)["loss"]
    assert torch.equal(explicit, drawn)


@pytest.mark.parametrize("reduction, expected", [
    # real dims (1) of the steps outside each prefix: example 0 (d=2) steps 2, 3; example 1 (d=0) steps
    # 0..3 but step 3 is padding; u = noise - actions = 9, 18, 27, 36 at steps 0..3
    ("real", (27**2 + 36**2 + 9**2 + 18**2 + 27**2) / 5),
    # every dim (the padded one has u = 2 - 0) of the steps outside each prefix, padding included
    ("all", (27**2 + 36**2 + 9**2 + 18**2 + 27**2 + 36**2 + 6 * 2**2) / 12),
])
def test_the_loss_leaves_out_the_clean_prefix(monkeypatch, reduction, expected):
    """A stand-in velocity of 0 makes the per-element loss u^2 = (noise - actions)^2, known by hand;
    the inputs the model sees are checked too: the prefix clean at time 0, the rest noised at t."""
    policy = tiny("pi0", loss_reduction=reduction, chunk_size=4, n_action_steps=4, max_action_dim=2)
    batch = synthetic_batch(policy.config, 2, action_dim=1)
    batch.actions = torch.tensor([[[1.0], [2.0], [3.0], [4.0]]] * 2)
    batch.action_is_pad = torch.tensor([[False] * 4, [False, False, False, True]])
    noise = torch.tensor([[[10.0, 2.0], [20.0, 2.0], [30.0, 2.0], [40.0, 2.0]]] * 2)
    time = torch.tensor([0.25, 0.5])
    seen = {}

    def velocity_joint(prefix, state, x_t, time):
        seen.update(x_t=x_t, time=time)
        return torch.zeros_like(x_t), torch.zeros(2, 1, 1)

    monkeypatch.setattr(policy, "velocity_joint", velocity_joint)
    # trim=False: the stand-in returns no real prefix states to lay back out.
    loss = policy.compute_loss(batch, noise=noise, time=time, delays=torch.tensor([2, 0]), trim=False)["loss"]
    assert loss.item() == pytest.approx(expected)
    assert seen["time"].tolist() == [[0.0, 0.0, 0.25, 0.25], [0.5] * 4]
    assert seen["x_t"][0, :2].tolist() == [[1.0, 0.0], [2.0, 0.0]]  # the ground truth, no noise
    assert seen["x_t"][0, 2].tolist() == [0.25 * 30 + 0.75 * 3, 0.25 * 2]
    assert seen["x_t"][1, 0].tolist() == [0.5 * 10 + 0.5 * 1, 0.5 * 2]


@pytest.mark.parametrize("kind", ["pi0", "pi05"])
def test_per_token_time_reaches_every_action_token(kind):
    """A (B, H) time equal along H gives the (B,) time's velocity; a different time on the prefix
    tokens changes it (Pi0: the time MLP per token; Pi0.5: adaRMS per token)."""
    policy = tiny(kind).eval()
    batch = synthetic_batch(policy.config, 2, action_dim=4)
    x = torch.randn(2, 6, 4)
    time = torch.tensor([0.3, 0.9])
    with torch.no_grad():
        prefix = policy.embed_prefix(batch)
        kv = policy.prefix_cache(prefix)
        scalar = policy.velocity_cached(prefix, kv, batch.state, x, time)
        uniform = policy.velocity_cached(prefix, kv, batch.state, x, time[:, None].expand(2, 6))
        clean = rtc.per_token_time(time, torch.tensor([[True, True, False, False, False, False]] * 2))
        prefixed = policy.velocity_cached(prefix, kv, batch.state, x, clean)
        joint = policy.velocity_joint(prefix, batch.state, x, clean)[0]
    assert torch.allclose(uniform, scalar, atol=1e-5)
    assert (prefixed - scalar).abs().max() > 1e-3
    assert torch.allclose(joint, prefixed, atol=1e-5)


def test_adarms_with_a_condition_per_token_modulates_each_token_by_its_own():
    torch.manual_seed(0)
    norm = AdaRMSNorm(8, 5)
    torch.nn.init.normal_(norm.dense.weight)
    x, cond = torch.randn(2, 3, 8), torch.randn(2, 3, 5)
    out, gate = norm(x, cond)
    assert out.shape == (2, 3, 8) and gate.shape == (2, 3, 8)
    for i in range(3):  # token i as if the whole sequence had token i's condition
        alone, alone_gate = norm(x, cond[:, i])
        assert torch.allclose(out[:, i], alone[:, i], atol=1e-6)
        assert torch.allclose(gate[:, i], alone_gate[:, 0], atol=1e-6)
    assert (out[:, 0] - norm(x, cond[:, 1])[0][:, 0]).abs().max() > 1e-2  # the conditions differ
    with pytest.raises(ValueError, match="a per-token condition of 2 tokens for 3 tokens"):
        norm(x, cond[:, :2])


@pytest.mark.parametrize("kind", ["pi0", "pi05"])
def test_training_with_the_flag_backpropagates_through_per_token_time(kind):
    policy = tiny(kind, max_delay=3).train()
    batch = synthetic_batch(policy.config, 2, action_dim=4)
    torch.manual_seed(1)
    loss = policy.compute_loss(batch)["loss"]
    loss.backward()
    assert torch.isfinite(loss)
    name = "action_time_mlp_in.weight" if kind == "pi0" else "time_mlp_in.weight"
    assert policy.get_parameter(name).grad.abs().sum() > 0


# -- sampling -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["pi0", "pi05"])
@pytest.mark.parametrize("action_dim", [4, 3])
def test_trained_sampling_returns_the_prefix_exactly_and_integrates_the_rest(kind, action_dim):
    policy = tiny(kind, max_delay=3).eval()
    batch = synthetic_batch(policy.config, 2, action_dim=action_dim)
    gen = torch.Generator().manual_seed(4)
    noise, previous = torch.randn(2, 6, 4, generator=gen), torch.randn(2, 4, action_dim, generator=gen)
    out = policy.sample_actions(batch, noise=noise, prefix_actions=previous, inference_delay=2, rtc_mode="trained")
    assert out.shape == (2, 6, action_dim)
    assert torch.equal(out[:, :2], previous[:, :2])
    # The loop written out: each step starts from the prefix (padded dims 0) at time 0, the rest at t.
    with torch.no_grad():
        prefix = policy.embed_prefix(trimmed(batch))
        kv = policy.prefix_cache(prefix)
        x = noise.clone()
        for step in range(4):
            x[:, :2] = 0.0
            x[:, :2, :action_dim] = previous[:, :2]
            t = 1.0 - step * 0.25
            time = torch.tensor([[0.0, 0.0] + [t] * 4] * 2)
            x = x - 0.25 * policy.velocity_cached(prefix, kv, batch.state, x, time)
    assert torch.allclose(out[:, 2:], x[:, 2:, :action_dim], atol=1e-6)
    plain = policy.sample_actions(batch, noise=noise)
    assert (plain[:, 2:] - out[:, 2:]).abs().max() > 1e-4  # the prefix steers the rest


@pytest.mark.parametrize("kind", ["pi0", "pi05"])
def test_trained_mode_with_no_delay_is_the_plain_sampler(kind):
    policy = tiny(kind, max_delay=3).eval()
    batch = synthetic_batch(policy.config, 1, action_dim=4)
    noise = torch.randn(1, 6, 4)
    assert torch.equal(policy.sample_actions(batch, noise=noise, prefix_actions=torch.ones(1, 3, 4),
                                             inference_delay=0, rtc_mode="trained"),
                       policy.sample_actions(batch, noise=noise))


def test_trained_mode_refuses_what_the_policy_never_learnt():
    batch = synthetic_batch(tiny("pi0").config, 1, action_dim=4)
    previous = torch.zeros(1, 4, 4)
    with pytest.raises(InputError, match=r"rtc_mode='trained' .* never learnt \(rtc_training_max_delay=0\)"):
        tiny("pi0").sample_actions(batch, prefix_actions=previous, inference_delay=1, rtc_mode="trained")
    policy = tiny("pi0", max_delay=2)
    with pytest.raises(InputError, match=r"inference_delay=3: expected 0 <= delay <= 2 .* rtc_training_max_delay=2"):
        policy.sample_actions(batch, prefix_actions=previous, inference_delay=3, rtc_mode="trained")
    with pytest.raises(InputError, match=r"execution_horizon=3: the trained mode .* has no execution horizon"):
        policy.sample_actions(batch, prefix_actions=previous, inference_delay=1, execution_horizon=3,
                              rtc_mode="trained")
    with pytest.raises(InputError, match=r"rtc_mode='prefix': expected one of \['guided', 'trained'\]"):
        policy.sample_actions(batch, prefix_actions=previous, inference_delay=1, rtc_mode="prefix")


def test_delays_given_by_the_caller_are_checked():
    policy = tiny("pi0")
    batch = synthetic_batch(policy.config, 2, action_dim=4)
    with pytest.raises(ValueError, match=r"delays \[1, 6\]: expected one per example in 0 \.\. 5"):
        policy.compute_loss(batch, delays=torch.tensor([1, 6]))
