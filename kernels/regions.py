"""Connected regions of a class-index mask and their shape numbers in one call, numba CPU kernels.

``region_table(mask, classes)`` labels the connected components of each listed mask value
and returns, per component: area, bounding box, centroid, the second moments, the length of
its outer border and the convex hull of that border. It replaces a connected-components
pass, a run-length pass for the moments and a whole-frame contour trace with per-region
OpenCV calls, which together cost ~50 ms on a 2560x1920 frame with ~3,000 regions.

How, and why this way:

* Labelling is run-based union-find. A class mask of millions of pixels holds only tens of
  thousands of horizontal runs, so everything after one scan of the pixels works on runs.
  Bands of rows are scanned and linked in parallel (a band only links runs inside itself,
  so no two threads write the same parent entry); the band boundaries are linked after,
  on one thread: a handful of rows. The root of every tree is its smallest run index,
  and runs are numbered in raster order, so a region's root is its first run, where its
  border trace starts. Regions are reported in the order ``cv2.connectedComponents``
  numbers them, so tables line up with OpenCV's labels: by the first 2x2 pixel block
  (rows in pairs, then columns in pairs) holding one of their pixels for 8-connectivity,
  as OpenCV's block-based scan meets them, and by their first pixel for 4-connectivity.
* Area, bbox and moments are closed-form sums over runs, kept as exact int64 sums; the
  moments are reported about each region's bbox corner, where they are small integers, so
  no precision is lost before a caller forms central moments from them.
* The perimeter is the length of the region's outer border as OpenCV's
  ``cv2.findContours(..., CHAIN_APPROX_TC89_L1)`` + ``cv2.arcLength(contour, True)`` define
  it: the border is followed from the region's first pixel exactly as OpenCV's Suzuki
  border following does (same start direction and turn order, so the same Freeman chain),
  the chain is reduced to Teh-Chin dominant points by a line-for-line port of OpenCV's
  ``approximateChainTC89`` (L1 curvature), and the closed polygon's length is summed with
  OpenCV's float32 edge lengths in OpenCV's order. The raw 8-connected staircase would
  overstate a disc's perimeter by ~5 %; these dominant points are what callers expect.
  Only regions at or above ``min_area`` are traced, in parallel over regions.
* The convex hull is taken over those dominant points only (tens per region, not every
  pixel), by Andrew's monotone chain after a counting sort; its area (shoelace) and closed
  length are returned, which is what OpenCV's ``contourArea`` / ``arcLength`` of
  ``cv2.convexHull(contour)`` give, up to float summation order (~1e-15 relative).
* Most of the time goes to branches whose outcome depends on the data (run boundaries,
  where a support region ends, which points survive), mispredicted about every other time.
  The hot loops are written to avoid them: runs are found by a scan with no branch per
  pixel (16 pixels per instruction where the CPU has AVX-512, `kernels._compress`), support
  regions take their first six steps in a vectorised sweep over every point of the border
  and then grow one step per sweep over the points still growing, and the Teh-Chin passes
  walk lists of candidate points built branch-free, and their tests use bitwise operators
  (Python's ``and`` / ``or`` compile to branches). The same table comes out; on a classical
  engine's mask (~4,500 kept regions) this took the kernel from 21.2 to 17.0 ms on 2 cores
  and from 39.3 to 27.7 ms on one (`bench/measure_bench.py --before-kernel`).

Pure functions over arrays: no config, logging or I/O.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from numba import njit, prange

from kernels._compress import HAS_COMPRESS, change_positions
from kernels._compress import LANES as _COMPRESS_LANES
from kernels._threads import threads_for

# Freeman chain code -> step, as OpenCV numbers them (y down): 0 right, 1 up-right, 2 up, ...
_DX = np.array([1, 1, 0, -1, -1, -1, 0, 1], dtype=np.int64)
_DY = np.array([0, -1, -1, -1, 0, 1, 1, 1], dtype=np.int64)
# |difference| of two chain codes on the 8-cycle, indexed by (cur - prev + 7): the 1-curvature.
_ABS_DIFF = np.array([1, 2, 3, 4, 3, 2, 1, 0, 1, 2, 3, 4, 3, 2, 1, 0], dtype=np.int64)


# Chain-code buffer a tracing work item starts with; it doubles when a border is longer.
_TRACE_START_CAPACITY = 1024
# Work items per thread in the tracing pass: regions differ a lot in border length, and
# interleaved items spread the long ones across threads.
_TRACE_ITEMS_PER_THREAD = 8
# Steps of every point's Teh-Chin support region taken by the vectorised sweep (`_support_sweep`).
_SWEEP_K = 6
# Hulls of up to this many dominant points sort them by insertion (no allocation).
_HULL_INSERTION_SORT_MAX = 48
# Hulls of more points than this sort them by counting (`_sort_points`).
_HULL_COUNTING_SORT_MIN = 12


class RegionTable(NamedTuple):
    """Per-region arrays, one entry per region, grouped by class in the order ``classes`` lists
    them, each class's regions in ``cv2.connectedComponents``' label order (module doc).

    ``moments[:, k]`` are the raw moments m00, m10, m01, m20, m02, m11 with the region's
    bbox top-left pixel as the origin (pixel centres at integer coordinates): exact
    integers held in float64. ``perimeter_px``, ``hull_area_px`` and ``hull_perimeter_px`` are NaN
    when ``shape=False``. ``small_counts[c]`` counts the regions of ``classes[c]`` that were
    left out for being smaller than ``min_area``.
    """

    class_value: np.ndarray  # uint8
    area_px: np.ndarray  # int64
    bbox_x: np.ndarray  # int64
    bbox_y: np.ndarray  # int64
    bbox_width_px: np.ndarray  # int64
    bbox_height_px: np.ndarray  # int64
    centroid_x: np.ndarray  # float64
    centroid_y: np.ndarray  # float64
    moments: np.ndarray  # float64 [n, 6]
    perimeter_px: np.ndarray  # float64
    hull_area_px: np.ndarray  # float64
    hull_perimeter_px: np.ndarray  # float64
    small_counts: np.ndarray  # int64 [len(classes)]


# ----------------------------------------------------------------------------- labelling


@njit(parallel=True, nogil=True, cache=True)
def _count_runs(mask, n_bands, row_runs):
    """row_runs[y] = runs (maximal spans of one value, any value) in row y.

    Counting every run, background ones included, is one compare per pixel with no
    look-up, which the compiler vectorises: the slots it gives a row are an upper bound
    for the runs the fill pass writes there (the listed values' only).
    """
    height, width = mask.shape
    for band in prange(n_bands):
        for y in range(band * height // n_bands, (band + 1) * height // n_bands):
            row = mask[y]
            changes = 0
            for x in range(1, width):
                changes += row[x] != row[x - 1]
            row_runs[y] = changes + 1


@njit(inline="always")
def _find(parent, i):
    """Root of run i, halving the path on the way (every parent index is below its child's)."""
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


@njit(inline="always")
def _union(parent, a, b):
    """Join the trees of runs a and b under the smaller root, so a root is its tree's first run."""
    ra = _find(parent, a)
    rb = _find(parent, b)
    if ra < rb:
        parent[rb] = ra
    elif rb < ra:
        parent[ra] = rb


@njit(inline="always")
def _link_rows(row_offsets, row_counts, y, starts, ends, values, parent, reach):
    """Union every run of row y with the runs of row y-1 of its value that touch it.

    ``reach`` is 1 for 8-connectivity (diagonal neighbours touch) and 0 for 4. Both rows'
    runs are sorted by x, so one forward sweep over the row above suffices.
    """
    j = row_offsets[y - 1]
    j_end = j + row_counts[y - 1]
    for i in range(row_offsets[y], row_offsets[y] + row_counts[y]):
        value = values[i]
        lo = starts[i] - reach
        hi = ends[i] + reach
        while j < j_end and ends[j] < lo:
            j += 1
        k = j
        while k < j_end and starts[k] <= hi:
            if values[k] == value:
                _union(parent, i, k)
            k += 1


@njit(inline="always")
def _run_starts_scalar(row, run_starts):
    """First x of every run of ``row`` into ``run_starts`` (width + 1 entries); returns the count.

    Branch-free: every x is written to the next slot and the slot index advances only where
    the value changes, so the next x overwrites it otherwise. A branch at each run
    boundary mispredicts about once per run, which cost more than the scan itself.
    """
    run_starts[0] = 0
    return _run_starts_from(row, run_starts, 1, 1)


@njit(inline="always")
def _run_starts_from(row, run_starts, x, n):
    """The scalar scan from pixel x on, with n run starts listed so far; returns the count."""
    for tail in range(x, row.shape[0]):
        run_starts[n] = tail
        n += row[tail] != row[tail - 1]
    return n


@njit(inline="always")
def _run_starts_compress(row, run_starts):
    """`_run_starts_scalar` 16 pixels at a time with AVX-512's compress (`kernels._compress`):
    0.29 instead of 2.3 ms on a 2560x1920 class mask on one core.

    Each step stores 16 entries from slot n, and n <= x (one entry per pixel left of x at
    most), so the stores stay within the width + 1 entries.
    """
    width = row.shape[0]
    run_starts[0] = 0
    n = 1
    x = 1
    while x + _COMPRESS_LANES <= width:
        n += change_positions(row, x, run_starts, n)
        x += _COMPRESS_LANES
    return _run_starts_from(row, run_starts, x, n)  # the last pixels, fewer than 16


# The scan the kernels compile: the compress where the CPU has it, never compiled elsewhere.
_run_starts = _run_starts_compress if HAS_COMPRESS else _run_starts_scalar


@njit(parallel=True, nogil=True, cache=True)
def _fill_and_link(mask, n_bands, row_offsets, slot_of, reach, row_counts, starts, ends, values, parent):
    """Write the runs of the listed values (first x, last x, value) and link them within each
    band of rows.

    Row y's runs fill the first ``row_counts[y]`` of the slots from ``row_offsets[y]`` that
    `_count_runs` counted for all its runs; the background's runs are never written, so
    linking, numbering and summing visit only the listed ones (about half the runs).
    The scan lists where each row changes value without a branch per pixel (`_run_starts`:
    AVX-512's compress where the CPU has it, else a branch-free loop; the branch at each run
    boundary was most of the scan's time). Runs are written the same way: every one, to
    the next slot, which only a listed value moves on.
    """
    height, width = mask.shape
    for band in prange(n_bands):
        y_start = band * height // n_bands
        y_stop = (band + 1) * height // n_bands
        run_starts = np.empty(width + 1, dtype=np.int32)
        for y in range(y_start, y_stop):
            row = mask[y]
            n = _run_starts(row, run_starts)
            run_starts[n] = width  # so that run r ends at run_starts[r + 1] - 1, the last one too
            i = row_offsets[y]
            for r in range(n):
                first = run_starts[r]
                value = row[first]
                starts[i] = first
                ends[i] = run_starts[r + 1] - 1
                values[i] = value
                parent[i] = i
                i += slot_of[value] != 0
            row_counts[y] = i - row_offsets[y]
            if y > y_start:
                _link_rows(row_offsets, row_counts, y, starts, ends, values, parent, reach)


@njit(nogil=True, cache=True)
def _link_bands(height, n_bands, row_offsets, row_counts, starts, ends, values, parent, reach):
    """Link the first row of every band to the last row of the band above (one thread)."""
    for band in range(1, n_bands):
        y = band * height // n_bands
        if 0 < y < height:
            _link_rows(row_offsets, row_counts, y, starts, ends, values, parent, reach)


@njit(nogil=True, cache=True)
def _region_sums(height, width, row_offsets, row_counts, starts, ends, values, slot_of, parent, block):
    """Number the regions and sum their statistics over their runs, all in raster order.

    Returns (first run of each region, and per region: slot, area, left, top, right,
    bottom, the exact pixel sums of x, y, x*x, y*y, x*y in frame coordinates, and its
    order key: the raster index of the first ``block`` x ``block`` pixel block holding
    one of its pixels).
    """
    n_runs = starts.shape[0]
    region_of = np.empty(n_runs, dtype=np.int64)
    first_run = np.empty(n_runs + 1, dtype=np.int64)
    n_regions = 0
    # A run's parent index is below its own, so its parent's region is already known.
    for y in range(height):
        for i in range(row_offsets[y], row_offsets[y] + row_counts[y]):
            p = parent[i]
            root = p == i
            first_run[n_regions] = i  # kept only when the run is a root
            region_of[i] = n_regions if root else region_of[p]
            n_regions += root
    # A region's numbers sit side by side in one row (two cache lines), not in eleven arrays.
    big = np.iinfo(np.int64).max
    stats = np.zeros((n_regions, 11), dtype=np.int64)  # area, left, top, right, bottom, x, y, xx, yy, xy, key
    stats[:, 1] = big
    stats[:, 2] = big
    stats[:, 10] = big
    slot = np.empty(n_regions, dtype=np.int64)
    blocks_per_row = (width + block - 1) // block
    block_shift = 1 if block == 2 else 0  # a shift, not a division per run (block is 1 or 2)
    for r in range(n_regions):
        slot[r] = slot_of[values[first_run[r]]]
    for y in range(height):
        for i in range(row_offsets[y], row_offsets[y] + row_counts[y]):
            r = region_of[i]
            x0 = np.int64(starts[i])
            x1 = np.int64(ends[i])
            length = x1 - x0 + 1
            sum_x = (length * (x0 + x1)) >> 1  # exact: one of length, x0 + x1 is even
            stats[r, 0] += length
            stats[r, 1] = min(stats[r, 1], x0)
            stats[r, 2] = min(stats[r, 2], y)
            stats[r, 3] = max(stats[r, 3], x1)
            stats[r, 4] = y
            stats[r, 5] += sum_x
            stats[r, 6] += length * y
            stats[r, 7] += (x1 * (x1 + 1) * (2 * x1 + 1) - (x0 - 1) * x0 * (2 * x0 - 1)) // 6
            stats[r, 8] += length * y * y
            stats[r, 9] += y * sum_x
            stats[r, 10] = min(stats[r, 10], (y >> block_shift) * blocks_per_row + (x0 >> block_shift))
    n = n_regions
    return (first_run[:n], slot, stats[:n, 0], stats[:n, 1], stats[:n, 2], stats[:n, 3], stats[:n, 4],
            stats[:n, 5:10], stats[:n, 10])


@njit(nogil=True, cache=True)
def _select(n_slots, min_area, slot, area, left, top, right, bottom, sums, key, first_run, starts):
    """Kept regions in output order (class by class, by order key within), with their stats.

    Moments move from frame coordinates to the bbox corner with exact integer algebra, and
    the centroid is formed as (sum about the corner + corner * area) / area. A region's
    border trace starts at its first run's first pixel, which lies on its top row.
    """
    n_regions = slot.shape[0]
    small = np.zeros(n_slots, dtype=np.int64)
    kept = 0
    for r in range(n_regions):
        if area[r] >= min_area:
            kept += 1
        else:
            small[slot[r] - 1] += 1
    kept_regions = np.empty(kept, dtype=np.int64)
    sort_key = np.empty(kept, dtype=np.int64)
    n = 0
    for r in range(n_regions):
        if area[r] >= min_area:
            kept_regions[n] = r
            sort_key[n] = slot[r] * (np.int64(1) << 48) + key[r]  # keys are unique per class
            n += 1
    order = kept_regions[np.argsort(sort_key)]
    out_slot = np.empty(kept, dtype=np.int64)
    out_int = np.empty((kept, 5), dtype=np.int64)  # area, x, y, width, height
    centroid = np.empty((kept, 2), dtype=np.float64)
    moments = np.empty((kept, 6), dtype=np.float64)
    start_xy = np.empty((kept, 2), dtype=np.int64)
    for k in range(kept):
        r = order[k]
        a = area[r]
        x0 = left[r]
        y0 = top[r]
        sx, sy, sxx, syy, sxy = sums[r, 0], sums[r, 1], sums[r, 2], sums[r, 3], sums[r, 4]
        m10 = sx - x0 * a
        m01 = sy - y0 * a
        m20 = sxx - 2 * x0 * sx + x0 * x0 * a
        m02 = syy - 2 * y0 * sy + y0 * y0 * a
        m11 = sxy - y0 * sx - x0 * sy + x0 * y0 * a
        fa = np.float64(a)
        out_slot[k] = slot[r]
        out_int[k, 0] = a
        out_int[k, 1] = x0
        out_int[k, 2] = y0
        out_int[k, 3] = right[r] - x0 + 1
        out_int[k, 4] = bottom[r] - y0 + 1
        centroid[k, 0] = (np.float64(m10) + np.float64(x0) * fa) / fa
        centroid[k, 1] = (np.float64(m01) + np.float64(y0) * fa) / fa
        moments[k, 0] = fa
        moments[k, 1] = np.float64(m10)
        moments[k, 2] = np.float64(m01)
        moments[k, 3] = np.float64(m20)
        moments[k, 4] = np.float64(m02)
        moments[k, 5] = np.float64(m11)
        start_xy[k, 0] = starts[first_run[r]]
        start_xy[k, 1] = y0
    return out_slot, out_int, centroid, moments, start_xy, small


# ----------------------------------------------------------------------------- border and shape


@njit(inline="always")
def _border_offsets(width):
    """Flat-index steps of the 8 Freeman directions, listed twice so a trace can wrap around."""
    offsets = np.empty(16, dtype=np.int64)
    for s in range(16):
        offsets[s] = _DY[s & 7] * width + _DX[s & 7]
    return offsets


@njit(inline="always")
def _point_buffers(capacity):
    """(px, py, order, hx, hy): the points of a border of up to ``capacity`` steps and its hull."""
    return (np.empty(capacity + 1, dtype=np.int64), np.empty(capacity + 1, dtype=np.int64),
            np.empty(capacity + 1, dtype=np.int64), np.empty(capacity + 2, dtype=np.int64),
            np.empty(capacity + 2, dtype=np.int64))


@njit(inline="always")
def _sweep_buffers(capacity):
    """(alive, ring_x, ring_y): `_support_sweep`'s work arrays for a border of up to ``capacity`` steps."""
    return (np.empty(capacity + 1, dtype=np.int64), np.empty(capacity + 2 * _SWEEP_K + 1, dtype=np.float32),
            np.empty(capacity + 2 * _SWEEP_K + 1, dtype=np.float32))


@njit(nogil=True, cache=True)
def _trace_fitting(mask, value, x0, y0, codes, inside, offsets):
    """``_trace_outer_border`` into ``codes``, doubled until the border fits: (codes, length).

    Callers keep their buffers across regions, so memory follows the longest border met,
    and grow their point buffers when ``codes`` grew.
    """
    length = _trace_outer_border(mask, value, x0, y0, codes, inside, offsets)
    while length < 0:
        codes = np.empty(codes.shape[0] * 2, dtype=np.int8)
        length = _trace_outer_border(mask, value, x0, y0, codes, inside, offsets)
    return codes, length


@njit(inline="always")
def _is_region(mask, value, x, y):
    """True when (x, y) is inside the frame and holds ``value`` (outside counts as background,
    as OpenCV's one-pixel zero frame around the image makes it)."""
    return 0 <= x < mask.shape[1] and 0 <= y < mask.shape[0] and mask[y, x] == value


@njit(nogil=True, cache=True)
def _trace_outer_border(mask, value, x0, y0, codes, inside, offsets):
    """Freeman chain of the outer border starting at a region's first pixel, as OpenCV follows it.

    Suzuki-Abe border following as in OpenCV's ``icvFetchContourEx`` for an outer border:
    the first neighbour is searched clockwise from up-left, each next one counter-
    clockwise from just past the pixel it came from, and the trace stops on re-entering
    the start pixel from its first neighbour. Returns the chain length, 0 for a lone
    pixel, or -1 when ``codes`` is too short (the caller retries with a longer buffer).

    ``inside``: the region's bbox keeps one pixel clear of the frame edge, so no neighbour
    of a border pixel can fall outside the frame; the trace then walks flat offsets, as
    OpenCV does on its padded copy, with no bounds checks (~4x faster per step); ``offsets``
    holds the flat step of each chain code, twice over. Regions on the edge take the
    checked path.
    """
    width = mask.shape[1]
    flat = mask.reshape(-1)
    s = 4
    found = False
    for _ in range(7):  # OpenCV stops at s == 4 (the left neighbour, never part of the region)
        s = (s - 1) & 7
        if _is_region(mask, value, x0 + _DX[s], y0 + _DY[s]):
            found = True
            break
    if not found:
        return 0
    n = 0
    capacity = codes.shape[0]
    if inside:
        i0 = y0 * width + x0
        i1 = i0 + offsets[s]
        i3 = i0
        while True:
            i4 = i3
            while s < 15:
                s += 1
                i4 = i3 + offsets[s]
                if flat[i4] == value:
                    break
            s &= 7
            if n == capacity:
                return -1
            codes[n] = s
            n += 1
            if i4 == i0 and i3 == i1:
                return n
            i3 = i4
            s = (s + 4) & 7
    x1 = x0 + _DX[s]
    y1 = y0 + _DY[s]
    x3 = x0
    y3 = y0
    while True:
        x4 = x3
        y4 = y3
        while s < 15:
            s += 1
            x4 = x3 + _DX[s & 7]
            y4 = y3 + _DY[s & 7]
            if _is_region(mask, value, x4, y4):
                break
        s &= 7
        if n == capacity:
            return -1
        codes[n] = s
        n += 1
        if x4 == x0 and y4 == y0 and x3 == x1 and y3 == y1:
            return n
        x3 = x4
        y3 = y4
        s = (s + 4) & 7


@njit(inline="always")
def _before(i, j, length):
    """Index j places before i on a closed curve of ``length`` points."""
    return i - j if i >= j else length - j + i


@njit(inline="always")
def _after(i, j, length):
    """Index j places after i on a closed curve of ``length`` points."""
    return i + j if i + j < length else i + j - length


@njit(inline="always")
def _cross_and_chord(px, py, i, back, ahead):
    """(a x (a + b), |a + b|^2) for a = p_i - p_back, b = p_ahead - p_i: the cross product
    Teh-Chin compares (a x b = a x (a + b)) and the squared chord from p_back to p_ahead."""
    ax = px[i] - px[back]
    ay = py[i] - py[back]
    dx = px[ahead] - px[back]
    dy = py[ahead] - py[back]
    return ax * dy - ay * dx, dx * dx + dy * dy


@njit(inline="always")
def _support_sweep(px, py, length, curvature, support, cross, chord, alive, ring_x, ring_y):
    """The first ``_SWEEP_K`` steps of every point's support region, all points at once.

    Most support regions end within a few steps (on a classical engine's masks ~70 % of
    them within three), and the compacting loop of `_support_regions` pays ~6 ns a step in
    gathers and a data-dependent store. Here every point, candidate or not, takes every k
    up to ``_SWEEP_K`` with the same tests, reading a ring copy of the border (``ring[j]``
    = point ``j - _SWEEP_K`` around the curve, relative to the first point) at constant
    offsets, so the loop over points vectorises (~0.5 ns a step). The copy is float32,
    which holds integers exactly below 2**24: the coordinates relative to the first point
    are smaller than the frame, and for k <= 6 (raise ``_SWEEP_K`` only with this bound in
    mind) every difference, cross product, chord and their products stays below 2**17. It
    gives twice the lanes of int64, and float multiplies where int64 has slow ones.
    Leaves per point: ``support`` (0 off the candidates), whether its region is still
    growing (``alive``) and the cross product and chord of its last step (``cross``,
    ``chord``). Needs ``length >= _SWEEP_K``, so that no k wraps more than once.
    """
    wide = _SWEEP_K
    x0 = px[0]
    y0 = py[0]
    for j in range(wide):
        ring_x[j] = px[length - wide + j] - x0
        ring_y[j] = py[length - wide + j] - y0
        ring_x[wide + length + j] = px[j] - x0
        ring_y[wide + length + j] = py[j] - y0
    for i in range(length):
        ring_x[wide + i] = px[i] - x0
        ring_y[wide + i] = py[i] - y0
    for i in range(length):
        at_x = ring_x[i + wide]
        at_y = ring_y[i + wide]
        back_x = ring_x[i + wide - 1]
        back_y = ring_y[i + wide - 1]
        dx = ring_x[i + wide + 1] - back_x
        dy = ring_y[i + wide + 1] - back_y
        d_num = (at_x - back_x) * dy - (at_y - back_y) * dx
        dist = dx * dx + dy * dy
        grown = 1
        growing = 1
        for k in range(2, _SWEEP_K + 1):  # a constant count: unrolled, so the offsets are constants
            back_x = ring_x[i + wide - k]
            back_y = ring_y[i + wide - k]
            dx = ring_x[i + wide + k] - back_x
            dy = ring_y[i + wide + k] - back_y
            dk_num = (at_x - back_x) * dy - (at_y - back_y) * dx
            lk = dx * dx + dy * dy
            d = d_num * lk - dk_num * dist
            stop = (dist >= lk) | ((d_num > 0) & (d <= 0)) | ((d_num < 0) & (d >= 0))
            growing &= 1 - stop
            grown += growing
            d_num = dk_num
            dist = lk
        listed = curvature[i] != 0
        support[i] = grown * listed
        alive[i] = growing * listed
        cross[i] = np.int64(d_num)
        chord[i] = np.int64(dist)


@njit(inline="always")
def _support_regions(px, py, length, curvature, candidates, n_candidates, support, active, cross, chord, alive, ring_x, ring_y):
    """Teh-Chin support region of every listed point (OpenCV's ``calc_support``, same integer
    arithmetic), all points one k at a time.

    For point i and k = 1, 2, ...: a = p_i - p_(i-k), b = p_(i+k) - p_i (indices around the
    closed curve, whose points repeat with period ``length``); the region grows while the
    chord |a + b|^2 grows and the ratio of the cross product a x b to it keeps its trend.
    Growing every point's region by one k per sweep, over the points still growing, replaces
    one exit branch per point (taken after 1 to 10 steps, so mispredicted on most points)
    by a branch-free compaction of the list.

    OpenCV takes the sign of d_num * lk - dk_num * l through a float's bit pattern, where
    "<= 0" holds for both zeros and ">= 0" only for +0. The expression is exact here in
    int64, and it can only be -0 when lk == 0, where ``dist >= lk`` ends the search first,
    so plain integer signs decide the same way.

    ``active``, ``cross`` and ``chord`` are work arrays of at least ``n_candidates`` entries.
    """
    n_active = 0
    if length >= _SWEEP_K:
        _support_sweep(px, py, length, curvature, support, cross, chord, alive, ring_x, ring_y)
        # The regions still growing continue below; cross and chord move from point index to
        # list position, which is never past the point's index, so in place.
        for c in range(n_candidates):
            i = candidates[c]
            active[n_active] = i
            cross[n_active] = cross[i]
            chord[n_active] = chord[i]
            n_active += alive[i]
        k = _SWEEP_K + 1
    else:
        for c in range(n_candidates):  # k = 1 always belongs to the region
            i = candidates[c]
            back = i - 1 if i > 0 else length - 1
            ahead = i + 1 if i + 1 < length else 0
            support[i] = 1
            active[n_active] = i
            cross[n_active], chord[n_active] = _cross_and_chord(px, py, i, back, ahead)
            n_active += 1
        k = 2
    while n_active > 0 and k <= length:
        kept = 0
        for t in range(n_active):
            i = active[t]
            back = i - k
            back += length if back < 0 else 0
            ahead = i + k
            ahead -= length if ahead >= length else 0
            dk_num, lk = _cross_and_chord(px, py, i, back, ahead)
            d_num = cross[t]
            dist = chord[t]
            d = d_num * lk - dk_num * dist
            # Bitwise, not `or`/`and`: short-circuit operators compile to the branches this avoids.
            stop = (dist >= lk) | ((d_num > 0) & (d <= 0)) | ((d_num < 0) & (d >= 0))
            support[i] = k - stop
            active[kept] = i
            cross[kept] = dk_num
            chord[kept] = lk
            kept += not stop
        n_active = kept
        k += 1


@njit(inline="always")
def _next_kept(removed, start, length):
    """First index after ``start`` that is not removed (``length`` when none)."""
    i = start + 1
    while i < length and removed[i]:
        i += 1
    return i


@njit(inline="always")
def _remove_between(removed, start, finish, length):
    """Remove the points strictly between ``start`` and ``finish``."""
    for i in range(start + 1, min(finish, length)):
        removed[i] = True


@njit(nogil=True, cache=True)
def _teh_chin_l1(codes, n, x0, y0, px, py, support, curvature, removed, candidates, active, cross, chord, alive, ring_x, ring_y):
    """Dominant points of a closed chain: OpenCV's ``approximateChainTC89`` with L1 curvature.

    Ported pass for pass (point restore, support regions, non-maximum suppression,
    removal of weak points with a one-point support, and the clean-up of remaining runs
    of neighbours), including its in-place updates, so the kept points are OpenCV's; the
    passes walk lists of candidate points instead of testing every point (module doc).
    Work arrays hold n + 1 entries (pass 4 may append a copy of the first point):
    ``support``, ``curvature``, ``removed``, ``candidates`` (point lists), and ``active``,
    ``cross``, ``chord`` for `_support_regions`.
    Returns the number of points; the kept ones are compacted into px[:m], py[:m].
    """
    if n == 0:
        px[0] = x0
        py[0] = y0
        return 1
    x = x0
    y = y0
    n_candidates = 0
    for i in range(n):
        prev = codes[n - 1] if i == 0 else codes[i - 1]
        cur = codes[i]
        px[i] = x
        py[i] = y
        curvature[i] = _ABS_DIFF[cur - prev + 7]
        support[i] = 0
        removed[i] = curvature[i] == 0
        # Points with a curvature listed branch-free: testing each point mispredicted often.
        candidates[n_candidates] = i
        n_candidates += curvature[i] != 0
        x += _DX[cur]
        y += _DY[cur]
    length = n
    # Pass 1: support region of every point with non-zero curvature.
    _support_regions(px, py, length, curvature, candidates, n_candidates, support, active, cross, chord, alive, ring_x, ring_y)
    # Pass 2: non-maximum suppression within half the support region (support 0 elsewhere).
    for c in range(n_candidates):
        i = candidates[c]
        half = support[i] >> 1
        j = 1
        while j <= half:
            if curvature[_before(i, j, length)] > curvature[i] or curvature[_after(i, j, length)] > curvature[i]:
                break
            j += 1
        if j <= half:
            curvature[i] = 0
            removed[i] = True
    # Pass 3: a point with a one-point support survives only if it dominates both neighbours.
    for c in range(n_candidates):
        i = candidates[c]
        own = curvature[i]
        weak = (support[i] == 1) & ((own <= curvature[_before(i, 1, length)]) | (own <= curvature[_after(i, 1, length)]))
        weak &= not removed[i]
        curvature[i] = 0 if weak else own
        removed[i] |= weak
    # Pass 4: clean up runs of adjacent surviving points.
    skip = False
    start = 0
    if curvature[0] != 0 and curvature[length - 1] != 0:
        i1 = 1
        while i1 < length and curvature[i1] != 0:
            curvature[i1 - 1] = 0
            i1 += 1
        if i1 == length:
            skip = True
        else:
            i1 -= 1
            i2 = length - 2
            while i2 > 0 and curvature[i2] != 0:
                _remove_between(removed, i2, length, length)
                curvature[i2 + 1] = 0
                i2 -= 1
            i2 += 1
            if i1 == 0 and i2 == length - 1:
                i1 = _next_kept(removed, 0, length)
                px[length] = px[0]
                py[length] = py[0]
                support[length] = support[0]
                curvature[length] = curvature[0]
                removed[length] = False
                length += 1
            start = i1
    if not skip:
        # The loop below changes `removed` only at or before the point it is at, so the kept
        # points after it, and the next one, can be listed up front (branch-free).
        n_kept = 0
        for i in range(start, length):
            candidates[n_kept] = i
            n_kept += not removed[i]
        count = 1
        first = start
        prev = start
        for t in range(n_kept):
            i = candidates[t]
            nxt = candidates[t + 1] if t + 1 < n_kept else length
            if nxt == length or nxt - i != 1:
                if count >= 2:
                    if count == 2:
                        s1 = curvature[prev]
                        s2 = curvature[i]
                        if s1 > s2 or (s1 == s2 and support[prev] <= support[i]):
                            removed[i] = True
                        else:
                            removed[prev] = True
                    else:
                        first = _next_kept(removed, first, length)
                        _remove_between(removed, first, i, length)
                first = i
                count = 1
            else:
                count += 1
            prev = i
    m = 0
    for i in range(length):
        px[m] = px[i]
        py[m] = py[i]
        m += not removed[i]
    return m


@njit(inline="always")
def _closed_length(xs, ys, m):
    """Closed polygon length as ``cv2.arcLength(points, True)``: float32 edge lengths summed
    in double, starting with the edge from the last point to the first."""
    if m <= 1:
        return 0.0
    total = 0.0
    prev_x = xs[m - 1]
    prev_y = ys[m - 1]
    for i in range(m):
        dx = xs[i] - prev_x
        dy = ys[i] - prev_y
        # sqrt rounded to double and then to float32 is the correctly rounded float32 sqrt
        total += np.float64(np.float32(math.sqrt(np.float64(dx * dx + dy * dy))))
        prev_x = xs[i]
        prev_y = ys[i]
    return total


@njit(inline="always")
def _counting_pass(keys, source, m, low, span, counts, dest):
    """dest[:m] = the indices source[:m] stably ordered by keys[index], keys in low..low+span-1."""
    counts[: span + 1] = 0
    for t in range(m):
        counts[keys[source[t]] - low + 1] += 1
    for k in range(1, span + 1):
        counts[k] += counts[k - 1]
    for t in range(m):
        i = source[t]
        k = keys[i] - low
        dest[counts[k]] = i
        counts[k] += 1


@njit(inline="always")
def _sort_points(px, py, m, order, spare, counts):
    """order[:m] = the first m points sorted by (x, y): two stable counting sorts, by y then by
    x, over the points' own x and y ranges (a border's points span few rows and columns, so
    this is linear where comparison sorts branch unpredictably on every step)."""
    min_x = px[0]
    max_x = px[0]
    min_y = py[0]
    max_y = py[0]
    for i in range(1, m):
        min_x = min(min_x, px[i])
        max_x = max(max_x, px[i])
        min_y = min(min_y, py[i])
        max_y = max(max_y, py[i])
    for i in range(m):
        order[i] = i
    _counting_pass(py, order, m, min_y, max_y - min_y + 1, counts, spare)
    _counting_pass(px, spare, m, min_x, max_x - min_x + 1, counts, order)


@njit(nogil=True, cache=True)
def _convex_hull(px, py, m, order, hx, hy, spare, counts):
    """Andrew's monotone chain over the first m points; writes the hull into hx, hy (length
    up to m + 1) and returns its vertex count (collinear and repeated points dropped)."""
    if m == 1:
        hx[0] = px[0]
        hy[0] = py[0]
        return 1
    if m > _HULL_COUNTING_SORT_MIN:
        _sort_points(px, py, m, order, spare, counts)
    elif m <= _HULL_INSERTION_SORT_MAX:
        # A few dozen points: insertion sort in place beats argsort's allocations.
        for i in range(m):
            order[i] = i
        for i in range(1, m):
            j = i
            cur = order[i]
            while j > 0 and (px[order[j - 1]] > px[cur] or (px[order[j - 1]] == px[cur] and py[order[j - 1]] > py[cur])):
                order[j] = order[j - 1]
                j -= 1
            order[j] = cur
    else:
        keys = np.empty(m, dtype=np.int64)
        for i in range(m):
            keys[i] = (px[i] << 32) + py[i]
        order[:m] = np.argsort(keys)
    h = 0
    for t in range(m):  # lower hull
        i = order[t]
        while h >= 2 and (hx[h - 1] - hx[h - 2]) * (py[i] - hy[h - 2]) - (hy[h - 1] - hy[h - 2]) * (px[i] - hx[h - 2]) <= 0:
            h -= 1
        hx[h] = px[i]
        hy[h] = py[i]
        h += 1
    lower = h + 1
    for t in range(m - 2, -1, -1):  # upper hull
        i = order[t]
        while h >= lower and (hx[h - 1] - hx[h - 2]) * (py[i] - hy[h - 2]) - (hy[h - 1] - hy[h - 2]) * (px[i] - hx[h - 2]) <= 0:
            h -= 1
        hx[h] = px[i]
        hy[h] = py[i]
        h += 1
    h -= 1  # the last point repeats the first
    if h == 0:  # all points equal
        h = 1
    return h


@njit(inline="always")
def _polygon_area(xs, ys, m):
    """|shoelace area| as ``cv2.contourArea``: exact for integer vertices."""
    area = 0.0
    prev_x = xs[m - 1]
    prev_y = ys[m - 1]
    for i in range(m):
        area += np.float64(prev_x) * np.float64(ys[i]) - np.float64(prev_y) * np.float64(xs[i])
        prev_x = xs[i]
        prev_y = ys[i]
    return abs(area * 0.5)


@njit(parallel=True, nogil=True, cache=True)
def _shapes(mask, values, start_xy, inside, n_items, perimeter, hull_area, hull_perimeter):
    """Trace, reduce and hull every listed region; item c takes regions c, c + n_items, ...

    Each work item owns growable buffers, so memory follows the longest border it meets,
    not the frame.
    """
    n = values.shape[0]
    offsets = _border_offsets(mask.shape[1])
    for item in prange(n_items):
        counts = np.empty(max(mask.shape[0], mask.shape[1]) + 3, dtype=np.int64)
        capacity = _TRACE_START_CAPACITY
        codes = np.empty(capacity, dtype=np.int8)
        px, py, order, hx, hy = _point_buffers(capacity)
        support = np.empty(capacity + 1, dtype=np.int64)
        curvature = np.empty(capacity + 1, dtype=np.int64)
        removed = np.empty(capacity + 1, dtype=np.bool_)
        active = np.empty(capacity + 1, dtype=np.int64)
        alive, ring_x, ring_y = _sweep_buffers(capacity)
        for r in range(item, n, n_items):
            x0 = start_xy[r, 0]
            y0 = start_xy[r, 1]
            codes, length = _trace_fitting(mask, values[r], x0, y0, codes, inside[r], offsets)
            if codes.shape[0] > capacity:
                capacity = codes.shape[0]
                px, py, order, hx, hy = _point_buffers(capacity)
                support = np.empty(capacity + 1, dtype=np.int64)
                curvature = np.empty(capacity + 1, dtype=np.int64)
                removed = np.empty(capacity + 1, dtype=np.bool_)
                active = np.empty(capacity + 1, dtype=np.int64)
                alive, ring_x, ring_y = _sweep_buffers(capacity)
            # hx, hy serve as the support pass's work arrays before they hold the hull.
            m = _teh_chin_l1(codes, length, x0, y0, px, py, support, curvature, removed, order, active, hx, hy, alive, ring_x, ring_y)
            perimeter[r] = _closed_length(px, py, m)
            h = _convex_hull(px, py, m, order, hx, hy, support, counts)
            hull_area[r] = _polygon_area(hx, hy, h)
            hull_perimeter[r] = _closed_length(hx, hy, h)


# ----------------------------------------------------------------------------- public wrapper


def _check_mask(mask: object) -> np.ndarray:
    if not isinstance(mask, np.ndarray) or mask.ndim != 2 or mask.dtype != np.uint8:
        got = f"{mask.dtype} with shape {mask.shape}" if isinstance(mask, np.ndarray) else type(mask).__name__
        msg = f"region_table: expected a 2-D uint8 class-index mask, got {got}"
        raise ValueError(msg)
    if mask.size == 0:
        msg = f"region_table: the mask is empty (shape {mask.shape})"
        raise ValueError(msg)
    return np.ascontiguousarray(mask)


def _check_classes(classes: object) -> np.ndarray:
    try:
        listed = [int(c) for c in classes]  # type: ignore[union-attr]
    except (TypeError, ValueError):
        listed = None
    if not listed or any(not 0 <= c <= 255 for c in listed) or len(set(listed)) != len(listed):
        msg = f"region_table: classes must be distinct mask values in 0..255, got {classes!r}"
        raise ValueError(msg)
    slot_of = np.zeros(256, dtype=np.int64)
    for slot, value in enumerate(listed, start=1):
        slot_of[value] = slot
    return slot_of


def region_table(mask, classes, min_area=1, connectivity=8, shape=True):
    """Label the connected regions of the listed mask values and measure them (see the module doc).

    ``mask``: 2-D uint8 class-index array. ``classes``: the values whose regions to
    report, in output order; other values are background. ``min_area``: smaller regions
    are only counted (``small_counts``). ``connectivity``: 8 (diagonal neighbours join) or
    4. ``shape``: also trace the outer border for perimeter and hull (8-connectivity
    only: a border follows diagonal steps).

    >>> import numpy as np, kernels.regions as kr
    >>> mask = np.zeros((6, 8), np.uint8); mask[1:3, 1:4] = 1; mask[4, 6] = 2; mask[3, 4] = 1
    >>> t = kr.region_table(mask, (1, 2))
    >>> t.area_px.tolist(), t.bbox_width_px.tolist(), t.class_value.tolist()
    ([7, 1], [4, 1], [1, 2])
    >>> round(float(t.perimeter_px[0]), 3), float(t.hull_area_px[1])
    (7.634, 0.0)
    """
    mask = _check_mask(mask)
    slot_of = _check_classes(classes)
    if isinstance(min_area, bool) or not isinstance(min_area, (int, np.integer)) or min_area < 1:
        msg = f"region_table: min_area must be an integer >= 1, got {min_area!r}"
        raise ValueError(msg)
    if connectivity not in (4, 8):
        msg = f"region_table: connectivity must be 4 or 8, got {connectivity!r}"
        raise ValueError(msg)
    if shape and connectivity != 8:
        msg = "region_table: perimeter and hull follow 8-connected borders; use shape=False with connectivity=4"
        raise ValueError(msg)
    with threads_for(mask.size) as threads:
        return _table(
            mask,
            slot_of,
            int(min_area),
            connectivity,
            bool(shape),
            n_bands=max(1, min(threads, mask.shape[0])),
            n_items=threads * _TRACE_ITEMS_PER_THREAD,
        )


def _table(mask, slot_of, min_area, connectivity, shape, n_bands, n_items):
    """``region_table`` after its checks, for an explicit number of row bands and tracing work
    items (any counts give the same table; tests use that to cut many band boundaries)."""
    height, width = mask.shape
    n_slots = int(np.count_nonzero(slot_of))
    row_runs = np.empty(height, dtype=np.int64)
    _count_runs(mask, n_bands, row_runs)
    row_offsets = np.zeros(height + 1, dtype=np.int64)
    np.cumsum(row_runs, out=row_offsets[1:])
    n_runs = int(row_offsets[-1])
    starts = np.empty(n_runs, dtype=np.int32)
    ends = np.empty(n_runs, dtype=np.int32)
    values = np.empty(n_runs, dtype=np.uint8)
    parent = np.empty(n_runs, dtype=np.int64)
    row_counts = np.empty(height, dtype=np.int64)
    reach = 1 if connectivity == 8 else 0
    _fill_and_link(mask, n_bands, row_offsets, slot_of, reach, row_counts, starts, ends, values, parent)
    _link_bands(height, n_bands, row_offsets, row_counts, starts, ends, values, parent, reach)
    # cv2.connectedComponents numbers 8-connected regions by the first 2x2 block that holds
    # one of their pixels (its scan is block-based), 4-connected ones by their first pixel.
    block = 2 if connectivity == 8 else 1
    first_run, slot, area, left, top, right, bottom, sums, key = _region_sums(
        height, width, row_offsets, row_counts, starts, ends, values, slot_of, parent, block
    )
    out_slot, out_int, centroid, moments, start_xy, small = _select(
        n_slots, min_area, slot, area, left, top, right, bottom, sums, key, first_run, starts
    )
    n = out_slot.shape[0]
    slot_values = np.zeros(n_slots + 1, dtype=np.uint8)
    slot_values[slot_of[slot_of > 0]] = np.flatnonzero(slot_of).astype(np.uint8)
    class_value = slot_values[out_slot]
    perimeter = np.full(n, np.nan)
    hull_area = np.full(n, np.nan)
    hull_perimeter = np.full(n, np.nan)
    if shape and n:
        # Regions whose bbox keeps one pixel off the frame edge are traced without bounds checks.
        inside = (
            (out_int[:, 1] >= 1)
            & (out_int[:, 2] >= 1)
            & (out_int[:, 1] + out_int[:, 3] <= width - 1)
            & (out_int[:, 2] + out_int[:, 4] <= height - 1)
        )
        _shapes(mask, class_value, start_xy, inside, max(1, min(n, n_items)), perimeter, hull_area, hull_perimeter)
    return RegionTable(
        class_value=class_value,
        area_px=out_int[:, 0].copy(),
        bbox_x=out_int[:, 1].copy(),
        bbox_y=out_int[:, 2].copy(),
        bbox_width_px=out_int[:, 3].copy(),
        bbox_height_px=out_int[:, 4].copy(),
        centroid_x=centroid[:, 0].copy(),
        centroid_y=centroid[:, 1].copy(),
        moments=moments,
        perimeter_px=perimeter,
        hull_area_px=hull_area,
        hull_perimeter_px=hull_perimeter,
        small_counts=small,
    )
