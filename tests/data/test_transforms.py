"""Transforms: images, cameras, dims, prompts and the Preprocessor bundle on synthetic samples."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from pirecon.batch import Batch
from pirecon.configs.policy import PolicyConfig
from pirecon.data.normalize import Normalizer
from pirecon.data.tokenizer import load_tokenizer, train_tiny_tokenizer
from pirecon.data.transforms import (
    Preprocessor,
    discretize_state,
    format_prompt,
    prepare_image,
    resize_with_pad,
    tokenize_prompt,
)
from pirecon.errors import ConfigError, InputError

RES = 56
CHUNK = 4
CAMS = ("observation.images.ego_view", "observation.images.wrist")


def tiny_config(**kw) -> PolicyConfig:
    return PolicyConfig(variant="tiny", image_resolution=RES, chunk_size=CHUNK, n_action_steps=CHUNK, **kw)


@pytest.fixture(scope="module")
def tiny_tok(tmp_path_factory):
    path = tmp_path_factory.mktemp("tok") / "tiny.model"
    return load_tokenizer(train_tiny_tokenizer(["pick up the red block", "open the drawer"], path, 120))


def raw_sample(i: int = 0, state_dim: int = 5, action_dim: int = 4) -> dict:
    """A sample as the LeRobot reader yields it (two cameras, one of them non-square)."""
    g = torch.Generator().manual_seed(i)
    return {
        "observation.images.ego_view": torch.rand(3, 30, 40, generator=g),
        "observation.images.wrist": torch.rand(3, 56, 56, generator=g),
        "observation.state": torch.randn(state_dim, generator=g),
        "action": torch.randn(CHUNK, action_dim, generator=g),
        "action_is_pad": torch.tensor([False] * (CHUNK - 1) + [True]),
        "observation.gaze_bbox": torch.rand(4, generator=g),
        "task": "pick_up the red block\n",
        "timestamp": torch.tensor(0.1 * i), "frame_index": torch.tensor(i), "episode_index": torch.tensor(0),
        "index": torch.tensor(i), "task_index": torch.tensor(0),
    }


def stats(state_dim: int = 5, action_dim: int = 4) -> dict:
    def feature(d, scale):
        return {"mean": np.full(d, 0.5, np.float32), "std": np.full(d, scale, np.float32),
                "q01": np.full(d, -2.0, np.float32), "q99": np.full(d, 2.0, np.float32)}
    return {"state": feature(state_dim, 2.0), "actions": feature(action_dim, 3.0)}


# Images ---------------------------------------------------------------------------------------


def test_resize_with_pad_keeps_aspect_and_pads_with_exact_minus_one():
    image = torch.full((3, 20, 40), 0.5)  # wide: 40 x 20 -> 56 x 28, 14 rows of padding each side
    out = prepare_image(image, RES)
    assert out.shape == (3, RES, RES)
    assert (out[:, :14] == -1.0).all() and (out[:, 42:] == -1.0).all()
    torch.testing.assert_close(out[:, 14:42], torch.zeros(3, 28, RES))  # 0.5 -> 0 in [-1, 1]
    # Odd padding puts the extra row at the bottom (openpi): 15 rows of content, 20 above, 21 below.
    odd = prepare_image(torch.ones(3, 15, 56), RES)
    assert (odd[0] > -1).any(dim=1).nonzero().flatten().tolist() == list(range(20, 35))
    # A tall image pads left and right.
    tall = prepare_image(torch.ones(3, 40, 20), RES)
    assert (tall[:, :, :14] == -1).all() and (tall[:, :, 42:] == -1).all() and (tall[:, :, 14:42] == 1).all()


def test_resize_geometry_and_identity():
    x = torch.rand(2, 3, 480, 640)  # batched (B, C, H, W) 640x480 -> 224x168
    out = resize_with_pad(x, 224, 224)
    assert out.shape == (2, 3, 224, 224)
    assert (out[:, :, :28] == 0).all() and (out[:, :, 196:] == 0).all() and (out[:, :, 28:196] > 0).any()
    same = torch.rand(3, RES, RES)
    torch.testing.assert_close(prepare_image(same, RES), same * 2 - 1)


def test_uint8_hwc_equals_float_chw():
    img = np.random.default_rng(0).integers(0, 256, size=(30, 40, 3), dtype=np.uint8)
    as_float = torch.from_numpy(img).permute(2, 0, 1).float() / 255
    torch.testing.assert_close(prepare_image(img, RES), prepare_image(as_float, RES))
    with pytest.raises(InputError, match=r"cam has shape \(2, 3, 4, 5\)"):
        prepare_image(torch.zeros(2, 3, 4, 5), RES, name="cam")


# Cameras --------------------------------------------------------------------------------------


def test_default_camera_mapping_masks_missing_views(tiny_tok):
    out = Preprocessor(tiny_config(), tiny_tok, camera_map={})(raw_sample())  # {}: the flag's default
    assert out["images"].shape == (3, 3, RES, RES)
    assert out["image_masks"].tolist() == [True, True, False]
    assert (out["images"][2] == -1).all()
    # The wrist camera is already at the model resolution: view 1 is that image, scaled.
    torch.testing.assert_close(out["images"][1], raw_sample()["observation.images.wrist"] * 2 - 1)


def test_dataset_camera_order_wins_and_extra_cameras_warn(tiny_tok):
    keys = ["observation.images.wrist", "observation.images.ego_view"]
    out = Preprocessor(tiny_config(), tiny_tok, camera_keys=keys)(raw_sample())
    torch.testing.assert_close(out["images"][0], raw_sample()["observation.images.wrist"] * 2 - 1)
    with pytest.warns(UserWarning, match=r"4 cameras.*\['c', 'd'\] are not used.*--dataset.camera_map"):
        Preprocessor(tiny_config(camera_names=("a", "b")), tiny_tok, camera_keys=["a", "b", "c", "d"])
    with pytest.raises(InputError, match=r"lacks camera keys \['observation.images.top'\]"):
        Preprocessor(tiny_config(), tiny_tok, camera_keys=["observation.images.top"])(raw_sample())


def test_explicit_camera_map(tiny_tok):
    pre = Preprocessor(tiny_config(), tiny_tok, camera_map={"wrist": "right_wrist_0_rgb",
                                                              "observation.images.ego_view": "base_0_rgb"})
    out = pre(raw_sample())
    assert out["image_masks"].tolist() == [True, False, True]
    torch.testing.assert_close(out["images"][2], raw_sample()["observation.images.wrist"] * 2 - 1)


def test_camera_map_accepts_any_sample_key_and_keeps_it_out_of_extras(tiny_tok):
    pre = Preprocessor(tiny_config(), tiny_tok, camera_map={"observation/image": "base_0_rgb"})
    obs = {"observation/image": np.zeros((30, 40, 3), np.uint8), "observation.state": np.zeros(3, np.float32),
           "prompt": "open the drawer"}
    batch = pre.from_observation(obs)
    assert batch.image_masks.tolist() == [[True, False, False]] and batch.extras == {}


def test_camera_map_errors(tiny_tok):
    with pytest.raises(ConfigError, match=r"--dataset.camera_map.*'top_rgb'.*\['base_0_rgb', 'left_wrist_0_rgb'"):
        Preprocessor(tiny_config(), tiny_tok, camera_map={"observation.images.ego_view": "top_rgb"})
    with pytest.raises(ConfigError, match="both"):
        Preprocessor(tiny_config(), tiny_tok, camera_map={"a": "base_0_rgb", "b": "base_0_rgb"})
    pre = Preprocessor(tiny_config(), tiny_tok, camera_map={"observation.images.front": "base_0_rgb"})
    with pytest.raises(ConfigError, match=r"--dataset.camera_map: camera 'observation.images.front' is not in "
                                          r"the data; its camera keys are \['observation.images.ego_view', "
                                          r"'observation.images.wrist'\]"):
        pre(raw_sample())


# Dims -----------------------------------------------------------------------------------------


def test_state_and_action_are_zero_padded_with_real_dims_kept(tiny_tok):
    cfg = tiny_config()
    raw = raw_sample()
    out = Preprocessor(cfg, tiny_tok)(raw)  # no normaliser: values pass through
    assert out["state"].shape == (cfg.max_state_dim,) and out["actions"].shape == (CHUNK, cfg.max_action_dim)
    torch.testing.assert_close(out["state"][:5], raw["observation.state"])
    assert (out["state"][5:] == 0).all() and (out["actions"][:, 4:] == 0).all()
    torch.testing.assert_close(out["actions"][:, :4], raw["action"])
    assert out["action_dim"] == 4 and out["action_is_pad"].tolist() == [False, False, False, True]


def test_dim_selection_cuts_data_and_stats(tiny_tok):
    norm = Normalizer(stats(), "mean_std")
    pre = Preprocessor(tiny_config(), tiny_tok, norm, action_dims=[3, 0], state_dims=[1, 2, 4])
    raw = raw_sample()
    out = pre(raw)
    assert out["action_dim"] == 2 and pre.action_dim == 2
    expected = (raw["action"][:, [3, 0]] - 0.5) / (3.0 + 1e-6)
    torch.testing.assert_close(out["actions"][:, :2], expected)
    torch.testing.assert_close(out["state"][:3], (raw["observation.state"][[1, 2, 4]] - 0.5) / (2.0 + 1e-6))
    assert (out["state"][3:] == 0).all()
    already_cut = {**raw, "action": raw["action"][:, [3, 0]]}  # the dataset applied action_dims itself
    with pytest.raises(InputError, match=r"'action' has 2 dims but the norm stats have 4.*not pass action_dims"):
        pre(already_cut)
    with pytest.raises(ConfigError, match=r"--dataset.action_dims=\[0, 9\].*out of range.*4 dims"):
        Preprocessor(tiny_config(), tiny_tok, action_dims=[0, 9])(raw)


def test_data_wider_than_model_suggests_flags(tiny_tok):
    pre = Preprocessor(tiny_config(max_action_dim=3), tiny_tok)
    with pytest.raises(ConfigError, match=r"action has 4 dims.*--dataset.action_dims.*--policy.max_action_dim=4"):
        pre(raw_sample())
    pre = Preprocessor(tiny_config(max_state_dim=4), tiny_tok)
    with pytest.raises(ConfigError, match=r"observation.state has 5 dims.*--dataset.state_dims"):
        pre(raw_sample())
    with pytest.raises(InputError, match=r"chunk_size=4"):
        Preprocessor(tiny_config(), tiny_tok)({**raw_sample(), "action": torch.zeros(7, 4)})


# Prompt ---------------------------------------------------------------------------------------


def test_prompt_strings():
    assert format_prompt("  pick_up the\nblock ") == "pick up the block\n"
    assert format_prompt("pick_up the block", state=[-1.0, 0.0, 0.999], kind="pi05") == (
        "Task: pick up the block, State: 0 128 255;\nAction: ")
    # Out-of-range states clip to the end bins.
    assert discretize_state([-3.0, -0.99, 0.5, 1.0, 7.0]).tolist() == [0, 1, 192, 255, 255]
    with pytest.raises(InputError, match="normalised state"):
        format_prompt("x", kind="pi05")


def test_gemma_prompt_tokens(gemma_tokenizer_path):
    tok = load_tokenizer(gemma_tokenizer_path)
    tokens, mask = tokenize_prompt(tok, "pick_up the red block", kind="pi0", max_len=10)
    assert tokens.tolist() == [2, 18075, 908, 573, 3118, 3963, 108, 0, 0, 0]
    assert mask.tolist() == [True] * 7 + [False] * 3
    tokens, mask = tokenize_prompt(tok, "pick", state=np.array([-1.0, 0.0]), kind="pi05", max_len=40)
    assert tok.decode(tokens[mask].tolist()) == "Task: pick, State: 0 128;\nAction: "
    assert tokens[0] == 2


def test_pi05_prompt_uses_normalised_real_dims(tiny_tok):
    # q01=-2, q99=2: x -> x / (2 + 5e-7), so 0 and -1 land just below bin edges (127 and 63).
    norm = Normalizer(stats(), "quantile")
    pre = Preprocessor(tiny_config(type="pi05"), tiny_tok, norm)
    raw = {**raw_sample(), "observation.state": torch.tensor([-2.0, 0.0, 2.0, 1.0, -1.0])}
    out = pre(raw)
    text = tiny_tok.decode(out["tokens"][out["token_masks"]].tolist())
    assert text == "Task: pick up the red block, State: 0 127 255 191 63;\nAction: "
    assert out["tokens"].shape == (200,)


def test_truncation_warns(tiny_tok):
    pre = Preprocessor(tiny_config(tokenizer_max_length=5), tiny_tok)
    with pytest.warns(UserWarning, match="max_token_len of 5"):
        out = pre(raw_sample())
    assert out["token_masks"].all()


# Bundle ---------------------------------------------------------------------------------------


def test_collate_makes_a_valid_batch_with_extras(tiny_tok):
    cfg = tiny_config()
    pre = Preprocessor(cfg, tiny_tok, Normalizer(stats()))
    batch = pre.collate([pre(raw_sample(i)) for i in range(3)])
    assert isinstance(batch, Batch)
    batch.validate(cfg)
    assert batch.images.shape == (3, 3, 3, RES, RES) and batch.tokens.shape == (3, cfg.max_token_len)
    assert batch.action_dim == 4 and batch.action_is_pad.shape == (3, CHUNK)
    assert set(batch.extras) == {"observation.gaze_bbox", "index", "episode_index"}
    assert batch.extras["observation.gaze_bbox"].shape == (3, 4) and batch.extras["index"].shape == (3,)
    assert batch.tokens.max() < cfg.vlm.vocab_size


def test_tokenizer_larger_than_model_vocab_fails_at_build(gemma_tokenizer_path):
    with pytest.raises(ConfigError, match=r"--policy.tokenizer_path.*256000.*1024"):
        Preprocessor(tiny_config(), load_tokenizer(gemma_tokenizer_path))


def test_inference_observation_and_postprocess(tiny_tok):
    cfg = tiny_config()
    pre = Preprocessor(cfg, tiny_tok, Normalizer(stats(), "mean_std"))
    raw = raw_sample()
    ego = (raw["observation.images.ego_view"] * 255).round().to(torch.uint8)
    obs_np = {"observation.images.ego_view": ego.permute(1, 2, 0).numpy(),  # (H, W, 3) uint8
              "observation.images.wrist": raw["observation.images.wrist"],  # (3, H, W) float
              "observation.state": raw["observation.state"].numpy(), "prompt": "pick up the red block"}
    obs_t = {**obs_np, "observation.images.ego_view": ego.float() / 255}
    a, b = pre.from_observation(obs_np), pre.from_observation(obs_t)
    a.validate(cfg)
    assert a.batch_size == 1 and a.actions is None and a.action_dim == 4
    torch.testing.assert_close(a.images, b.images)
    assert torch.equal(a.tokens, pre(raw)["tokens"][None])  # "prompt" and cleaned "task" agree
    # Model output (normalised, padded) -> robot units, real dims only.
    train = pre(raw)
    robot = pre.postprocess_actions(train["actions"][None])
    assert robot.shape == (1, CHUNK, 4) and robot.dtype == np.float32
    np.testing.assert_allclose(robot[0], raw["action"].numpy(), atol=1e-5)


def test_preprocessor_pickles(tiny_tok):
    pre = Preprocessor(tiny_config(), tiny_tok, Normalizer(stats()), camera_map={"wrist": "base_0_rgb"})
    again = pickle.loads(pickle.dumps(pre))
    a, b = pre(raw_sample()), again(raw_sample())
    assert all(torch.equal(a[k], b[k]) for k in ("images", "tokens", "state", "actions"))


def test_an_image_too_thin_to_resize_is_named():
    assert prepare_image(np.zeros((8, 1792, 3), np.uint8), 224, name="cam").shape == (3, 224, 224)  # 1 row left
    with pytest.raises(InputError, match=r"^cam: an image of 7x1792 pixels is too thin to resize to 224x224 "
                                         r"\(it would be 0x224\); expected an aspect ratio of at most 224:1"):
        prepare_image(np.zeros((7, 1792, 3), np.uint8), 224, name="cam")


def test_empty_cameras_are_never_fed():
    from pirecon.data.transforms import camera_sources, check_camera_map

    views = PolicyConfig(camera_names=("base_0_rgb", "left_wrist_0_rgb"), empty_cameras=2).camera_names
    assert views == ("base_0_rgb", "left_wrist_0_rgb", "empty_camera_0", "empty_camera_1")
    sources = camera_sources(views, None, ["observation.images.a", "observation.images.b", "observation.images.c"])
    assert sources == {"base_0_rgb": "observation.images.a", "left_wrist_0_rgb": "observation.images.b",
                       "empty_camera_0": None, "empty_camera_1": None}
    with pytest.raises(ConfigError, match="maps to 'empty_camera_0', a view of --policy.empty_cameras"):
        check_camera_map({"observation.images.c": "empty_camera_0"}, views)
