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


CHUNK = 16  # images per working buffer: 16 x 3 x 224 x 224 float32 is 9.6 MB


def augment_batch(batch: Batch, cfg: ImageTransformsConfig, generator: torch.Generator,
                  camera_names: tuple[str, ...] = ()) -> Batch:
    """Augments every present camera image of the batch in place (images in [-1, 1], as the model
    takes them) and returns the batch. `camera_names`: the views, in order (openpi's recipe keeps
    wrist views' geometry). The images go through in chunks of CHUNK, each drawing its parameters
    in turn: on the CPU a large buffer comes fresh from the kernel at every allocation (glibc maps
    what lies above its mmap threshold: 32 MB by default, 1 MiB once model.cpu_bf16 lowers it), and
    its page faults would cost more than the arithmetic."""
    b, v = batch.images.shape[:2]
    present = batch.image_masks.reshape(-1).nonzero().flatten()  # (n,) indices into the B*V images
    if len(present) == 0:
        return batch
    images = batch.images.reshape(b * v, *batch.images.shape[2:])  # a view (a copy if not contiguous)
    wrist = torch.tensor(["wrist" in name for name in camera_names] or [False] * v,
                         device=present.device).repeat(b)
    for rows in present.split(CHUNK):
        # The working buffer, in [0, 1]: every op below is in place. A run of consecutive images (all
        # cameras present) is worked on where it lies; otherwise index_select / index_copy_ gather and
        # scatter (images[rows] takes a slower kernel on the CPU).
        start, stop = int(rows[0]), int(rows[0]) + len(rows)
        run = int(rows[-1]) == stop - 1  # rows ascend, so the run is whole
        block = images[start:stop] if run else images.index_select(0, rows)
        x01 = block.float().add_(1.0).mul_(0.5)  # float32 images: block itself
        if cfg.recipe == "openpi":
            openpi_transforms_(x01, wrist[rows], generator)
        else:
            lerobot_transforms_(x01, cfg, generator)
        x01.mul_(2.0).sub_(1.0)
        if not run:
            images.index_copy_(0, rows, x01.to(images.dtype))
        elif x01 is not block:
            block.copy_(x01)
    batch.images = images.reshape(batch.images.shape)
    return batch


# Every op works in place on the images of one working buffer, one image at a time with Python-float
# parameters: a fresh temporary per op costs more in page faults than the arithmetic (CPU).


def openpi_transforms_(x: torch.Tensor, wrist: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """openpi's training augmentation (models_pytorch/preprocessing_pytorch.py), parameters drawn per
    image as openpi's JAX version does: cameras without "wrist" in their name get a random 95 %
    crop resized back (bilinear) and a rotation by U(-5, 5) degrees (skipped below 0.1); every
    camera gets brightness x U(0.7, 1.3), contrast about its mean x U(0.6, 1.4) and saturation
    about the channel mean x U(0.5, 1.5); clamped to [0, 1] at the end. x: (N, 3, H, W) in [0, 1],
    changed in place and returned."""
    n = x.shape[0]
    geometric = (~wrist).nonzero().flatten()
    if len(geometric):
        _crop_rotate_(x, geometric, generator)
    factors = [uniform(bounds, n, generator, x).tolist() for bounds in ((0.7, 1.3), (0.6, 1.4), (0.5, 1.5))]
    for i, (brightness, contrast, saturation) in enumerate(zip(*factors)):
        image = x[i].mul_(brightness)
        mean = image.mean()
        image.sub_(mean).mul_(contrast).add_(mean)
        gray = image.mean(dim=0, keepdim=True)
        image.sub_(gray).mul_(saturation).add_(gray).clamp_(0.0, 1.0)
    return x


def _crop_rotate_(x: torch.Tensor, which: torch.Tensor, generator: torch.Generator) -> None:
    n, height, width = len(which), x.shape[-2], x.shape[-1]
    crop_h, crop_w = int(height * 0.95), int(width * 0.95)
    tops = torch.randint(0, height - crop_h + 1, (n,), generator=generator).tolist()
    lefts = torch.randint(0, width - crop_w + 1, (n,), generator=generator).tolist()
    for i, top, left in zip(which.tolist(), tops, lefts):
        crop = x[i:i + 1, :, top:top + crop_h, left:left + crop_w]
        x[i] = F.interpolate(crop, size=(height, width), mode="bilinear", align_corners=False)[0]
    angles = (torch.rand(n, generator=generator, dtype=torch.float64) * 10 - 5).to(x.device)
    rotate = angles.abs() > 0.1
    if rotate.any():
        rad = angles[rotate] * math.pi / 180.0
        cos, sin = torch.cos(rad).view(-1, 1, 1), torch.sin(rad).view(-1, 1, 1)
        gx = torch.linspace(-1, 1, width, dtype=torch.float64).view(1, 1, width)
        gy = torch.linspace(-1, 1, height, dtype=torch.float64).view(1, height, 1)
        # openpi's grid (gx cos - gy sin, gx sin + gy cos), as outer sums of a row and a column per image.
        grid = torch.empty(len(rad), height, width, 2, dtype=x.dtype, device=x.device)
        grid[..., 0] = (gx * cos).to(x.device, x.dtype) + (-gy * sin).to(x.device, x.dtype)
        grid[..., 1] = (gx * sin).to(x.device, x.dtype) + (gy * cos).to(x.device, x.dtype)
        rows = which.to(x.device)[rotate]
        x.index_copy_(0, rows, F.grid_sample(x.index_select(0, rows), grid, mode="bilinear", padding_mode="zeros",
                                             align_corners=False))


def lerobot_transforms_(x: torch.Tensor, cfg: ImageTransformsConfig, generator: torch.Generator) -> torch.Tensor:
    """x: (N, 3, H, W) in [0, 1], changed in place (and returned) by LeRobot's RandomSubsetApply of
    `cfg.tfs` per image."""
    names = [name for name, t in cfg.tfs.items() if t.weight > 0]
    if not names:
        return x
    weights = torch.tensor([cfg.tfs[name].weight for name in names], dtype=torch.float64)
    k = min(len(names), cfg.max_num_transforms)
    choice = torch.stack([torch.multinomial(weights, k, replacement=False, generator=generator)
                          for _ in range(x.shape[0])]).to(x.device)  # (N, k): indices into names
    if not cfg.random_order:
        choice = choice.sort(dim=1).values
    for position in range(k):
        for index, name in enumerate(names):
            chosen = (choice[:, position] == index).nonzero().flatten()
            if len(chosen):
                apply_transform_(x, chosen, cfg.tfs[name], generator)
    return x


def apply_transform_(x: torch.Tensor, which: torch.Tensor, t: ImageTransformConfig,
                     generator: torch.Generator) -> None:
    """One transform on the images `which` of x, with parameters drawn per image."""
    n = len(which)
    rows = which.tolist()
    if t.type == "Identity":
        return
    if t.type == "SharpnessJitter":
        for i, f in zip(rows, uniform(_range(t.kwargs["sharpness"], "sharpness"), n, generator, x).tolist()):
            adjust_sharpness_(x[i], f)
        return
    if t.type == "RandomAffine":
        x.index_copy_(0, which, random_affine(x.index_select(0, which), t.kwargs, generator))
        return
    # ColorJitter: its adjustments in a random order per image, as torchvision draws them.
    ops = [(name, _range(t.kwargs[name], name)) for name in ("brightness", "contrast", "saturation", "hue")
           if name in t.kwargs]
    factors = [uniform(bounds, n, generator, x).tolist() for _, bounds in ops]
    order = torch.rand(n, len(ops), generator=generator).argsort(dim=1).tolist()
    for j, i in enumerate(rows):
        for index in order[j]:
            COLOR_OPS[ops[index][0]](x[i], factors[index][j])


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
# Colour: one image x (3, H, W) in [0, 1], changed in place; f a Python float. As torchvision's
# _blend, each is f * x + (1 - f) * other, clamped to [0, 1].


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """(3, H, W) -> (1, H, W): 0.2989 R + 0.587 G + 0.114 B, one pass over the image."""
    weights = torch.tensor(GRAY, dtype=x.dtype, device=x.device)
    return torch.matmul(weights, x.reshape(3, -1)).view(1, *x.shape[1:])


def gray_mean(x: torch.Tensor) -> float:
    """The mean of grayscale(x), from the channel means."""
    return sum(w * m for w, m in zip(GRAY, x.reshape(3, -1).mean(dim=1).tolist()))


def adjust_brightness_(x: torch.Tensor, f: float) -> torch.Tensor:
    return x.mul_(f).clamp_(0.0, 1.0)  # a blend with black


def adjust_contrast_(x: torch.Tensor, f: float) -> torch.Tensor:
    mean = gray_mean(x)
    return x.mul_(f).add_((1.0 - f) * mean).clamp_(0.0, 1.0)


def adjust_saturation_(x: torch.Tensor, f: float) -> torch.Tensor:
    gray = grayscale(x)  # before x changes
    return x.mul_(f).add_(gray, alpha=1.0 - f).clamp_(0.0, 1.0)


def adjust_hue_(x: torch.Tensor, f: float) -> torch.Tensor:
    """h -> (h + f) mod 1 in HSV (torchvision's definition), with S and V kept. In sixths of a turn,
    h6 = (g - b) / c, (b - r) / c + 2 or (r - g) / c + 4 where the maximum is R, G or B (c = max - min,
    R before G before B on ties); each channel comes back as v - c clamp(2 - d, 0, 1), d the distance
    on the circle of 6 between (h6 + 6 f) mod 6 + n - 2 and 0, with n = 5, 3, 1 for R, G, B (the
    closed form of torchvision's six-sector table). Float arithmetic only: comparisons, boolean masks
    and `where` take several times longer on the CPU than a plain add."""
    r, g, b = x[0], x[1], x[2]
    maxc, minc = torch.maximum(torch.maximum(r, g), b), torch.minimum(torch.minimum(r, g), b)
    chroma = maxc - minc
    red_max = torch.sub(r, maxc).sign_().add_(1.0)  # 1 where R is the maximum, else 0
    green_max = torch.sub(g, maxc).sign_().add_(1.0)
    green_max.addcmul_(red_max, green_max, value=-1.0)  # G only where R is not
    blue_max = torch.add(red_max, green_max).neg_().add_(1.0)
    h6 = torch.sub(g, b).mul_(red_max)
    h6.addcmul_(torch.sub(b, r).add_(chroma, alpha=2.0), green_max)
    h6.addcmul_(torch.sub(r, g).add_(chroma, alpha=4.0), blue_max)
    h6.div_(chroma.clamp(min=1e-12)).add_(6.0 * f)  # a gray pixel (c = 0) has 0 / c = 0
    h6.sub_(torch.floor(h6.div(6.0)), alpha=6.0)  # into [0, 6)
    for channel, n in zip(x, (5.0, 3.0, 1.0)):
        u = h6.add(n - 2.0)  # in [-1, 9): its distance to 0 on the circle is min(|u|, |u - 6|)
        distance = torch.minimum(u.sub(6.0).abs_(), u.abs_())
        weight = distance.neg_().add_(2.0).clamp_(0.0, 1.0)
        torch.addcmul(maxc, chroma, weight, value=-1.0, out=channel)
    return x


COLOR_OPS = {"brightness": adjust_brightness_, "contrast": adjust_contrast_, "saturation": adjust_saturation_,
             "hue": adjust_hue_}


def adjust_sharpness_(x: torch.Tensor, f: float) -> torch.Tensor:
    if x.shape[-1] <= 2 or x.shape[-2] <= 2:
        return x
    # The 3x3 kernel [[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13 as shifted sums (faster than a grouped conv);
    # the border keeps its pixels.
    rows = x[..., :-2, :] + x[..., 1:-1, :] + x[..., 2:, :]  # (C, H-2, W)
    box = rows[..., :-2] + rows[..., 1:-1] + rows[..., 2:]  # (C, H-2, W-2): the 3x3 sums
    blurred = box.add_(x[..., 1:-1, 1:-1], alpha=4.0).div_(13.0).clamp_(0.0, 1.0)
    inner = x[..., 1:-1, 1:-1]
    inner.mul_(f).add_(blurred, alpha=1.0 - f)
    return x.clamp_(0.0, 1.0)


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
    # Each grid coordinate is a x + b y + c: built as an outer sum of a row and a column per image.
    xs = torch.linspace(-width * 0.5 + 0.5, width * 0.5 - 0.5, width, dtype=torch.float64)
    ys = torch.linspace(-height * 0.5 + 0.5, height * 0.5 - 0.5, height, dtype=torch.float64)
    grid = torch.empty(n, height, width, 2, dtype=x.dtype, device=x.device)
    for axis, half in ((0, 0.5 * width), (1, 0.5 * height)):
        a, b, c = (theta[:, axis, j].view(n, 1, 1) / half for j in range(3))
        row = (a * xs.view(1, 1, width)).to(x.device, x.dtype)  # (n, 1, W)
        column = (b * ys.view(1, height, 1) + c).to(x.device, x.dtype)  # (n, H, 1)
        grid[..., axis] = row + column
    return F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)
