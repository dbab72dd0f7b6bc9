"""CLAHE stage 1: per-tile histograms, clipping and LUTs (numba CPU cores).

Integer steps are OpenCV's (``CLAHE_CalcLut_Body`` in ``clahe.cpp``): clip at ``clip``,
spread the excess as ``clipped // hist_size`` per bin plus one count every
``hist_size // residual`` bins, prefix-sum, then ``round(cdf * lut_scale)`` in float32.
The tables therefore equal OpenCV's exactly; only interpolation may round differently.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(inline="always")
def reflect_101(index, length):
    """OpenCV's borderInterpolate for BORDER_REFLECT_101 (any distance past either end)."""
    if length == 1:
        return 0
    while index < 0 or index >= length:
        if index < 0:
            index = -index
        else:
            index = 2 * (length - 1) - index
    return index


@njit(inline="always")
def _count_pixels(pixels, hist, lane_stride):
    """Add a row segment to a histogram made of 4 interleaved lanes.

    Consecutive pixels go to different lanes so equal neighbours (flat image regions) do
    not serialise on one counter's load-increment-store. With lane_stride == 0 the four
    lanes are the same counters: 65536-bin histograms (3 more lanes would cost 768 KiB)
    and small tiles.
    Indices run from 0 so numba can drop its negative-index wrap-around code.
    """
    n = pixels.shape[0]
    n4 = n - n % 4
    for i in range(0, n4, 4):
        hist[pixels[i]] += 1
        hist[lane_stride + pixels[i + 1]] += 1
        hist[2 * lane_stride + pixels[i + 2]] += 1
        hist[3 * lane_stride + pixels[i + 3]] += 1
    for i in range(n4, n):
        hist[pixels[i]] += 1


@njit(parallel=True, nogil=True, cache=True)
def tile_histograms(img, tiles_y, tiles_x, tile_h, tile_w, n_strips, lane_stride, hist_size):
    """Per-(tile, strip) histograms of the reflect-101 padded image, without padding it.

    Work items are tiles cut into ``n_strips`` horizontal strips, so a 1x1 or 2x2 grid
    still feeds every thread. Rows and columns past the image edge are mapped through
    reflect-101; interior pixels run the plain counting loop. Memory: one int32 histogram
    of ``hist_size + 3 * lane_stride`` counters per work item.
    """
    height, width = img.shape
    n_items = tiles_y * tiles_x * n_strips
    partial = np.empty((n_items, hist_size + 3 * lane_stride), dtype=np.int32)
    for item in prange(n_items):
        tile = item // n_strips
        strip = item - tile * n_strips
        ty = tile // tiles_x
        tx = tile - ty * tiles_x
        y_start = ty * tile_h + strip * tile_h // n_strips
        y_stop = ty * tile_h + (strip + 1) * tile_h // n_strips
        x_start = tx * tile_w
        x_stop = x_start + tile_w
        inside_stop = min(x_stop, width)
        pad_start = max(x_start, width)
        hist = partial[item]
        hist[:] = 0
        for y_ext in range(y_start, y_stop):
            row = img[reflect_101(y_ext, height)]
            if x_start < inside_stop:
                _count_pixels(row[x_start:inside_stop], hist, lane_stride)
            for x_ext in range(pad_start, x_stop):
                hist[row[reflect_101(x_ext, width)]] += 1
    return partial


@njit(nogil=True, cache=True)
def image_histogram(partial, lane_stride, hist_size):
    """The whole image's histogram (int64) from ``tile_histograms``' partials: their sum.

    Equal to the image's own histogram only when the tiles cover it without padding (the
    padded pixels of edge tiles are counted too otherwise); callers check that first.
    """
    hist = np.zeros(hist_size, dtype=np.int64)
    n_lanes = 4 if lane_stride else 1
    for item in range(partial.shape[0]):
        for lane in range(n_lanes):
            for i in range(hist_size):
                hist[i] += partial[item, lane * lane_stride + i]
    return hist


@njit(parallel=True, nogil=True, cache=True)
def tile_luts(partial, n_tiles, n_strips, lane_stride, hist_size, clip, lut_scale, luts):
    """Merge, clip, redistribute and prefix-sum each tile's histogram, then write its LUT.

    Works in place in ``partial`` (a fresh (n_tiles, 65536) int32 array would cost 16 MiB
    of page faults per call). Passes per tile: merge strips and lanes, count the excess
    (vectorised), clip and add the batch (vectorised), the strided residual, prefix sum,
    then luts[tile, v] = round(cdf[v] * lut_scale) in float32 like OpenCV (vectorised).
    """
    n_lanes = 4 if lane_stride else 1
    max_value = np.float32(hist_size - 1)
    for tile in prange(n_tiles):
        hist = partial[tile * n_strips, :hist_size]
        for part_index in range(n_strips):
            part = partial[tile * n_strips + part_index]
            for lane in range(n_lanes):
                if part_index == 0 and lane == 0:
                    continue
                lane_counts = part[lane * lane_stride:lane * lane_stride + hist_size]
                for i in range(hist_size):
                    hist[i] += lane_counts[i]
        if clip > 0:
            clipped = 0
            for i in range(hist_size):
                clipped += max(hist[i] - clip, 0)
            batch = clipped // hist_size
            residual = clipped - batch * hist_size
            for i in range(hist_size):
                hist[i] = min(hist[i], clip) + batch
            if residual > 0:
                step = max(hist_size // residual, 1)
                for i in range(0, hist_size, step):
                    if residual == 0:
                        break
                    hist[i] += 1
                    residual -= 1
        total = 0
        for i in range(hist_size):
            total += hist[i]
            hist[i] = total
        lut = luts[tile]
        for i in range(hist_size):
            value = np.rint(np.float32(hist[i]) * lut_scale)
            lut[i] = min(max(value, np.float32(0.0)), max_value)
