"""Training-time image augmentation (LeRobot's --dataset.image_transforms.*): geometry, colour,
sampling, masks, determinism; expected values are computed by hand."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from pirecon.batch import Batch
from pirecon.configs.data import ImageTransformConfig, ImageTransformsConfig
from pirecon.data import augment as A


def marked(h: int, w: int, row: int, col: int) -> torch.Tensor:
    x = torch.zeros(1, 3, h, w)
    x[0, :, row, col] = 1.0
    return x


def where(x: torch.Tensor) -> list[list[int]]:
    return (x[0, 0] == 1.0).nonzero().tolist()


def test_a_shift_and_a_rotation_move_a_marked_pixel_where_expected():
    one = torch.ones(1)
    shifted = A.affine(marked(8, 8, 2, 4), torch.zeros(1), torch.tensor([[2.0, 1.0]]), one)
    assert where(shifted) == [[3, 6]]  # 2 right, 1 down
    # 90 degrees clockwise on screen about the centre (3.5, 3.5): right of centre goes below it.
    rotated = A.affine(marked(8, 8, 3, 6), torch.tensor([90.0]), torch.zeros(1, 2), one)
    assert where(rotated) == [[6, 4]]
    # What leaves the image is black.
    assert A.affine(marked(8, 8, 0, 7), torch.zeros(1), torch.tensor([[1.0, 0.0]]), one).sum() == 0


def test_random_affine_shifts_by_at_most_the_rounded_fraction():
    g = torch.Generator().manual_seed(3)
    for _ in range(20):
        out = A.random_affine(marked(40, 40, 20, 20), {"translate": [0.05, 0.05]}, g)
        (row, col), = where(out)
        assert abs(row - 20) <= 2 and abs(col - 20) <= 2  # 0.05 * 40 = 2 pixels


def one(x: torch.Tensor, op, f: float) -> torch.Tensor:
    """op applied in place to a copy of the single image x (3, H, W)."""
    return op(x.clone(), f)


def test_colour_adjustments():
    x = torch.full((3, 4, 4), 0.5)
    x[0] = 0.9
    assert torch.allclose(one(x, A.adjust_brightness_, 1.2), torch.stack([torch.full((4, 4), 1.0),
                                                                          torch.full((4, 4), 0.6),
                                                                          torch.full((4, 4), 0.6)]))
    gray = 0.2989 * 0.9 + 0.587 * 0.5 + 0.114 * 0.5
    assert torch.allclose(one(x, A.adjust_contrast_, 0.5), 0.5 * x + 0.5 * gray)
    assert torch.allclose(one(x, A.adjust_saturation_, 0.0), torch.full_like(x, gray))
    red = torch.zeros(3, 2, 2)
    red[0] = 1.0
    cyan = one(red, A.adjust_hue_, 0.5)
    assert torch.allclose(cyan[:, 0, 0], torch.tensor([0.0, 1.0, 1.0]), atol=1e-6)
    # Orange (1, 0.5, 0) is hue 30 degrees; +120 degrees is spring green (0, 1, 0.5).
    orange = torch.tensor([1.0, 0.5, 0.0]).view(3, 1, 1).expand(3, 2, 2).clone()
    assert torch.allclose(one(orange, A.adjust_hue_, 1 / 3)[:, 0, 0], torch.tensor([0.0, 1.0, 0.5]), atol=1e-6)
    assert torch.allclose(one(x, A.adjust_hue_, 0.0), x, atol=1e-6)
    gray_image = torch.full((3, 2, 2), 0.3)  # no hue: unchanged by any shift
    assert torch.allclose(one(gray_image, A.adjust_hue_, 0.25), gray_image, atol=1e-7)


def test_hue_matches_pythons_colorsys_in_every_sector_and_on_ties():
    """Python's colorsys (rgb_to_hsv, hsv_to_rgb) uses the same hexcone definition as torchvision."""
    import colorsys

    g = torch.Generator().manual_seed(0)
    pixels = torch.rand(3, 64, generator=g)
    pixels[:, :6] = torch.tensor([[0.7, 0.7, 0.2], [0.2, 0.7, 0.7], [0.7, 0.2, 0.7],  # two-way ties
                                  [0.4, 0.4, 0.4], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]).T  # gray, red, black
    for f in (-0.5, -0.2, -0.04, 0.0, 0.03, 0.3, 0.5):
        expected = []
        for r, gr, b in pixels.T.tolist():
            h, s, v = colorsys.rgb_to_hsv(r, gr, b)
            expected.append(colorsys.hsv_to_rgb((h + f) % 1.0, s, v))
        out = one(pixels.view(3, 8, 8), A.adjust_hue_, f).view(3, 64)
        assert torch.allclose(out, torch.tensor(expected).T, atol=1e-5), f


def test_sharpness_blends_with_a_3x3_blur_and_keeps_the_border():
    x = torch.zeros(3, 5, 5)
    x[:, 2, 2] = 1.0
    assert torch.equal(one(x, A.adjust_sharpness_, 1.0), x)
    blurred = one(x, A.adjust_sharpness_, 0.0)
    assert blurred[0, 2, 2].item() == pytest.approx(5 / 13)
    assert blurred[0, 1, 1].item() == pytest.approx(1 / 13) and blurred[0, 0, 0] == 0


def test_draws_follow_the_weights_the_count_and_the_seed():
    only_brightness = ImageTransformsConfig(enable=True, max_num_transforms=1, tfs={
        "b": ImageTransformConfig(1.0, "ColorJitter", {"brightness": [0.8, 1.2]}),
        "never": ImageTransformConfig(0.0, "ColorJitter", {"brightness": [5.0, 5.0]})})
    x = torch.full((64, 3, 4, 4), 0.5)
    out = A.lerobot_transforms_(x.clone(), only_brightness, torch.Generator().manual_seed(0))
    ratio = out[:, 0, 0, 0] / 0.5
    assert ratio.min() >= 0.8 and ratio.max() <= 1.2 and ratio.std() > 0.05  # drawn per image
    defaults = ImageTransformsConfig(enable=True)
    y = torch.rand(6, 3, 16, 16)
    first = A.lerobot_transforms_(y.clone(), defaults, torch.Generator().manual_seed(1))
    assert torch.equal(first, A.lerobot_transforms_(y.clone(), defaults, torch.Generator().manual_seed(1)))
    assert not torch.equal(first, A.lerobot_transforms_(y.clone(), defaults, torch.Generator().manual_seed(2)))
    assert first.min() >= 0 and first.max() <= 1 and torch.equal(y, y.clone())


def test_masked_views_are_left_alone():
    images = torch.rand(2, 3, 3, 8, 8) * 2 - 1
    images[:, 2] = -1.0
    masks = torch.tensor([[True, True, False], [True, True, False]])
    batch = Batch(images=images.clone(), image_masks=masks, tokens=torch.zeros(2, 4, dtype=torch.long),
                  token_masks=torch.ones(2, 4, dtype=torch.bool), state=torch.zeros(2, 8))
    out = A.augment_batch(batch, ImageTransformsConfig(enable=True), torch.Generator().manual_seed(0))
    assert torch.equal(out.images[:, 2], images[:, 2])
    assert not torch.equal(out.images[:, :2], images[:, :2])


def test_a_bfloat16_batch_is_augmented_as_the_float32_one():
    images = torch.rand(2, 2, 3, 16, 16) * 2 - 1
    batches = [Batch(images=images.clone().to(dtype), image_masks=torch.ones(2, 2, dtype=torch.bool),
                     tokens=torch.zeros(2, 4, dtype=torch.long), token_masks=torch.ones(2, 4, dtype=torch.bool),
                     state=torch.zeros(2, 8)) for dtype in (torch.float32, torch.bfloat16)]
    out = [A.augment_batch(batch, ImageTransformsConfig(enable=True), torch.Generator().manual_seed(0)).images
           for batch in batches]
    assert out[1].dtype == torch.bfloat16 and not torch.equal(out[0], images)
    assert torch.allclose(out[1].float(), out[0], atol=0.02)


def test_only_training_augments():
    """Evaluation, serving and inference never import the augmentation."""
    src = Path(A.__file__).parents[1]
    users = set()
    for path in src.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.endswith("data.augment"):
                users.add(path.relative_to(src).as_posix())
    assert users == {"train/loop.py"}


def test_openpi_recipe_keeps_wrist_geometry_and_jitters_colour_in_range():
    ramp = torch.linspace(0.2, 0.8, 16).view(1, 1, 1, 16).expand(4, 3, 16, 16).clone()  # gray, left to right
    wrist = torch.tensor([True, True, False, False])
    out = A.openpi_transforms_(ramp.clone(), wrist, torch.Generator().manual_seed(0))
    for i in (0, 1):  # wrist: colour only, which is affine per image on a gray image: a*x + b
        a, b = torch.linalg.lstsq(torch.stack([ramp[i].flatten(), torch.ones(ramp[i].numel())], 1),
                                  out[i].flatten().unsqueeze(1)).solution.flatten()
        assert torch.allclose(a * ramp[i] + b, out[i], atol=1e-5)
        assert 0.7 * 0.6 * 0.5 < a < 1.3 * 1.4 * 1.5
    for i in (2, 3):  # the others are cropped (and maybe rotated): no longer a column ramp
        a, b = torch.linalg.lstsq(torch.stack([ramp[i].flatten(), torch.ones(ramp[i].numel())], 1),
                                  out[i].flatten().unsqueeze(1)).solution.flatten()
        assert not torch.allclose(a * ramp[i] + b, out[i], atol=1e-3)
    assert out.min() >= 0 and out.max() <= 1


def test_the_batch_applies_the_openpi_recipe_by_view_name():
    images = torch.rand(2, 2, 3, 16, 16) * 2 - 1
    batch = Batch(images=images.clone(), image_masks=torch.ones(2, 2, dtype=torch.bool),
                  tokens=torch.zeros(2, 4, dtype=torch.long), token_masks=torch.ones(2, 4, dtype=torch.bool),
                  state=torch.zeros(2, 8))
    cfg = ImageTransformsConfig(enable=True, recipe="openpi")
    out = A.augment_batch(batch, cfg, torch.Generator().manual_seed(5), ("base_0_rgb", "left_wrist_0_rgb"))
    x01 = (images.reshape(4, 3, 16, 16) + 1) / 2
    expected = A.openpi_transforms_(x01, torch.tensor([False, True, False, True]), torch.Generator().manual_seed(5))
    assert torch.allclose(out.images.reshape(4, 3, 16, 16), expected * 2 - 1, atol=1e-6)
