"""The ReconVLA-style reconstruction head (`pirecon.model.recon`)."""

from __future__ import annotations

import importlib.util
import sys
import types
import warnings

import pytest
import torch
import torch.nn.functional as F

from pirecon import PolicyConfig
from pirecon.batch import synthetic_batch
from pirecon.errors import ConfigError
from pirecon.model.pi0 import Pi0Policy
from pirecon.configs.recon import ReconConfig
from pirecon.model.recon import ReconHead, reconstruction_grid
from pirecon.model.recon_targets import crop_and_resize, fold, unfold

CAMS = ("base_0_rgb", "left_wrist_0_rgb", "right_wrist_0_rgb")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models on a shared 2-core machine run far faster single-threaded."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def policy_config(res: int = 56, **kw) -> PolicyConfig:
    # Short prompt and chunk: the recon head does not care, and the tests stay fast.
    return PolicyConfig(type="pi05", variant="tiny", image_resolution=res, tokenizer_max_length=12,
                        chunk_size=4, n_action_steps=4, **kw)


def smooth_images(b: int, v: int, res: int, seed: int = 1) -> torch.Tensor:
    """Low-frequency images (synthetic_batch's i.i.d. pixels average out to ~0 once down-sized)."""
    gen = torch.Generator().manual_seed(seed)
    low = torch.rand(b * v, 3, 4, 4, generator=gen) * 2 - 1
    return F.interpolate(low, size=(res, res), mode="bilinear").reshape(b, v, 3, res, res)


def setup(res=56, b=2, views=("base_0_rgb",), seed=0, missing_views=0, **recon):
    pc = policy_config(res)
    policy = Pi0Policy(pc)
    batch = synthetic_batch(pc, b, seed=seed, missing_views=missing_views)
    batch.images = torch.where(batch.image_masks[:, :, None, None, None], smooth_images(b, len(CAMS), res), -1.0)
    head = ReconHead(ReconConfig(enable=True, views=views, **recon), pc)
    return policy, batch, head


def randomize(head: ReconHead, seed: int = 0) -> None:
    """Give the zero-initialised (adaLN-Zero) layers values so that the condition matters."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in head.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)


def fixed_noise(head: ReconHead, b: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    nv, r = len(head.cfg.views), head.cfg.noise_repeats
    noise = torch.randn(b, nv, r, head.num_target_tokens, head.target.channels, generator=gen)
    if head.cfg.diffusion == "ddpm":
        time = torch.randint(0, 1000, (b, nv, r), generator=gen)
    else:
        time = torch.rand(b, nv, r, generator=gen)
    return noise, time


# -- shapes, sizes, init ----------------------------------------------------------------------------
@pytest.mark.parametrize("res,grid", [(56, 4), (112, 8)])
@pytest.mark.parametrize("views", [CAMS[:1], CAMS[:2], CAMS])
def test_shapes_for_views_and_resolutions(res, grid, views):
    policy, batch, head = setup(res, views=views, pixel_patch=2)
    assert head.grid == grid and head.num_target_tokens == grid * grid
    out = policy.compute_loss(batch)
    loss = head(out["prefix_out"], out["num_image_tokens"], batch)["recon_loss"]
    assert loss.dim() == 0 and torch.isfinite(loss)
    rec = head.reconstruct(out["prefix_out"], out["num_image_tokens"], batch, steps=2)
    size = grid * 2
    assert rec["target"].shape == rec["reconstruction"].shape == (2, len(views), 3, size, size)
    assert rec["input"].shape == (2, len(views), 3, res, res)
    assert rec["views"] == list(views) and rec["valid"].all()
    assert rec["reconstruction"].abs().max() <= 1


def test_default_sizes_follow_the_vlm_width():
    tiny = ReconHead(ReconConfig(), policy_config())
    assert (tiny.hidden_dim, tiny.num_heads) == (64, 1)
    full = ReconHead(ReconConfig(), PolicyConfig(variant="full"))  # only the head is built
    assert (full.hidden_dim, full.num_heads, full.grid, len(full.dit.blocks)) == (1024, 16, 16, 3)
    assert ReconHead(ReconConfig(), PolicyConfig(variant="full", image_resolution=336)).grid == 24


@pytest.mark.parametrize("diffusion", ["ddpm", "flow"])
def test_zero_init_head_predicts_zero_so_the_loss_is_the_target_energy(diffusion):
    policy, batch, head = setup(diffusion=diffusion, noise_repeats=2)
    out = policy.compute_loss(batch)
    noise, time = fixed_noise(head, 2)
    loss = head(out["prefix_out"], out["num_image_tokens"], batch, noise=noise, time=time)["recon_loss"]
    if diffusion == "ddpm":  # epsilon prediction
        expected = (noise ** 2).mean()
    else:  # velocity noise - x0, x0 = the view down-sized to 8x8 and folded
        x0 = fold(F.avg_pool2d(batch.images[:, 0], 7), 4)[:, None, None]
        expected = ((noise - x0) ** 2).mean()
    assert torch.allclose(loss, expected, atol=1e-5)


# -- gradients and training -------------------------------------------------------------------------
def test_recon_gradients_reach_the_backbone():
    policy, batch, head = setup()
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    # adaLN-Zero: step 1 opens the output layer, step 2 the modulations; then the condition
    # (and so the backbone) gets gradients.
    for _ in range(3):
        opt.zero_grad()
        policy.zero_grad()
        out = policy.compute_loss(batch)
        head(out["prefix_out"], out["num_image_tokens"], batch)["recon_loss"].backward()
        opt.step()
    vlm_grad = policy.backbone.vlm.layers[0].q_proj.weight.grad
    assert vlm_grad is not None and vlm_grad.abs().sum() > 0
    assert policy.backbone.vision.patch_embed.weight.grad.abs().sum() > 0
    assert all(p.grad is not None for p in head.parameters())


@pytest.fixture(scope="module")
def overfit():
    """Adam on head + policy against the recon loss of one batch (ddpm, the default)."""
    torch.manual_seed(0)
    policy, batch, head = setup(noise_repeats=4)
    opt = torch.optim.Adam(list(head.parameters()) + list(policy.parameters()), lr=2e-3)
    noise, time = fixed_noise(head, 2, seed=5)

    def eval_loss():
        with torch.no_grad():
            out = policy.compute_loss(batch)
            return head(out["prefix_out"], out["num_image_tokens"], batch, noise=noise, time=time)["recon_loss"].item()

    before = eval_loss()
    for _ in range(100):
        out = policy.compute_loss(batch)
        loss = head(out["prefix_out"], out["num_image_tokens"], batch)["recon_loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    return policy, batch, head, before, eval_loss()


def test_recon_loss_falls_when_overfitting_one_batch(overfit):
    *_, before, after = overfit
    assert after * 3 <= before, (before, after)


def test_reverse_sampling_of_an_overfit_head_approaches_the_target(overfit):
    policy, batch, head, *_ = overfit
    with torch.no_grad():
        out = policy.compute_loss(batch)
    rec = head.reconstruct(out["prefix_out"], out["num_image_tokens"], batch, steps=20,
                           generator=torch.Generator().manual_seed(0))
    target, recon = rec["target"], rec["reconstruction"]
    assert recon.shape == target.shape == (2, 1, 3, 8, 8)
    noise = torch.randn(target.shape, generator=torch.Generator().manual_seed(1)).clamp(-1, 1)
    assert F.mse_loss(recon, target) < 0.5 * F.mse_loss(noise, target)


@pytest.mark.parametrize("diffusion", ["ddpm", "flow"])
def test_sampler_with_an_oracle_denoiser_lands_on_the_target(diffusion):
    """DDIM (ddpm) / Euler (flow) fed the exact epsilon / velocity of the true x0 return x0."""
    policy, batch, head = setup(diffusion=diffusion)
    out = policy.compute_loss(batch)
    x0 = fold(F.avg_pool2d(batch.images[:, 0], 7), 4)  # the full view at 8x8, folded to 4x4 tokens
    abar = head.alphas_cumprod

    def oracle(x_t, t, cond):
        if diffusion == "ddpm":
            a = abar[t.long()][:, None, None]
            return (x_t - a.sqrt() * x0) / (1 - a).sqrt()
        return (x_t - x0) / (t / 1000)[:, None, None]  # flow time is passed on the 0..1000 scale

    head._denoise = oracle
    rec = head.reconstruct(out["prefix_out"], out["num_image_tokens"], batch, steps=5,
                           generator=torch.Generator().manual_seed(0))
    assert torch.allclose(rec["reconstruction"], rec["target"], atol=1e-4)
    assert torch.allclose(rec["target"][:, 0], F.avg_pool2d(batch.images[:, 0], 7), atol=1e-5)


# -- multi-view correctness -------------------------------------------------------------------------
def test_each_view_is_conditioned_on_its_own_tokens():
    policy, batch, multi = setup(views=CAMS[:2])
    randomize(multi)
    with torch.no_grad():
        out = policy.compute_loss(batch)
    prefix, n_img = out["prefix_out"], out["num_image_tokens"]
    noise, time = fixed_noise(multi, 2)
    losses, valid = multi.pair_losses(prefix, n_img, batch, noise=noise, time=time)
    assert valid.all() and losses.shape == (2, 2)
    # ... equal to single-view heads with the same weights on the same pairs
    for k, name in enumerate(CAMS[:2]):
        single = ReconHead(ReconConfig(enable=True, views=(name,)), policy.config)
        single.load_state_dict(multi.state_dict())
        alone, _ = single.pair_losses(prefix, n_img, batch, noise=noise[:, k:k + 1], time=time[:, k:k + 1])
        assert torch.allclose(alone[:, 0], losses[:, k], atol=1e-6)
    # Swap views 0 and 1 (images and their tokens) and the view list: the per-pair losses follow.
    t = policy.config.tokens_per_image
    order = [1, 0, 2]
    swapped_prefix = torch.cat([prefix[:, :n_img].reshape(2, 3, t, -1)[:, order].reshape(2, n_img, -1),
                                prefix[:, n_img:]], dim=1)
    swapped = type(batch)(**{**batch.__dict__, "images": batch.images[:, order],
                             "image_masks": batch.image_masks[:, order]})
    rev = ReconHead(ReconConfig(enable=True, views=(CAMS[1], CAMS[0])), policy.config)
    rev.load_state_dict(multi.state_dict())
    follow, _ = rev.pair_losses(swapped_prefix, n_img, swapped, noise=noise, time=time)
    assert torch.allclose(follow, losses, atol=1e-6)
    # Swapping the tokens alone (images kept) changes the losses: the condition matters.
    mismatched, _ = multi.pair_losses(swapped_prefix, n_img, batch, noise=noise, time=time)
    assert not torch.allclose(mismatched, losses, atol=1e-3)
    # Samples stay with their own rows too.
    flipped = type(batch)(**{**batch.__dict__, "images": batch.images.flip(0),
                             "image_masks": batch.image_masks.flip(0), "token_masks": batch.token_masks.flip(0)})
    by_sample, _ = multi.pair_losses(prefix.flip(0), n_img, flipped, noise=noise.flip(0), time=time.flip(0))
    assert torch.allclose(by_sample, losses.flip(0), atol=1e-6)


@pytest.mark.parametrize("text_condition", ["pooled", "none"])
def test_pooled_text_condition_reads_only_the_real_prompt_tokens(text_condition):
    policy, batch, head = setup(text_condition=text_condition)
    randomize(head)
    batch.token_masks[:, 6:] = False  # prompt tokens 6.. are padding
    with torch.no_grad():
        out = policy.compute_loss(batch)
    prefix, n_img = out["prefix_out"], out["num_image_tokens"]
    noise, time = fixed_noise(head, 2)
    base, _ = head.pair_losses(prefix, n_img, batch, noise=noise, time=time)
    padded, real = prefix.clone(), prefix.clone()
    padded[:, n_img + 6:] += 5.0
    real[:, n_img:n_img + 6] += torch.randn(real[:, n_img:n_img + 6].shape)
    assert torch.allclose(head.pair_losses(padded, n_img, batch, noise=noise, time=time)[0], base)
    moved = not torch.allclose(head.pair_losses(real, n_img, batch, noise=noise, time=time)[0], base, atol=1e-4)
    assert moved == (text_condition == "pooled")


def test_missing_views_are_skipped():
    policy, batch, head = setup(views=CAMS)
    randomize(head)
    batch.image_masks[0, 1] = False
    batch.image_masks[:, 2] = False
    out = policy.compute_loss(batch)
    prefix, n_img = out["prefix_out"], out["num_image_tokens"]
    prefix.retain_grad()
    noise, time = fixed_noise(head, 2)
    losses, valid = head.pair_losses(prefix, n_img, batch, noise=noise, time=time)
    assert valid.tolist() == [[True, False, False], [True, True, False]]
    assert (losses[~valid] == 0).all() and (losses[valid] > 0).all()
    loss = head(prefix, n_img, batch, noise=noise, time=time)["recon_loss"]
    assert torch.allclose(loss, losses[valid].mean())
    loss.backward()
    t = policy.config.tokens_per_image
    grad = prefix.grad[:, :n_img].reshape(2, 3, t, -1).abs().sum((2, 3))
    assert (grad[~valid] == 0).all() and (grad[valid] > 0).all()
    rec = head.reconstruct(prefix.detach(), n_img, batch, steps=2)
    assert rec["valid"].tolist() == valid.tolist() and (rec["reconstruction"][~valid] == 0).all()
    # No view at all: a zero loss that still backpropagates.
    batch.image_masks[:] = False
    empty = head(prefix.detach().requires_grad_(), n_img, batch)["recon_loss"]
    assert empty.item() == 0
    empty.backward()


# -- targets: crops, gaze, VAE ----------------------------------------------------------------------
def coordinate_image(res: int = 56) -> torch.Tensor:
    """(1, 3, res, res): channel 0 = column, 1 = row, 2 = constant."""
    rows, cols = torch.meshgrid(torch.arange(res).float(), torch.arange(res).float(), indexing="ij")
    return torch.stack([cols, rows, torch.ones_like(rows)])[None]


def test_crop_geometry_is_exact():
    img = coordinate_image(56)
    box = torch.tensor([[10 / 56, 20 / 56, 18 / 56, 28 / 56]])  # x0, y0, x1, y1 on pixel edges, 8x8 pixels
    crop = crop_and_resize(img, box, 8)
    assert torch.allclose(crop, img[..., 20:28, 10:18], atol=1e-4)
    big = torch.tensor([[8 / 56, 0.0, 24 / 56, 16 / 56]])  # 16x16 pixels -> 8x8 = 2x2 averages
    assert torch.allclose(crop_and_resize(img, big, 8), F.avg_pool2d(img[..., 0:16, 8:24], 2), atol=1e-4)
    full = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    assert torch.allclose(crop_and_resize(img, full, 8), F.avg_pool2d(img, 7), atol=1e-4)


def test_gaze_region_crops_each_frame_and_falls_back_with_one_warning():
    policy, batch, head = setup(region="gaze")
    img = coordinate_image(56) / 56
    batch.images[:, 0] = img
    batch.extras["observation.gaze_bbox"] = torch.tensor([[10 / 56, 20 / 56, 18 / 56, 28 / 56],
                                                          [float("nan")] * 4])
    out = policy.compute_loss(batch)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rec = head.reconstruct(out["prefix_out"], out["num_image_tokens"], batch, steps=1)
        head(out["prefix_out"], out["num_image_tokens"], batch)
        del batch.extras["observation.gaze_bbox"]
        rec_missing = head.reconstruct(out["prefix_out"], out["num_image_tokens"], batch, steps=1)
    assert len([w for w in caught if "gaze" in str(w.message)]) == 1
    assert torch.allclose(rec["target"][0, 0], img[0, :, 20:28, 10:18], atol=1e-5)
    assert torch.allclose(rec["target"][1, 0], F.avg_pool2d(img, 7)[0], atol=1e-5)  # NaN -> full view
    assert torch.allclose(rec_missing["target"][:, 0], F.avg_pool2d(img, 7).expand(2, -1, -1, -1), atol=1e-5)


def test_fold_unfold_layout():
    x = torch.arange(2 * 3 * 8 * 8).float().reshape(2, 3, 8, 8)
    tokens = fold(x, 4)
    assert tokens.shape == (2, 16, 12)
    # token (row 1, col 2) holds the 2x2 block at rows 2:4, cols 4:6 of every channel
    assert torch.equal(tokens[:, 1 * 4 + 2].reshape(2, 3, 2, 2), x[:, :, 2:4, 4:6])
    assert torch.equal(unfold(tokens, 4, 3), x)


class FakeVae(torch.nn.Module):
    """AutoencoderKL stand-in: 8x down-sampling to 4 latent channels, 3 down blocks + 1."""

    def __init__(self):
        super().__init__()
        self.config = types.SimpleNamespace(latent_channels=4, block_out_channels=[8, 8, 8, 8],
                                            scaling_factor=0.5, shift_factor=0.1)
        self.mix = torch.nn.Conv2d(3, 4, 1)

    def encode(self, x):
        mean = self.mix(F.avg_pool2d(x, 8))
        return types.SimpleNamespace(latent_dist=types.SimpleNamespace(mode=lambda: mean))

    def decode(self, z):
        return types.SimpleNamespace(sample=F.interpolate(z[:, :3], scale_factor=8))


def fake_diffusers(monkeypatch, loaded: list):
    module = types.ModuleType("diffusers")

    class AutoencoderKL:
        @staticmethod
        def from_pretrained(path, **kw):
            loaded.append((path, kw))
            return FakeVae()

    module.AutoencoderKL = AutoencoderKL
    monkeypatch.setitem(sys.modules, "diffusers", module)


def test_vae_target_folds_latents_to_the_grid(tmp_path, monkeypatch):
    (tmp_path / "vae").mkdir()
    (tmp_path / "vae" / "config.json").write_text("{}")
    loaded = []
    fake_diffusers(monkeypatch, loaded)
    policy, batch, head = setup(target="vae", vae_path=str(tmp_path))
    assert loaded == [(str(tmp_path), {"subfolder": "vae"})]
    # patch 14 / down-sampling 8 -> k=2: a 64 px crop, 8x8 latents folded 2x2 into the 4x4 grid
    assert (head.target.k, head.target.input_size, head.target.channels) == (2, 64, 16)
    assert not any(n.startswith("target") for n in head.state_dict())  # the frozen VAE is not saved
    out = policy.compute_loss(batch)
    loss = head(out["prefix_out"], out["num_image_tokens"], batch)["recon_loss"]
    assert torch.isfinite(loss)
    rec = head.reconstruct(out["prefix_out"], out["num_image_tokens"], batch, steps=2)
    assert rec["target"].shape == rec["reconstruction"].shape == (2, 1, 3, 64, 64)


def test_vae_errors(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="--recon.vae_path.*not found"):
        ReconHead(ReconConfig(target="vae", vae_path=str(tmp_path / "nope")), policy_config())
    with pytest.raises(ConfigError, match="--recon.vae_path"):
        ReconConfig(enable=True, target="vae")
    monkeypatch.setitem(sys.modules, "diffusers", None)  # `import diffusers` fails
    with pytest.raises(ConfigError, match="pip install diffusers"):
        ReconHead(ReconConfig(target="vae", vae_path=str(tmp_path)), policy_config())
    fake_diffusers(monkeypatch, [])
    with pytest.raises(ConfigError, match="does not hold a diffusers AutoencoderKL"):
        ReconHead(ReconConfig(target="vae", vae_path=str(tmp_path)), policy_config())


@pytest.mark.skipif(importlib.util.find_spec("diffusers") is not None, reason="diffusers is installed")
def test_vae_without_diffusers_installed(tmp_path):
    with pytest.raises(ConfigError, match="pip install diffusers"):
        ReconHead(ReconConfig(target="vae", vae_path=str(tmp_path)), policy_config())


# -- config -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("field,value", [
    ("target", "latents"), ("region", "box"), ("diffusion", "ddim"), ("text_condition", "tokens"),
    ("weight", -1.0), ("warmup_steps", -1), ("depth", 0), ("num_heads", 0), ("hidden_dim", 30),
    ("mlp_ratio", 0.0), ("pixel_patch", 0), ("noise_repeats", 0), ("sample_steps", 0), ("views", ()),
    ("views", ("base_0_rgb", "base_0_rgb")),
])
def test_config_errors_name_the_flag(field, value):
    with pytest.raises(ConfigError, match=f"--recon.{field}"):
        ReconConfig(**{field: value})


def test_unknown_view_names_the_flag_and_the_valid_views():
    with pytest.raises(ConfigError, match=r"--recon.views.*left_wrist_0_rgb"):
        ReconHead(ReconConfig(views=("top",)), policy_config())


def test_loss_weight_warmup():
    cfg = ReconConfig(weight=2.0, warmup_steps=10)
    assert [cfg.loss_weight(s) for s in (0, 5, 10, 50)] == [0.0, 1.0, 2.0, 2.0]
    assert ReconConfig(weight=0.5).loss_weight(0) == 0.5


def test_flag_parsing_round_trip():
    from pirecon.configs.parse import parse_flags
    cfg = parse_flags(["--views=[base_0_rgb,left_wrist_0_rgb]", "--hidden_dim=128", "--diffusion=flow"],
                      ReconConfig, config_path_flag=False)
    assert cfg.views == ("base_0_rgb", "left_wrist_0_rgb") and cfg.hidden_dim == 128 and cfg.diffusion == "flow"


# -- visualisation ----------------------------------------------------------------------------------
def test_reconstruction_grid_png(tmp_path):
    from PIL import Image
    policy, batch, head = setup(views=CAMS[1:], missing_views=1)  # the right wrist view is missing
    out = policy.compute_loss(batch)
    rec = head.reconstruct(out["prefix_out"], out["num_image_tokens"], batch, steps=2)
    assert rec["valid"].tolist() == [[True, False]] * 2
    path = reconstruction_grid(rec, tmp_path / "sub" / "grid.png")
    cell = 56 * 3  # 56 px views upscaled x3 to at least 128 px
    with Image.open(path) as img:
        assert img.size == (6 * cell + 7 * 2, 2 * cell + 3 * 2)
