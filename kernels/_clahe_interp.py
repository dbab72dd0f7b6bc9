"""CLAHE stage 2: bilinear interpolation between tile centres (numba CPU cores).

Two paths, both integer fixed point. 8-bit images wider than their blended tables use
``interpolate_row_blend_u8`` (two table look-ups and one multiply per pixel); 16-bit
images and narrow 8-bit ones use ``interpolate_direct`` (four look-ups, three
multiplies). Rows (or bands of rows) run in parallel; column tile pairs and weights are
computed once per call, and columns are walked in segments between tile centres, where
the four tiles are fixed.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from kernels.config import CLAHE_WEIGHT_BITS_8U, CLAHE_WEIGHT_BITS_16U

# Fixed-point constants as module globals: numba freezes globals into the compiled code,
# so the per-pixel shifts and multiplies use immediates (locals captured by a parallel
# loop would become run-time arguments of its body).
_SCALE_8U = 1 << CLAHE_WEIGHT_BITS_8U
_SHIFT_8U = 2 * CLAHE_WEIGHT_BITS_8U
_HALF_8U = 1 << (_SHIFT_8U - 1)
_SCALE_16U = 1 << CLAHE_WEIGHT_BITS_16U
_SHIFT_16U = 2 * CLAHE_WEIGHT_BITS_16U
_HALF_16U = 1 << (_SHIFT_16U - 1)


@njit(nogil=True, cache=True)
def axis_weights(length, tile_len, n_tiles, weight_scale):
    """Per-pixel tile pair and weight along one axis, from OpenCV's float32 coordinates.

    Returns (first tile, second tile, weight of the second tile as float32, the same
    weight in units of 1 / weight_scale rounded to an integer). Pixels before the first
    tile centre or past the last one use the same tile twice, as in OpenCV.
    """
    inv = np.float32(1.0) / np.float32(tile_len)
    first = np.empty(length, dtype=np.int64)
    second = np.empty(length, dtype=np.int64)
    weight = np.empty(length, dtype=np.float32)
    weight_fixed = np.empty(length, dtype=np.int32)
    for i in range(length):
        pos = np.float32(i) * inv - np.float32(0.5)
        lo = np.int64(np.floor(pos))
        frac = pos - np.float32(lo)
        first[i] = max(lo, 0)
        second[i] = min(lo + 1, n_tiles - 1)
        weight[i] = frac
        weight_fixed[i] = np.int32(np.floor(np.float64(frac) * weight_scale + 0.5))
    return first, second, weight, weight_fixed


@njit(nogil=True, cache=True)
def column_segments(first, second):
    """Start columns of runs with a fixed (first, second) tile pair, plus the end: at most tiles + 2 entries."""
    width = first.shape[0]
    starts = np.empty(width + 1, dtype=np.int64)
    n = 0
    for x in range(width):
        if x == 0 or first[x] != first[x - 1] or second[x] != second[x - 1]:
            starts[n] = x
            n += 1
    starts[n] = width
    return starts[:n + 1].copy()


@njit(parallel=True, nogil=True, cache=True)
def interpolate_row_blend_u8(img, luts, tiles_y, tiles_x, tile_h, tile_w, n_bands, out):
    """8-bit bilinear interpolation, two look-ups and one multiply per pixel.

    For each image row and each column segment between two tile centres (tiles c1, c2 of
    tile rows ty1, ty2), the four LUTs involved are folded into one interleaved table over
    grey level v, in fixed point with S = 2**B, B = CLAHE_WEIGHT_BITS_8U:
        b1 = l11[v] * (S - wy) + l21[v] * wy,   b2 = l12[v] * (S - wy) + l22[v] * wy
        table[2v] = b1 * S + S*S/2,             table[2v + 1] = b2 - b1
    and a pixel is then out = (table[2v] + table[2v + 1] * wx) >> 2B. Both entries are
    linear in wy, so per tile-row pair a base and a slope table are computed once and
    each row only does table = base + slope * wy: 2 loads, 1 multiply-add per entry,
    contiguous, vectorised. Row cost (tiles_x + 1) * 512 entries, paid back when the
    row is a few times wider (CLAHE_ROW_BLEND_MAX_RATIO).
    Accuracy: weights are rounded to 1/S, so the value before rounding deviates from
    OpenCV's float32 one by at most 255 / S (0.125): outputs differ by <= 1 level.
    Range: every entry and product stays below 255 * S * S + S * S / 2 < 2**31.
    Memory per band: three (tiles_x + 1) * 512 int32 tables (54 KiB for 8 tile columns).
    """
    height, width = img.shape
    cx1, cx2, _, wx = axis_weights(width, tile_w, tiles_x, _SCALE_8U)
    ty1s, ty2s, _, wys = axis_weights(height, tile_h, tiles_y, _SCALE_8U)
    seg_starts = column_segments(cx1, cx2)
    n_segs = seg_starts.shape[0] - 1
    n_entries = n_segs * 512
    for band in prange(n_bands):
        y_start = band * height // n_bands
        y_stop = (band + 1) * height // n_bands
        base = np.empty(n_entries, dtype=np.int32)
        slope = np.empty(n_entries, dtype=np.int32)
        tables = np.empty(n_entries, dtype=np.int32)
        pair_ty1 = -1
        pair_ty2 = -1
        for y in range(y_start, y_stop):
            ty1 = ty1s[y]
            ty2 = ty2s[y]
            if ty1 != pair_ty1 or ty2 != pair_ty2:
                for seg in range(n_segs):
                    c1 = cx1[seg_starts[seg]]
                    c2 = cx2[seg_starts[seg]]
                    l11 = luts[ty1 * tiles_x + c1]
                    l12 = luts[ty1 * tiles_x + c2]
                    l21 = luts[ty2 * tiles_x + c1]
                    l22 = luts[ty2 * tiles_x + c2]
                    seg_base = base[seg * 512:seg * 512 + 512]
                    seg_slope = slope[seg * 512:seg * 512 + 512]
                    for v in range(256):
                        a11 = np.int32(l11[v])
                        a12 = np.int32(l12[v])
                        a21 = np.int32(l21[v])
                        a22 = np.int32(l22[v])
                        seg_base[2 * v] = a11 * (_SCALE_8U * _SCALE_8U) + _HALF_8U
                        seg_slope[2 * v] = (a21 - a11) * _SCALE_8U
                        seg_base[2 * v + 1] = (a12 - a11) * _SCALE_8U
                        seg_slope[2 * v + 1] = a22 - a12 - a21 + a11
                pair_ty1 = ty1
                pair_ty2 = ty2
            wy = np.int32(wys[y]) if ty1 != ty2 else np.int32(0)
            for i in range(n_entries):
                tables[i] = base[i] + slope[i] * wy
            src = img[y]
            dst = out[y]
            for seg in range(n_segs):
                # Slices indexed from 0 let numba drop negative-index handling per pixel.
                x_start = seg_starts[seg]
                x_stop = seg_starts[seg + 1]
                table = tables[seg * 512:seg * 512 + 512]
                src_seg = src[x_start:x_stop]
                dst_seg = dst[x_start:x_stop]
                wx_seg = wx[x_start:x_stop]
                for i in range(x_stop - x_start):
                    k = np.intp(src_seg[i]) * 2
                    dst_seg[i] = (table[k] + table[k + 1] * wx_seg[i]) >> _SHIFT_8U


@njit(parallel=True, nogil=True, cache=True)
def interpolate_direct(img, luts, tiles_y, tiles_x, tile_h, tile_w, out):
    """Bilinear interpolation with four look-ups per pixel, in int64 fixed point.

    Used for 16-bit images (a blended table per row would have 65536 entries per tile,
    more than the row has pixels) and for 8-bit images too narrow for row blending.
    Weights are in units of 1/S, S = 2**CLAHE_WEIGHT_BITS_16U; per pixel
        upper = l11 * S + (l12 - l11) * wx,  lower = l21 * S + (l22 - l21) * wx
        out = (upper * S + (lower - upper) * wy + S*S/2) >> 2B
    i.e. three multiplies and no float conversions. Worst-case deviation from OpenCV's
    float32 value before rounding: 65535 / S < 0.0001, so outputs differ by at most one
    level, where OpenCV's value sits at (or, through its own float32 error, near) a .5
    tie. Largest intermediate: 65535 * S * S < 2**63.
    """
    height, width = img.shape
    cx1, cx2, _, wx = axis_weights(width, tile_w, tiles_x, _SCALE_16U)
    ty1s, ty2s, _, wys = axis_weights(height, tile_h, tiles_y, _SCALE_16U)
    seg_starts = column_segments(cx1, cx2)
    n_segs = seg_starts.shape[0] - 1
    for y in prange(height):
        wy = np.int64(wys[y])
        top = ty1s[y] * tiles_x
        bottom = ty2s[y] * tiles_x
        src = img[y]
        dst = out[y]
        for seg in range(n_segs):
            x_start = seg_starts[seg]
            x_stop = seg_starts[seg + 1]
            l11 = luts[top + cx1[x_start]]
            l12 = luts[top + cx2[x_start]]
            l21 = luts[bottom + cx1[x_start]]
            l22 = luts[bottom + cx2[x_start]]
            src_seg = src[x_start:x_stop]
            dst_seg = dst[x_start:x_stop]
            wx_seg = wx[x_start:x_stop]
            for i in range(x_stop - x_start):
                v = np.intp(src_seg[i])
                w = np.int64(wx_seg[i])
                a = np.int64(l11[v])
                c = np.int64(l21[v])
                upper = a * _SCALE_16U + (np.int64(l12[v]) - a) * w
                lower = c * _SCALE_16U + (np.int64(l22[v]) - c) * w
                dst_seg[i] = (upper * _SCALE_16U + (lower - upper) * wy + _HALF_16U) >> _SHIFT_16U
