"""Numpy rasteriser for the tabletop scene.

World coordinates are "table units": the table is the square [0, 1] x [0, 1], x to the right and
y downwards (the same orientation as image rows/columns). A camera is a square window of the
world (`x0, y0, span`) drawn at `size x size` pixels, so the top camera (window = the table) and
the wrist camera (a smaller window centred on the gripper) share one drawing routine and the
wrist view is rendered directly at the output resolution (no crop-and-resize blur).

Everything is drawn with slice assignments (squares) and small masked patches (discs, rings), so
a 96x96 frame costs a few tens of microseconds.
"""

from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # only for type hints; env.py imports this module
    from pirecon.sim.env import Scene

# Strong, well separated block colours (uint8 RGB).
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 175, 60),
    "blue": (40, 90, 235),
    "yellow": (240, 210, 30),
}
TABLE_RGB = (125, 125, 125)  # mid grey table top
FLOOR_RGB = (70, 50, 35)  # brown floor, only visible to the wrist camera near the table edge
ZONE_RGB = (225, 225, 225)  # the white target zone
GRIPPER_RGB = (15, 15, 15)  # black gripper: ring when open, filled disc when closed

GRIPPER_RADIUS = 0.04  # outer radius of the gripper marker, table units
GRIPPER_RING = 0.014  # ring thickness when the gripper is open (at least one pixel is drawn)
GRIPPER_CLOSED_RADIUS = 0.03  # radius of the filled disc drawn when the gripper is closed


@functools.lru_cache(maxsize=64)
def _solid(rgb: tuple[int, int, int], size: int) -> np.ndarray:
    """A cached (size, size, 3) uint8 image of one colour (copying from it beats broadcasting)."""
    img = np.empty((size, size, 3), dtype=np.uint8)
    img[:] = rgb
    img.flags.writeable = False
    return img


class Canvas:
    """An RGB image showing the world window [x0, x0 + span) x [y0, y0 + span).

    img: (size, size, 3) uint8, drawn in place.
    """

    def __init__(self, size: int, x0: float, y0: float, span: float, background: tuple[int, int, int]):
        self.img = _solid(background, size).copy()
        self.size = size
        self.x0, self.y0 = x0, y0
        self.scale = size / span  # pixels per table unit

    def _px(self, x: float, y: float) -> tuple[float, float]:
        """World point -> continuous pixel coordinates (column, row); pixel i covers [i, i+1)."""
        return (x - self.x0) * self.scale, (y - self.y0) * self.scale

    def rect(self, x_min: float, y_min: float, x_max: float, y_max: float, rgb) -> None:
        """Fill the axis-aligned world rectangle [x_min, x_max) x [y_min, y_max)."""
        c0, r0 = self._px(x_min, y_min)
        c1, r1 = self._px(x_max, y_max)
        c0, c1 = max(round(c0), 0), min(round(c1), self.size)
        r0, r1 = max(round(r0), 0), min(round(r1), self.size)
        if c0 < c1 and r0 < r1:
            self.img[r0:r1, c0:c1] = _solid(rgb, self.size)[r0:r1, c0:c1]

    def square(self, cx: float, cy: float, half: float, rgb) -> None:
        """Fill the square of half-side `half` centred on (cx, cy)."""
        self.rect(cx - half, cy - half, cx + half, cy + half, rgb)

    def disc(self, cx: float, cy: float, radius: float, rgb, inner: float = 0.0) -> None:
        """Fill the disc of `radius` around (cx, cy); with `inner` > 0 only the ring outside it.

        A ring is drawn at least one pixel thick so it stays visible at small resolutions.
        """
        pc, pr = self._px(cx, cy)
        r_out = radius * self.scale
        r_in = 0.0 if inner <= 0 else max(0.0, min(inner * self.scale, r_out - 1.0))
        c0, c1 = max(math.floor(pc - r_out), 0), min(math.ceil(pc + r_out) + 1, self.size)
        r0, r1 = max(math.floor(pr - r_out), 0), min(math.ceil(pr + r_out) + 1, self.size)
        if c0 >= c1 or r0 >= r1:
            return
        dx = np.arange(c0, c1) + 0.5 - pc  # (w,) distances of pixel centres
        dy = np.arange(r0, r1) + 0.5 - pr  # (h,)
        d2 = dy[:, None] ** 2 + dx[None, :] ** 2  # (h, w)
        mask = d2 <= r_out * r_out
        if r_in > 0:
            mask &= d2 >= r_in * r_in
        self.img[r0:r1, c0:c1][mask] = rgb


def draw_scene(canvas: Canvas, scene: "Scene", block_half: float, zone_half: float,
               draw_table: bool = True) -> np.ndarray:
    """Draw table, target zone, blocks (the held one last) and the gripper; returns canvas.img.

    `draw_table=False` skips the table when the canvas background already is the table.
    """
    if draw_table:
        canvas.rect(0.0, 0.0, 1.0, 1.0, TABLE_RGB)
    canvas.square(scene.zone[0], scene.zone[1], zone_half, ZONE_RGB)
    order = [i for i in range(len(scene.colors)) if i != scene.held]
    if scene.held is not None:
        order.append(scene.held)  # a lifted block is drawn above the others
    for i in order:
        canvas.square(scene.blocks[i, 0], scene.blocks[i, 1], block_half, COLORS[scene.colors[i]])
    gx, gy = scene.gripper
    if scene.closed:
        canvas.disc(gx, gy, GRIPPER_CLOSED_RADIUS, GRIPPER_RGB)
    else:
        canvas.disc(gx, gy, GRIPPER_RADIUS, GRIPPER_RGB, inner=GRIPPER_RADIUS - GRIPPER_RING)
    return canvas.img


def render_top(scene: "Scene", size: int, block_half: float, zone_half: float) -> np.ndarray:
    """The fixed overhead camera: the whole table. Returns (size, size, 3) uint8."""
    return draw_scene(Canvas(size, 0.0, 0.0, 1.0, TABLE_RGB), scene, block_half, zone_half, draw_table=False)


def render_wrist(scene: "Scene", size: int, span: float, block_half: float, zone_half: float) -> np.ndarray:
    """The wrist camera: a `span x span` window centred on the gripper. Returns (size, size, 3) uint8."""
    gx, gy = scene.gripper
    canvas = Canvas(size, gx - span / 2, gy - span / 2, span, FLOOR_RGB)
    return draw_scene(canvas, scene, block_half, zone_half)
