"""Tiled inference geometry and blending, pure numpy: any frame size through a fixed-size network.

Why tiles: the seed resized whole frames down to the network's input and lost the small
pores; a 2560x1920 frame in one piece needs gigabytes of activations. So the frame is
reflect-padded to multiples of `multiple` (the U-Net engine passes the model contract's 32) and cut into
equal tiles of at most `tile_px` per side that overlap by at least `overlap_px`; each tile's
logits are weighted by a feather that rises linearly across the overlap on every side that
borders another tile (weight 1 on sides at the frame border, where no other tile helps),
summed, and the class is the argmax of the weighted sum. Where two tiles overlap by exactly
`overlap_px`, the two feathers add up to 1: a linear cross-fade, so there is no seam, and the
pixels nearest a tile edge (whose convolutions saw zero padding) get the least weight.

Geometry: per axis, the number of tiles is the fewest that keep the overlap; then the tile
shrinks (to a multiple of `multiple`) so that the tiles do not reach far beyond the frame, and
the starts are spread evenly on that grid (the pooling grid stays aligned with the frame's,
so overlapping tiles see the same pooling windows). A frame smaller than a tile is one tile of
its own padded size (unless the model has a fixed input size). Every tile has the same shape,
so tiles can be batched into one network call.

Memory: the accumulator is float32 [classes, H, W] (59 MB for a 2560x1920 frame, 3 classes).
A guided U-Net's output is 1/stride as large per side; `TilePlan.coarse` maps the layout
onto it, and its 6 coarse maps of a 2560x1920 frame take 7 MB at stride 4.

Example:
    >>> import numpy as np
    >>> plan = plan_tiles(333, 700, tile_px=256, overlap_px=32)
    >>> plan.tile_hw, plan.padded_hw, len(plan.origins)
    ((192, 256), (336, 704), 6)
    >>> image = np.arange(333 * 700, dtype=np.float32).reshape(333, 700)
    >>> blender = TileBlender(plan, n_classes=1)
    >>> for (y, x), tile in zip(plan.origins, extract_tiles(pad_frame(image, plan), plan)):
    ...     blender.add(tile[None], y, x)
    >>> bool(np.allclose(blender.blended()[0, :333, :700], image))
    True
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

INPUT_MULTIPLE = 16  # the default grid; the U-Net engine passes the contract's (32)


@dataclass(frozen=True)
class TilePlan:
    """Where the tiles of one frame lie: all `tile_hw`, top-left corners in `origins`."""

    frame_hw: tuple[int, int]
    padded_hw: tuple[int, int]
    tile_hw: tuple[int, int]
    overlap_px: int
    origins: tuple[tuple[int, int], ...]

    @property
    def n_tiles(self) -> int:
        return len(self.origins)

    def coarse(self, stride: int) -> TilePlan:
        """The same layout at 1/`stride` resolution, for a model whose output is that much coarser.

        Tile sides and origins are multiples of the plan's `multiple`, which the stride
        divides, so every tile maps onto whole coarse pixels; the feather shrinks with it.

        >>> plan_tiles(1920, 2560, 512, 64, multiple=32).coarse(4).tile_hw
        (112, 120)
        """
        if stride == 1:
            return self
        if any(v % stride for v in (*self.padded_hw, *self.tile_hw, *(c for o in self.origins for c in o))):
            msg = f"tile layout {self.tile_hw} / {self.padded_hw} is not on a grid of {stride} px"
            raise ValueError(msg)
        return TilePlan(
            frame_hw=(-(-self.frame_hw[0] // stride), -(-self.frame_hw[1] // stride)),
            padded_hw=(self.padded_hw[0] // stride, self.padded_hw[1] // stride),
            tile_hw=(self.tile_hw[0] // stride, self.tile_hw[1] // stride),
            overlap_px=self.overlap_px // stride,
            origins=tuple((y // stride, x // stride) for y, x in self.origins),
        )


def round_up(value: int, multiple: int = INPUT_MULTIPLE) -> int:
    """Smallest multiple of `multiple` >= value (at least one multiple).

    >>> round_up(333), round_up(16), round_up(0)
    (336, 16, 16)
    """
    return max(multiple, -(-value // multiple) * multiple)


def _grid_starts(padded: int, tile: int, overlap_px: int, multiple: int) -> list[int] | None:
    """Evenly spread starts on the `multiple` grid, neighbours overlapping by >= `overlap_px`.

    None when no grid step fits (the tile minus the overlap is under one `multiple`).
    """
    max_gap_units = (tile - overlap_px) // multiple
    if max_gap_units < 1:
        return None
    span_units = (padded - tile) // multiple
    if span_units == 0:
        return [0]
    n_gaps = -(-span_units // max_gap_units)
    base, extra = divmod(span_units, n_gaps)
    starts, position = [0], 0
    for gap in range(n_gaps):
        # spread the `extra` longer gaps evenly rather than bunching them at the start
        position += base + (1 if (gap * extra) // n_gaps != ((gap + 1) * extra) // n_gaps else 0)
        starts.append(position * multiple)
    return starts


def _axis_plan(length: int, tile_px: int, overlap_px: int, fixed: bool, multiple: int) -> tuple[int, int, list[int]]:
    """(padded length, tile length, tile starts) along one axis."""
    padded = round_up(length, multiple)
    if fixed:
        padded = max(padded, tile_px)
        starts = _grid_starts(padded, tile_px, overlap_px, multiple)
        if starts is None:
            msg = f"tile {tile_px} px minus overlap {overlap_px} px must be at least {multiple} px"
            raise ValueError(msg)
        return padded, tile_px, starts
    if padded <= tile_px:
        return padded, padded, [0]
    # The fewest tiles of the largest size, then the smallest tile that needs no more of them.
    n_tiles = -(-(padded - overlap_px) // (tile_px - overlap_px))
    tile = min(tile_px, round_up(-(-(padded + (n_tiles - 1) * overlap_px) // n_tiles), multiple))
    while tile < tile_px:
        starts = _grid_starts(padded, tile, overlap_px, multiple)
        if starts is not None and len(starts) <= n_tiles:
            return padded, tile, starts
        tile += multiple
    starts = _grid_starts(padded, tile_px, overlap_px, multiple)
    if starts is None:
        msg = f"tile {tile_px} px minus overlap {overlap_px} px must be at least {multiple} px"
        raise ValueError(msg)
    return padded, tile_px, starts


def plan_tiles(height: int, width: int, tile_px: int, overlap_px: int, *,
               fixed_tile_hw: tuple[int, int] | None = None, multiple: int = INPUT_MULTIPLE) -> TilePlan:
    """Tile layout for a `height` x `width` frame.

    `tile_px` is the largest tile side (a multiple of `multiple`); `fixed_tile_hw` forces the
    tile shape (models without dynamic H/W), padding small frames up to it.

    >>> plan_tiles(1920, 2560, 512, 64).tile_hw
    (448, 480)
    >>> plan_tiles(100, 120, 512, 64).origins
    ((0, 0),)
    """
    if tile_px % multiple or tile_px <= 0:
        msg = f"tile_px must be a positive multiple of {multiple}, got {tile_px}"
        raise ValueError(msg)
    if not 0 <= 2 * overlap_px < tile_px:
        msg = f"overlap_px must be in [0, tile_px / 2), got {overlap_px} for tile_px {tile_px}"
        raise ValueError(msg)
    if height < 1 or width < 1:
        msg = f"frame must be at least 1x1, got {height}x{width}"
        raise ValueError(msg)
    fixed = fixed_tile_hw is not None
    tile_h_max, tile_w_max = fixed_tile_hw if fixed else (tile_px, tile_px)
    if fixed and (tile_h_max % multiple or tile_w_max % multiple or 2 * overlap_px >= min(fixed_tile_hw)):
        msg = f"fixed tile {fixed_tile_hw} must be multiples of {multiple} and more than twice overlap_px {overlap_px}"
        raise ValueError(msg)
    padded_h, tile_h, ys = _axis_plan(height, tile_h_max, overlap_px, fixed, multiple)
    padded_w, tile_w, xs = _axis_plan(width, tile_w_max, overlap_px, fixed, multiple)
    origins = tuple((y, x) for y in ys for x in xs)
    return TilePlan((height, width), (padded_h, padded_w), (tile_h, tile_w), overlap_px, origins)


def pad_frame(frame: np.ndarray, plan: TilePlan) -> np.ndarray:
    """Reflect-pad a 2-D frame at the bottom and right to `plan.padded_hw` (no copy if none needed).

    Reflection (not zeros) keeps edge statistics natural for the network; numpy reflects
    repeatedly when the padding is wider than the frame, and a 1-pixel side is repeated.
    """
    pad_h = plan.padded_hw[0] - frame.shape[0]
    pad_w = plan.padded_hw[1] - frame.shape[1]
    if pad_h == 0 and pad_w == 0:
        return frame
    mode = "reflect" if min(frame.shape) > 1 else "edge"
    return np.pad(frame, ((0, pad_h), (0, pad_w)), mode=mode)


def extract_tiles(padded: np.ndarray, plan: TilePlan) -> Iterator[np.ndarray]:
    """Views of the padded frame, one per origin, in `plan.origins` order."""
    tile_h, tile_w = plan.tile_hw
    for y, x in plan.origins:
        yield padded[y:y + tile_h, x:x + tile_w]


def _ramp(length: int, overlap_px: int, rise_start: bool, rise_end: bool) -> np.ndarray:
    weights = np.ones(length, np.float32)
    if overlap_px == 0:
        return weights
    rise = (np.arange(overlap_px, dtype=np.float32) + 0.5) / overlap_px
    if rise_start:
        weights[:overlap_px] = np.minimum(weights[:overlap_px], rise)
    if rise_end:
        weights[length - overlap_px:] = np.minimum(weights[length - overlap_px:], rise[::-1])
    return weights


def feather_sides(plan: TilePlan, y: int, x: int) -> tuple[bool, bool, bool, bool]:
    """Which sides of the tile at (y, x) face another tile (its feather rises there): top, bottom, left, right.

    >>> feather_sides(plan_tiles(64, 112, 64, 16), 0, 0)
    (False, False, False, True)
    """
    tile_h, tile_w = plan.tile_hw
    padded_h, padded_w = plan.padded_hw
    return y > 0, y + tile_h < padded_h, x > 0, x + tile_w < padded_w


def tile_weights(plan: TilePlan, y: int, x: int) -> np.ndarray:
    """The feather of the tile at (y, x): linear over `overlap_px` on sides facing another tile.

    >>> plan = plan_tiles(64, 112, 64, 16)
    >>> [float(v) for v in tile_weights(plan, 0, 0)[0, [0, 47, 63]]]
    [1.0, 1.0, 0.03125]
    """
    top, bottom, left, right = feather_sides(plan, y, x)
    wy = _ramp(plan.tile_hw[0], plan.overlap_px, top, bottom)
    wx = _ramp(plan.tile_hw[1], plan.overlap_px, left, right)
    return np.outer(wy, wx)


class TileBlender:
    """Accumulates feathered tile logits over the padded frame; `argmax()` gives the mask."""

    def __init__(self, plan: TilePlan, n_classes: int) -> None:
        self.plan = plan
        # One tile covering the frame (the default for a 2560x1920 frame) has no feather:
        # its logits are the blend as they come, without three passes over them.
        self._single = len(plan.origins) == 1
        self.sum = np.zeros((n_classes, *plan.padded_hw), np.float32)
        self.weight_sum = (np.ones if self._single else np.zeros)(plan.padded_hw, np.float32)
        self._weights: dict[tuple[bool, bool, bool, bool], np.ndarray] = {}

    def _weights_at(self, y: int, x: int) -> np.ndarray:
        key = feather_sides(self.plan, y, x)
        if key not in self._weights:
            self._weights[key] = tile_weights(self.plan, y, x)
        return self._weights[key]

    def add(self, logits: np.ndarray, y: int, x: int) -> None:
        """Add one tile's logits `[classes, tile_h, tile_w]` at origin (y, x)."""
        if self._single:
            self.sum = np.asarray(logits, np.float32)
            return
        tile_h, tile_w = self.plan.tile_hw
        weights = self._weights_at(y, x)
        self.sum[:, y:y + tile_h, x:x + tile_w] += logits * weights
        self.weight_sum[y:y + tile_h, x:x + tile_w] += weights

    def blended(self) -> np.ndarray:
        """Weighted-mean logits over the padded frame, `[classes, padded_h, padded_w]`."""
        return self.sum if self._single else self.sum / self.weight_sum

    def argmax(self) -> np.ndarray:
        """uint8 class per pixel of the original frame (the weight sum is positive, so it cannot change the argmax)."""
        height, width = self.plan.frame_hw
        return np.argmax(self.sum[:, :height, :width], axis=0).astype(np.uint8)
