"""Texture moments of one uint8 patch in one call: grey spread, gradient tensor, box-blurred spread.

``patch_texture(patch)`` returns what a frame-statistics pass needs from a patch of an
8-bit frame, with grey levels as fractions of full scale (``level * float32(1/255)``, the
float32 values a caller's ``patch.astype(np.float32) / 255`` holds):

* ``std``: standard deviation of the grey levels, as ``cv2.meanStdDev`` gives it;
* ``gxx``, ``gyy``, ``gxy``: means over the patch's interior of gx*gx, gy*gy, gx*gy, with
  the central differences gx = (g[y, x+1] - g[y, x-1]) / 2, gy likewise, formed in float32;
* ``std_box4``, ``std_box16``: the standard deviation after ``cv2.blur`` with a 4x4 and a
  16x16 box (OpenCV's anchor at the centre, ``BORDER_REFLECT_101``).

``line_energies(dxx, dyy, dxy)`` turns a patch's second derivatives into its bright- and
dark-line energies (the Hessian's eigenvalues, floored and squared) in one pass.

Why a kernel: the same numbers computed with numpy and OpenCV take ~0.45 ms per 256x256
patch, mostly temporaries (a float copy, six gradient arrays, two blurred copies) and
per-call overhead; one pass over the patch reading a 256-entry level table takes a few
hundredths of that.

How close to the numpy/OpenCV path, and why: the box sums are exact in float64 (float32
grey values, at most 256 of them per window), so each blurred value is the same float32
OpenCV writes, and the spreads match ``cv2.meanStdDev`` to float64 rounding. The gradient
products are the same float32 values numpy forms, but summed in float64, where numpy
sums them in float32 (pairwise): the means agree to a few 1e-7 relative.

Memory: a float32 copy and two float64 row-sum arrays of the patch's size (1.3 MB for
256x256). Pure functions over arrays: no config, logging or I/O.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from numba import njit

# Grey level -> float32 fraction of full scale, the value numpy forms for level * float32(1 / 255).
_GREY_LEVELS = np.arange(256, dtype=np.float32) * np.float32(1.0 / 255.0)


class PatchTexture(NamedTuple):
    """``patch_texture``'s moments (module doc); grey levels as fractions of full scale."""

    std: float
    gxx: float
    gyy: float
    gxy: float
    std_box4: float
    std_box16: float


@njit(inline="always")
def _reflect_101(i, n):
    """OpenCV's BORDER_REFLECT_101 index (gfedcb|abcdefgh|gfedcba), reflected again as
    often as a window wider than the patch needs (``cv::borderInterpolate``)."""
    if n == 1:
        return 0
    while i < 0 or i >= n:
        i = -i if i < 0 else 2 * n - 2 - i
    return i


@njit(inline="always")
def _std(total, total_sq, n):
    """``cv2.meanStdDev``'s deviation from a sum and a sum of squares over n values."""
    mean = total / n
    return math.sqrt(max(total_sq / n - mean * mean, 0.0))


@njit(nogil=True, cache=True, fastmath={"reassoc"})
def _box_sums(grey, rows4, rows16):
    """Row sums of the 4- and 16-wide boxes (anchors 2 and 8, reflect-101) of every row.

    Each row is copied once into a buffer reflected 8 pixels out on both sides and summed
    in fours; a 16-wide sum is four of those. Plain additions the compiler vectorises:
    float32 values, at most 16 of them, sum exactly in float64, whatever the order (hence
    ``reassoc``).
    """
    height, width = grey.shape
    pad = np.empty(width + 16, dtype=np.float64)
    quad = np.empty(width + 13, dtype=np.float64)  # quad[j]: pad[j] + ... + pad[j + 3]
    for y in range(height):
        for x in range(width):
            pad[x + 8] = np.float64(grey[y, x])
        for k in range(8):  # the reflected margins
            pad[k] = np.float64(grey[y, _reflect_101(k - 8, width)])
            pad[width + 8 + k] = np.float64(grey[y, _reflect_101(width + k, width)])
        for j in range(width + 13):
            quad[j] = pad[j] + pad[j + 1] + pad[j + 2] + pad[j + 3]
        for x in range(width):
            rows4[y, x] = quad[x + 6]
            rows16[y, x] = quad[x] + quad[x + 4] + quad[x + 8] + quad[x + 12]


@njit(nogil=True, cache=True, fastmath={"reassoc"})
def _box_std(rows, size):
    """Deviation of ``cv2.blur(grey, (size, size))`` from its row sums: column sums by a
    sliding window (exact: at most 256 float32 values), each mean rounded to float32 as
    OpenCV stores it, then spread in float64 (summed in any order: ``reassoc``)."""
    height, width = rows.shape
    anchor = size // 2
    scale = 1.0 / (size * size)
    total = 0.0
    total_sq = 0.0
    column = np.zeros(width, dtype=np.float64)
    for k in range(size - 1):  # the window of output row 0, less its last row
        source = rows[_reflect_101(k - anchor, height)]
        for x in range(width):
            column[x] += source[x]
    for y in range(height):
        added = rows[_reflect_101(y + size - 1 - anchor, height)]
        dropped = rows[_reflect_101(y - anchor, height)]
        for x in range(width):
            window = column[x] + added[x]
            value = np.float64(np.float32(window * scale))
            total += value
            total_sq += value * value
            column[x] = window - dropped[x]
    return _std(total, total_sq, height * width)


@njit(nogil=True, cache=True, fastmath={"reassoc"})
def _texture(patch, levels):
    """(std, gxx, gyy, gxy, std_box4, std_box16) of a uint8 patch (module doc).

    ``reassoc`` lets the compiler split the float64 sums into vector lanes (the sums are
    what is reordered, ~1e-16 relative); each float32 gradient and product is formed as is.
    """
    height, width = patch.shape
    grey = np.empty((height, width), dtype=np.float32)
    total = 0.0
    total_sq = 0.0
    for y in range(height):
        for x in range(width):
            g = levels[patch[y, x]]
            grey[y, x] = g
            total += np.float64(g)
            total_sq += np.float64(g) * np.float64(g)
    std = _std(total, total_sq, height * width)
    half = np.float32(0.5)
    sxx = 0.0
    syy = 0.0
    sxy = 0.0
    for y in range(1, height - 1):
        above = grey[y - 1]
        row = grey[y]
        below = grey[y + 1]
        for x in range(1, width - 1):
            gx = (row[x + 1] - row[x - 1]) * half
            gy = (below[x] - above[x]) * half
            sxx += np.float64(gx * gx)
            syy += np.float64(gy * gy)
            sxy += np.float64(gx * gy)
    interior = max(height - 2, 0) * max(width - 2, 0)
    if interior > 0:
        sxx /= interior
        syy /= interior
        sxy /= interior
    rows4 = np.empty((height, width), dtype=np.float64)
    rows16 = np.empty((height, width), dtype=np.float64)
    _box_sums(grey, rows4, rows16)
    return std, sxx, syy, sxy, _box_std(rows4, 4), _box_std(rows16, 16)


@njit(nogil=True, cache=True, fastmath={"reassoc"})
def _line_energies(dxx, dyy, dxy):
    """(bright-line, dark-line) energy from the Hessian's second derivatives (``line_energies``)."""
    height, width = dxx.shape
    bright = 0.0
    dark = 0.0
    for y in range(height):
        row_xx = dxx[y]
        row_yy = dyy[y]
        row_xy = dxy[y]
        for x in range(width):
            trace = row_xx[x] + row_yy[x]
            diff = np.float64(row_xx[x] - row_yy[x])
            twice = np.float64(row_xy[x] + row_xy[x])
            root = np.float32(math.sqrt(diff * diff + twice * twice))
            valley = max(min(trace, root), np.float32(0.0))
            ridge = max(min(-trace, root), np.float32(0.0))
            dark += np.float64(valley) * np.float64(valley)
            bright += np.float64(ridge) * np.float64(ridge)
    return bright, dark


def line_energies(dxx, dyy, dxy) -> tuple[float, float]:
    """(bright-line, dark-line) energy of a patch from its float32 second derivatives.

    The Hessian has eigenvalues (trace +- root) / 2, root = |(dxx - dyy, 2 dxy)|; a dark
    line (a valley) scores min(trace, root), a bright one (a ridge) min(-trace, root), each
    floored at 0, squared and summed over the patch. The same float32 values as
    ``cv2.add`` / ``cv2.subtract`` / ``cv2.magnitude`` / ``cv2.min`` / ``cv2.max`` and
    ``cv2.norm(NORM_L2SQR)`` give, but in one pass instead of ten calls (the magnitude is
    correctly rounded here, OpenCV's may differ in its last bit: the sums agree to 2.4e-7
    relative at worst, ~1e-9 on a 256x256 patch).

    >>> import numpy as np
    >>> valley = np.full((4, 4), 2.0, np.float32); zero = np.zeros((4, 4), np.float32)
    >>> line_energies(valley, zero, zero)  # curvature 2 across, 0 along: a dark line of strength 2
    (0.0, 64.0)
    """
    arrays = [np.asarray(a) for a in (dxx, dyy, dxy)]
    if any(a.dtype != np.float32 or a.ndim != 2 or a.shape != arrays[0].shape for a in arrays):
        msg = f"line_energies: expected three float32 2-D arrays of one shape, got {[(a.dtype, a.shape) for a in arrays]}"
        raise ValueError(msg)
    bright, dark = _line_energies(*arrays)
    return float(bright), float(dark)


def patch_texture(patch) -> PatchTexture:
    """The texture moments of a 2-D uint8 patch (module doc); gradient means are 0 below 3x3.

    >>> import numpy as np
    >>> ramp = np.tile(np.arange(0, 64, 2, dtype=np.uint8), (32, 1))  # 2 levels per pixel, left to right
    >>> t = patch_texture(ramp)
    >>> round(t.gxx * 255 ** 2, 4), t.gyy, round(t.std_box16 / t.std, 2)
    (4.0, 0.0, 0.88)
    """
    if not isinstance(patch, np.ndarray) or patch.ndim != 2 or patch.dtype != np.uint8 or patch.size == 0:
        got = f"{patch.dtype} with shape {patch.shape}" if isinstance(patch, np.ndarray) else type(patch).__name__
        msg = f"patch_texture: expected a non-empty 2-D uint8 patch, got {got}"
        raise ValueError(msg)
    return PatchTexture(*_texture(patch, _GREY_LEVELS))
