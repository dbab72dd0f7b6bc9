"""Object outlines and how they are filled in: the geometry both generators share.

Why shared: the particles and pores of v2 (`lamellar.py`) and v3 (`realistic_objects.py`)
are both wobbly ellipses of log-normal size, filled into small regions of interest, the
last ones shrunk until they add no more than the area still wanted. The generators differ
in their shape laws (which harmonics, how rough, radius or equal-area diameter) and in
where objects go, not in this geometry; one copy keeps a fix to it from reaching only one
of them.

Polygon vertices carry `SHIFT` fractional bits when filled (cv2 `shift`), so small pores
stay round.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> harmonics = np.arange(2, 5, dtype=np.float64)
>>> outlines = wobbly_ellipses(rng, np.array([[10.0, 8.0]]), np.array([6.0]), np.array([3.0]),
...                            np.array([0.0]), harmonics, np.zeros((1, 3)), n_vertices=32)
>>> outlines.shape
(1, 32, 2)
>>> (rows, columns), patch, _ = fill_in_roi(outlines[0], (20, 20))
>>> (rows.start, rows.stop, columns.start, columns.stop), int(patch.sum())  # area 56.5 px
((5, 12, 4, 17), 73)
>>> fitted = fit_by_shrinking(outlines[0], np.array([10.0, 8.0]), 40, (20, 20), 0,
...                           lambda roi, patch: int(patch.sum()))
>>> fitted[3]  # px it adds, shrunk to at most 40
39
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import cv2
import numpy as np

logger = logging.getLogger(__name__)

# Fixed-point bits of polygon vertices (cv2 `shift`): small pores stay round.
SHIFT = 4


def log_normal_diameters(
    rng: np.random.Generator, count: int, mean_px: float, sd_px: float, min_px: float
) -> np.ndarray:
    """Diameters from a log-normal with this mean and sd (skewed like real size distributions).

    >>> log_normal_diameters(np.random.default_rng(0), 3, 10.0, 0.0, 4.0).tolist()
    [10.0, 10.0, 10.0]
    """
    if sd_px <= 0:
        return np.full(count, max(min_px, mean_px))
    sigma2 = math.log(1.0 + (sd_px / mean_px) ** 2)
    mu = math.log(mean_px) - sigma2 / 2.0
    return np.maximum(min_px, rng.lognormal(mu, math.sqrt(sigma2), count))


def wobbly_ellipses(
    rng: np.random.Generator,
    centres_xy: np.ndarray,
    semi_x_px: np.ndarray,
    semi_y_px: np.ndarray,
    angles_deg: np.ndarray,
    harmonics: np.ndarray,
    amplitudes: np.ndarray,
    n_vertices: int,
) -> np.ndarray:
    """A batch of closed rounded outlines, (count, n_vertices, 2) in x, y.

    Outline i is an ellipse with semi-axes `semi_x_px[i]` (along `angles_deg[i]`; image y
    points down, so a positive angle rises to the right) and `semi_y_px[i]`, whose radius
    is scaled by 1 + sum over h of `amplitudes[i, h]` cos(`harmonics[h]` theta + phase),
    clipped to 0.45..1.8 (no spikes, no pinches); the phases are drawn here, after the
    caller drew the amplitudes (its shape law). A whole batch at once: per-object numpy
    calls would dominate the run time.
    """
    theta = np.linspace(0.0, 2.0 * np.pi, n_vertices, endpoint=False)
    phases = rng.uniform(0.0, 2.0 * np.pi, (len(semi_x_px), harmonics.size))
    waves = np.cos(harmonics[None, :, None] * theta[None, None, :] + phases[:, :, None])
    wobble = np.clip(1.0 + np.einsum("ch,chv->cv", amplitudes, waves), 0.45, 1.8)
    x = semi_x_px[:, None] * wobble * np.cos(theta)
    y = semi_y_px[:, None] * wobble * np.sin(theta)
    angle = np.radians(angles_deg)[:, None]
    xr = centres_xy[:, 0:1] + x * np.cos(angle) + y * np.sin(angle)
    yr = centres_xy[:, 1:2] - x * np.sin(angle) + y * np.cos(angle)
    return np.stack([xr, yr], axis=2)


def fill_in_roi(
    points_xy: np.ndarray, shape: tuple[int, int], pad_px: int = 0
) -> tuple[tuple[slice, slice], np.ndarray, np.ndarray] | None:
    """Rasterise a polygon into a small patch: (roi slices, patch uint8 0/1, polygon in patch coords).

    The patch is the polygon's bounding box cut to the frame, grown by `pad_px` (room for
    an outline drawn around it); None when the polygon lies outside the frame. The polygon
    in patch coordinates is fixed point (`SHIFT` bits), ready for cv2 drawing.
    """
    height, width = shape
    x0 = max(0, int(math.floor(points_xy[:, 0].min())) - pad_px)
    y0 = max(0, int(math.floor(points_xy[:, 1].min())) - pad_px)
    x1 = min(width, int(math.ceil(points_xy[:, 0].max())) + 1 + pad_px)
    y1 = min(height, int(math.ceil(points_xy[:, 1].max())) + 1 + pad_px)
    if x1 <= x0 or y1 <= y0:
        return None
    local = np.round((points_xy - (x0, y0)) * (1 << SHIFT)).astype(np.int32).reshape(-1, 1, 2)
    patch = np.zeros((y1 - y0, x1 - x0), dtype=np.uint8)
    cv2.fillPoly(patch, [local], 1, cv2.LINE_8, shift=SHIFT)
    return (slice(y0, y1), slice(x0, x1)), patch, local


def fill_outlines(canvas: np.ndarray, outlines_xy: np.ndarray) -> None:
    """Set every pixel inside any of `outlines_xy` (count, n_vertices, 2) to 1 in `canvas` (uint8).

    One fillPoly call per outline: a single multi-polygon call would XOR the overlaps.
    """
    for polygon in np.round(outlines_xy * (1 << SHIFT)).astype(np.int32):
        cv2.fillPoly(canvas, [polygon], 1, cv2.LINE_8, shift=SHIFT)


def fit_by_shrinking(
    outline: np.ndarray,
    centre_xy: np.ndarray,
    remaining_px: float,
    shape: tuple[int, int],
    pad_px: int,
    count_new: Callable[[tuple[slice, slice], np.ndarray], int],
) -> tuple[tuple[slice, slice], np.ndarray, np.ndarray, int] | None:
    """Rasterise an outline; shrink and retry while it would add more than `remaining_px`.

    Small shapes rasterise larger than their geometric area (edge pixels count), so a
    geometric shrink alone overshoots on small frames. `count_new(roi, patch)` says how many
    pixels the patch would add. Returns (roi, patch, outline in patch coords, new px), or
    None when the outline leaves the frame or still adds too much after four tries.
    """
    for _ in range(4):
        filled = fill_in_roi(outline, shape, pad_px)
        if filled is None:
            return None
        roi, patch, local = filled
        new_px = count_new(roi, patch)
        if new_px <= remaining_px + 0.5:
            return roi, patch, local, new_px
        outline = centre_xy + (outline - centre_xy) * (0.95 * math.sqrt(remaining_px / new_px))
    return None
