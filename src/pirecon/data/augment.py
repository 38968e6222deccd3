"""Training-time image augmentation on batched tensors, in plain torch (torchvision from PyPI does
not import beside the CPU torch wheel; these few ops need nothing else).

LeRobot's `--dataset.image_transforms.*` (ImageTransformsConfig): for every camera image,
`max_num_transforms` of the weighted transforms are drawn without replacement and applied in the
listed order (or a random one). The ops follow torchvision's definitions, which LeRobot uses:

    brightness   x * f                               f ~ U(range)
    contrast     f * x + (1 - f) * mean(gray(x))     (per image)
    saturation   f * x + (1 - f) * gray(x)           gray = 0.2989 R + 0.587 G + 0.114 B
    hue          h -> (h + f) mod 1 in HSV
    sharpness    f * x + (1 - f) * blur3x3(x)        kernel [[1,1,1],[1,5,1],[1,1,1]] / 13, border kept
    affine       rotate by U(degrees) about the centre, shift by round(U(+-translate * size)) pixels,
                 nearest neighbour, black outside

each clamped to [0, 1]. Here they run on the batch after resize-with-pad (LeRobot runs them on each
frame before it), so with non-square cameras the padding takes part in contrast's mean and moves
with the affine shift. Randomness comes from a generator the caller seeds per step, so a resumed
run draws the same augmentations.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from pirecon.batch import Batch
from pirecon.configs.data import ImageTransformConfig, ImageTransformsConfig

GRAY = (0.2989, 0.587, 0.114)


def augment_batch(batch: Batch, cfg: ImageTransformsConfig, generator: torch.Generator,
                  camera_names: tuple[str, ...] = ()) -> Batch:
    """The batch with every present camera image augmented (images in [-1, 1], as the model takes
    them). `camera_names`: the views, in order (openpi's recipe keeps wrist views' geometry)."""
    b, v = batch.images.shape[:2]
    present = batch.image_masks.reshape(-1).nonzero().flatten()  # (n,) indices into the B*V images
    if len(present) == 0:
        return batch
    images = batch.images.reshape(b * v, *batch.images.shape[2:]).clone()
    x01 = (images[present].float() + 1.0) / 2.0
    if cfg.recipe == "openpi":
        wrist = torch.tensor(["wrist" in name for name in camera_names], device=present.device).repeat(b)[present]
        out = openpi_transforms(x01, wrist, generator)
    else:
        out = lerobot_transforms(x01, cfg, generator)
    images[present] = (out * 2.0 - 1.0).to(images.dtype)
    batch.images = images.reshape(batch.images.shape)
    return batch


def openpi_transforms(x: torch.Tensor, wrist: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """openpi's training augmentation (models_pytorch/preprocessing_pytorch.py), parameters drawn per
    image as openpi's JAX version does: cameras without "wrist" in their name get a random 95 %
    crop resized back (bilinear) and a rotation by U(-5, 5) degrees (skipped below 0.1); every
    camera gets brightness x U(0.7, 1.3), contrast about its mean x U(0.6, 1.4) and saturation
    about the channel mean x U(0.5, 1.5); clamped to [0, 1] at the end. x: (N, 3, H, W) in [0, 1]."""
    n = x.shape[0]
    x = x.clone()
    geometric = (~wrist).nonzero().flatten()
    if len(geometric):
        x[geometric] = _crop_rotate(x[geometric], generator)
    like = x
    x = x * uniform((0.7, 1.3), n, generator, like).view(-1, 1, 1, 1)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * uniform((0.6, 1.4), n, generator, like).view(-1, 1, 1, 1) + mean
    gray = x.mean(dim=1, keepdim=True)
    x = gray + (x - gray) * uniform((0.5, 1.5), n, generator, like).view(-1, 1, 1, 1)
    return x.clamp(0.0, 1.0)


def _crop_rotate(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    n, _, height, width = x.shape
    crop_h, crop_w = int(height * 0.95), int(width * 0.95)
    out = torch.empty_like(x)
    tops = torch.randint(0, height - crop_h + 1, (n,), generator=generator)
    lefts = torch.randint(0, width - crop_w + 1, (n,), generator=generator)
    for i in range(n):
        crop = x[i:i + 1, :, int(tops[i]):int(tops[i]) + crop_h, int(lefts[i]):int(lefts[i]) + crop_w]
        out[i:i + 1] = F.interpolate(crop, size=(height, width), mode="bilinear", align_corners=False)
    angles = (torch.rand(n, generator=generator, dtype=torch.float64) * 10 - 5).to(x.device)
    rotate = angles.abs() > 0.1
    if rotate.any():
        rad = angles[rotate] * math.pi / 180.0
        cos, sin = torch.cos(rad).to(x.dtype).view(-1, 1, 1), torch.sin(rad).to(x.dtype).view(-1, 1, 1)
        gy, gx = torch.meshgrid(torch.linspace(-1, 1, height, device=x.device, dtype=x.dtype),
                                torch.linspace(-1, 1, width, device=x.device, dtype=x.dtype), indexing="ij")
        grid = torch.stack((gx * cos - gy * sin, gx * sin + gy * cos), dim=-1)  # (k, H, W, 2), openpi's grid
        out[rotate] = F.grid_sample(out[rotate], grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out


def lerobot_transforms(x: torch.Tensor, cfg: ImageTransformsConfig, generator: torch.Generator) -> torch.Tensor:
    """x: (N, 3, H, W) in [0, 1] -> the same with LeRobot's RandomSubsetApply of `cfg.tfs` per image."""
    names = [name for name, t in cfg.tfs.items() if t.weight > 0]
    if not names:
        return x
    weights = torch.tensor([cfg.tfs[name].weight for name in names], dtype=torch.float64)
    k = min(len(names), cfg.max_num_transforms)
    choice = torch.stack([torch.multinomial(weights, k, replacement=False, generator=generator)
                          for _ in range(x.shape[0])]).to(x.device)  # (N, k): indices into names
    if not cfg.random_order:
        choice = choice.sort(dim=1).values
    x = x.clone()
    for position in range(k):
        for index, name in enumerate(names):
            chosen = (choice[:, position] == index).nonzero().flatten()
            if len(chosen):
                x[chosen] = apply_transform(x[chosen], cfg.tfs[name], generator)
    return x


def apply_transform(x: torch.Tensor, t: ImageTransformConfig, generator: torch.Generator) -> torch.Tensor:
    """One transform, with parameters drawn per image."""
    n = x.shape[0]
    if t.type == "Identity":
        return x
    if t.type == "SharpnessJitter":
        return adjust_sharpness(x, uniform(_range(t.kwargs["sharpness"], "sharpness"), n, generator, x))
    if t.type == "RandomAffine":
        return random_affine(x, t.kwargs, generator)
    # ColorJitter: its adjustments in a random order per image, as torchvision draws them.
    ops = [(name, _range(t.kwargs[name], name)) for name in ("brightness", "contrast", "saturation", "hue")
           if name in t.kwargs]
    factors = {name: uniform(bounds, n, generator, x) for name, bounds in ops}
    order = torch.rand(n, len(ops), generator=generator).argsort(dim=1).to(x.device)
    for position in range(len(ops)):
        for index, (name, _) in enumerate(ops):
            chosen = (order[:, position] == index).nonzero().flatten()
            if len(chosen):
                x[chosen] = COLOR_OPS[name](x[chosen], factors[name][chosen])
    return x


def _range(value, name: str) -> tuple[float, float]:
    """torchvision's parameter forms: a pair is the range; one number v is [1 - v, 1 + v] (hue: [-v, v])."""
    if isinstance(value, (list, tuple)):
        lo, hi = float(value[0]), float(value[1])
    elif name == "hue":
        lo, hi = -float(value), float(value)
    else:
        lo, hi = max(0.0, 1.0 - float(value)), 1.0 + float(value)
    return lo, hi


def uniform(bounds: tuple[float, float], n: int, generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    lo, hi = bounds
    return (torch.rand(n, generator=generator, dtype=torch.float64) * (hi - lo) + lo).to(like.device, like.dtype)


# ---------------------------------------------------------------------------------------------
# Colour (x: (N, 3, H, W) in [0, 1]; f: (N,))


def _blend(a: torch.Tensor, b: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """f a + (1 - f) b, clamped to [0, 1] (b + f (a - b): two passes over the image, not four)."""
    return torch.lerp(b.expand_as(a), a, f.view(-1, 1, 1, 1)).clamp_(0.0, 1.0)


def grayscale(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(dim=1)
    return (GRAY[0] * r + GRAY[1] * g + GRAY[2] * b).unsqueeze(1)


def adjust_brightness(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return (x * f.view(-1, 1, 1, 1)).clamp_(0.0, 1.0)  # a blend with black


def adjust_contrast(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return _blend(x, grayscale(x).mean(dim=(1, 2, 3), keepdim=True), f)


def adjust_saturation(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return _blend(x, grayscale(x), f)


def adjust_hue(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    h, s, v = rgb_to_hsv(x).unbind(dim=1)
    h = torch.remainder(h + f.view(-1, 1, 1), 1.0)
    return hsv_to_rgb(torch.stack((h, s, v), dim=1))


COLOR_OPS = {"brightness": adjust_brightness, "contrast": adjust_contrast, "saturation": adjust_saturation,
             "hue": adjust_hue}


def rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(dim=1)
    maxc, minc = x.max(dim=1).values, x.min(dim=1).values
    flat = maxc == minc
    chroma = maxc - minc
    ones = torch.ones_like(maxc)
    s = chroma / torch.where(flat, ones, maxc)
    divisor = torch.where(flat, ones, chroma)
    rc, gc, bc = (maxc - r) / divisor, (maxc - g) / divisor, (maxc - b) / divisor
    h = (maxc == r) * (bc - gc) + ((maxc == g) & (maxc != r)) * (2.0 + rc - bc) + \
        ((maxc != g) & (maxc != r)) * (4.0 + gc - rc)
    h = torch.remainder(h / 6.0 + 1.0, 1.0)
    return torch.stack((h, s, maxc), dim=1)


def hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    """Channel c = v - v s clamp(min(k, 4 - k), 0, 1), k = (n_c + 6 h) mod 6, n = 5, 3, 1 for R, G, B
    (the closed form of torchvision's six-sector table)."""
    h, s, v = x.unbind(dim=1)
    out = []
    for n in (5.0, 3.0, 1.0):
        k = torch.remainder(n + h * 6.0, 6.0)
        out.append(v - v * s * torch.minimum(k, 4.0 - k).clamp(0.0, 1.0))
    return torch.stack(out, dim=1)


def adjust_sharpness(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    if x.shape[-1] <= 2 or x.shape[-2] <= 2:
        return x
    # The 3x3 kernel [[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13 as shifted sums (faster than a grouped conv).
    rows = x[..., :-2, :] + x[..., 1:-1, :] + x[..., 2:, :]  # (N, C, H-2, W)
    box = rows[..., :-2] + rows[..., 1:-1] + rows[..., 2:]  # (N, C, H-2, W-2): the 3x3 sums
    blurred = x.clone()
    blurred[..., 1:-1, 1:-1] = ((box + 4.0 * x[..., 1:-1, 1:-1]) / 13.0).clamp_(0.0, 1.0)
    return _blend(x, blurred, f)


# ---------------------------------------------------------------------------------------------
# Geometry


def random_affine(x: torch.Tensor, kwargs: dict, generator: torch.Generator) -> torch.Tensor:
    """torchvision's RandomAffine(degrees, translate, scale): angle ~ U(degrees), shift ~
    round(U(+-translate * size)) pixels, scale ~ U(scale); nearest neighbour, zeros outside."""
    n, _, height, width = x.shape
    degrees = kwargs.get("degrees", 0.0)
    degrees = (-float(degrees), float(degrees)) if not isinstance(degrees, (list, tuple)) else tuple(map(float, degrees))
    angles = uniform(degrees, n, generator, torch.empty(0, dtype=torch.float64))  # on the CPU: theta is built there
    shifts = torch.zeros(n, 2, dtype=torch.float64)
    if kwargs.get("translate") is not None:
        fx, fy = (float(v) for v in kwargs["translate"])
        shifts[:, 0] = torch.round(uniform((-fx * width, fx * width), n, generator, shifts))
        shifts[:, 1] = torch.round(uniform((-fy * height, fy * height), n, generator, shifts))
    scales = uniform(tuple(map(float, kwargs["scale"])), n, generator, shifts) if kwargs.get("scale") else \
        torch.ones(n, dtype=torch.float64)
    return affine(x, angles, shifts, scales)


def affine(x: torch.Tensor, angles: torch.Tensor, shifts: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """Rotate each image by angles (degrees, clockwise on screen, as torchvision's F.affine) about its centre, scale it and shift
    it by shifts (N, 2) pixels (x right, y down), as torchvision's F.affine with NEAREST and fill 0."""
    n, _, height, width = x.shape
    theta = torch.zeros(n, 2, 3, dtype=torch.float64)
    for i in range(n):  # torchvision's _get_inverse_affine_matrix, centre (0, 0), no shear
        rot = math.radians(float(angles[i]))
        a, b, c, d = math.cos(rot), -math.sin(rot), math.sin(rot), math.cos(rot)
        m = [v / float(scales[i]) for v in (d, -b, 0.0, -c, a, 0.0)]
        tx, ty = float(shifts[i, 0]), float(shifts[i, 1])
        m[2] += m[0] * -tx + m[1] * -ty
        m[5] += m[3] * -tx + m[4] * -ty
        theta[i] = torch.tensor(m, dtype=torch.float64).view(2, 3)
    # torchvision's _gen_affine_grid: pixel centres in centred coordinates, normalised by half the size.
    xs = torch.linspace(-width * 0.5 + 0.5, width * 0.5 - 0.5, width, dtype=torch.float64)
    ys = torch.linspace(-height * 0.5 + 0.5, height * 0.5 - 0.5, height, dtype=torch.float64)
    base = torch.stack((xs.expand(height, width), ys.unsqueeze(1).expand(height, width),
                        torch.ones(height, width, dtype=torch.float64)), dim=-1).view(1, -1, 3)
    scale = torch.tensor([0.5 * width, 0.5 * height], dtype=torch.float64)
    grid = base.expand(n, -1, -1).bmm(theta.transpose(1, 2) / scale).view(n, height, width, 2)
    return F.grid_sample(x, grid.to(x.device, x.dtype), mode="nearest", padding_mode="zeros", align_corners=False)
