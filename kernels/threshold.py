"""Binary and adaptive (local mean) thresholds, numba CPU kernels; masks are uint8 0/1."""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from kernels._threads import threads_for
from kernels._validate import check_image, check_positive_int, check_real
from kernels.backend import resolve_backend
from kernels.config import ROW_BAND_ROWS


@njit(parallel=True, nogil=True, cache=True)
def _threshold_binary(img, level, out):
    """out = img > level. ``level`` has img's dtype, so the compare vectorises in 8/16-bit lanes."""
    height = img.shape[0]
    for y in prange(height):
        src = img[y]
        dst = out[y]
        for x in range(src.shape[0]):
            dst[x] = np.uint8(src[x] > level)


@njit(inline="always")
def _clamp(index, length):
    """BORDER_REPLICATE: an index past either end reads the edge pixel."""
    return min(max(index, 0), length - 1)


@njit(parallel=True, nogil=True, cache=True)
def _adaptive_mean_threshold(img, radius, offset, n_bands, out):
    """out = img + offset > round_half_up(window sum / area), window (2r+1)^2, edges replicated.

    Bands of rows run in parallel. Each band keeps running column sums over 2r+1 rows
    (one add and one subtract per pixel per row, vectorised) in a buffer padded by r
    replicated entries each side; a prefix sum over that buffer gives every window sum
    as one subtraction. The rounded-mean compare is done without division:
    k > floor((2S + A) / 2A)  <=>  2S + A < 2Ak  for integer k = img + offset.
    Sums are int64, so 16-bit images and large blocks cannot overflow.
    Memory per band: two int64 rows of width + 2r + 1.
    """
    height, width = img.shape
    area = (2 * radius + 1) * (2 * radius + 1)
    padded = width + 2 * radius
    for band in prange(n_bands):
        y_start = band * height // n_bands
        y_stop = (band + 1) * height // n_bands
        col_sums = np.zeros(padded, dtype=np.int64)
        prefix = np.empty(padded + 1, dtype=np.int64)
        inner = col_sums[radius:radius + width]
        for dy in range(-radius, radius + 1):
            src = img[_clamp(y_start + dy, height)]
            for x in range(width):
                inner[x] += src[x]
        for y in range(y_start, y_stop):
            left = inner[0]
            right = inner[width - 1]
            for i in range(radius):
                col_sums[i] = left
                col_sums[radius + width + i] = right
            total = 0
            prefix[0] = 0
            for i in range(padded):
                total += col_sums[i]
                prefix[i + 1] = total
            src = img[y]
            dst = out[y]
            window = 2 * radius + 1
            for x in range(width):
                window_sum = prefix[x + window] - prefix[x]
                k = np.int64(src[x]) + offset
                dst[x] = np.uint8(2 * window_sum + area < 2 * area * k)
            if y + 1 < y_stop:
                add = img[_clamp(y + radius + 1, height)]
                sub = img[_clamp(y - radius, height)]
                for x in range(width):
                    inner[x] += np.int64(add[x]) - np.int64(sub[x])


def threshold(img, value, backend="auto"):
    """Binary mask of a 2-D uint8/uint16 image: 1 where ``img > value``, else 0 (uint8).

    Same rule as OpenCV's THRESH_BINARY (``img > floor(value)`` for integer images).

    >>> import numpy as np, kernels
    >>> kernels.threshold(np.array([[0, 99, 100, 255]], dtype=np.uint8), 99).tolist()
    [[0, 0, 1, 1]]
    """
    resolve_backend(backend, "threshold")
    img = check_image(img, "threshold")
    value = check_real(value, "value", "threshold")
    max_value = 255 if img.dtype == np.uint8 else 65535
    level = math.floor(value)
    if level < 0:
        return np.ones(img.shape, dtype=np.uint8)
    if level >= max_value:
        return np.zeros(img.shape, dtype=np.uint8)
    out = np.empty(img.shape, dtype=np.uint8)
    with threads_for(img.size):
        _threshold_binary(img, img.dtype.type(level), out)
    return out


def adaptive_threshold(img, block_size, offset, backend="auto"):
    """Local-mean threshold: 1 where ``img > mean(block_size x block_size window) - offset``.

    Matches ``cv2.adaptiveThreshold(img, 1, ADAPTIVE_THRESH_MEAN_C, THRESH_BINARY,
    block_size, offset)``: the window mean is taken with replicated edges and rounded to an
    integer grey level first (OpenCV keeps it in an image of the input type). OpenCV only
    takes uint8; uint16 follows the same rule. ``block_size`` must be odd and > 1.

    >>> import numpy as np, kernels
    >>> img = np.zeros((5, 5), dtype=np.uint8); img[2, 2] = 200
    >>> int(kernels.adaptive_threshold(img, 3, 0).sum())
    1
    """
    resolve_backend(backend, "adaptive_threshold")
    img = check_image(img, "adaptive_threshold")
    block_size = check_positive_int(block_size, "block_size", "adaptive_threshold")
    if block_size < 3 or block_size % 2 == 0:
        msg = f"adaptive_threshold: block_size must be odd and >= 3, got {block_size}"
        raise ValueError(msg)
    offset = check_real(offset, "offset", "adaptive_threshold")
    # img - mean > -offset with integer img and mean  <=>  img + ceil(offset) > mean
    offset_levels = math.ceil(offset)
    height = img.shape[0]
    out = np.empty(img.shape, dtype=np.uint8)
    with threads_for(img.size) as threads:
        n_bands = max(1, min(4 * threads, height // ROW_BAND_ROWS))
        _adaptive_mean_threshold(img, block_size // 2, np.int64(offset_levels), n_bands, out)
    return out
