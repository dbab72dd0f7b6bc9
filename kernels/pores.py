"""Compact regions of a binary mask, filled, in one labelling pass: the pore filter's kernel.

``compact_fill(mask, min_solidity, value, fill_value)`` returns a mask holding ``fill_value``
inside every outermost region of ``mask == value`` that is compact enough, holes
included, and 0 elsewhere. It gives exactly what this OpenCV sequence gives::

    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    keep = [c for c in contours if compact(c)]
    cv2.drawContours(out, keep, -1, fill_value, thickness=cv2.FILLED)

where a contour is compact when its pixel area (Pick's theorem on the pixel-centre polygon:
``contourArea + arcLength / 2 + 1``) is at least ``min_solidity`` x its bbox area, or at
least ``min_solidity`` x the same pixel area of its convex hull. That sequence costs ~6 ms
of Python and per-contour OpenCV calls on a 2560x1920 frame with ~800 dark regions (and
a full-frame trace of every border); here the frame is scanned once and the rest works on
runs.

How, and why this way:

* One scan writes the horizontal runs of the mask, region and background alike, and
  links them by union-find over bands of rows in parallel, as ``kernels.regions`` does:
  region runs 8-connected, background runs 4-connected, which is the pairing OpenCV's
  border following assumes (an 8-connected region's holes are 4-connected).
* Background components that touch the frame edge are the *outside*. Everything else,
  region pixels and the holes and islands they enclose, falls apart into 8-connected
  *closures*, one per outermost region: a hole or an island is never 8-adjacent to another
  outermost region's closure. A closure is what ``drawContours(..., FILLED)`` paints for
  that region's external contour, and its first pixel in raster order is the region's,
  where OpenCV's trace starts. Islands inside a region's holes have no external contour
  of their own: they are painted with their enclosing region, or not at all.
* The outer border is followed from that pixel exactly as OpenCV follows it
  (``kernels.regions``' trace, the same Freeman chain); ``CHAIN_APPROX_SIMPLE`` keeps
  the points where the chain turns, so the polygon's area (shoelace, exact in integers)
  and length (float32 edge lengths summed in double, which is exact whatever the order)
  are OpenCV's to the bit. The hull is taken over those turning points (every hull vertex
  is one) by Andrew's monotone chain, collinear points dropped, as ``cv2.convexHull``.
* The comparisons are made in the same float64 operations, in the same order, as the
  Python they replace, so a region on the threshold goes the same way.
* Optionally the kept regions then grow into a second mask (``grow_into``), or into the
  pixels of a grey image darker than a level (``grow_below``), as rounds of ``cv2.dilate``
  by the 3x3 cross and ``cv2.bitwise_and`` would: each region on its own small window,
  seeded from its own runs, since a dilation of a union is the union of the dilations.

Memory: five arrays of one entry per run (tens of thousands on a micrograph; at most one
per pixel), plus the output frame. Pure functions over arrays: no config, logging or I/O.

Example:
    >>> import numpy as np
    >>> from kernels.pores import compact_fill
    >>> mask = np.zeros((12, 16), np.uint8)
    >>> mask[2:7, 2:7] = 255; mask[4, 4] = 0  # a square with a one-pixel hole: kept, hole filled
    >>> mask[10, 4:15] = 255; mask[1:11, 14] = 255  # a thin L (a crack): 20 pixels in a 11x10 box, dropped
    >>> out = compact_fill(mask, 0.6, 255, 2)
    >>> int(out[4, 4]), int(out[2, 2]), int(out[10, 6]), int(out.sum() // 2)
    (2, 2, 0, 25)
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from kernels._threads import threads_for
from kernels._validate import check_real
from kernels.regions import (
    _DX,
    _DY,
    _TRACE_START_CAPACITY,
    _border_offsets,
    _closed_length,
    _convex_hull,
    _find,
    _point_buffers,
    _polygon_area,
    _trace_fitting,
    _union,
)


@njit(inline="always")
def _mark_changes(row, value, flags):
    """flags[x] = 1 where pixel x differs in kind (region or not) from pixel x - 1, else 0.

    A branch-free loop the compiler vectorises. The callers then read ``flags`` eight bytes
    at a time and look closer only at a nonzero word: a pore mask changes kind at a few
    pixels in a thousand, so the scan costs about one vector compare per pixel instead of a
    mispredicted branch per run and a scalar loop (~10x faster than testing every pixel).
    """
    for x in range(1, row.shape[0]):
        flags[x] = np.uint8(row[x] == value) ^ np.uint8(row[x - 1] == value)


@njit(parallel=True, nogil=True, cache=True)
def _count_runs(mask, value, n_bands, row_runs):
    """row_runs[y] = maximal spans of region (== value) or background pixels in row y."""
    height, width = mask.shape
    n_words = (width + 7) // 8
    for band in prange(n_bands):
        flags = np.zeros(n_words * 8, dtype=np.uint8)
        words = flags.view(np.uint64)
        for y in range(band * height // n_bands, (band + 1) * height // n_bands):
            _mark_changes(mask[y], value, flags)
            changes = 0
            for w in range(n_words):
                if words[w] != 0:
                    for x in range(w * 8, w * 8 + 8):
                        changes += flags[x]
            row_runs[y] = changes + 1


@njit(inline="always")
def _link_rows(row_offsets, y, starts, ends, inside, parent):
    """Union every run of row y with the runs of row y-1 of its kind that touch it: region
    runs 8-connected (diagonal neighbours touch), background runs 4-connected.

    A run's reach start - 1 (region) or start (background) never decreases along a row,
    so one forward sweep over the row above suffices.
    """
    j = row_offsets[y - 1]
    j_end = row_offsets[y]
    for i in range(row_offsets[y], row_offsets[y + 1]):
        reach = 1 if inside[i] else 0
        lo = starts[i] - reach
        hi = ends[i] + reach
        while j < j_end and ends[j] < lo:
            j += 1
        k = j
        while k < j_end and starts[k] <= hi:
            if inside[k] == inside[i]:
                _union(parent, i, k)
            k += 1


@njit(parallel=True, nogil=True, cache=True)
def _fill_and_link(mask, value, n_bands, row_offsets, starts, ends, inside, parent):
    """Write every run (first x, last x, region or not) and link runs within each band of rows."""
    height, width = mask.shape
    n_words = (width + 7) // 8
    for band in prange(n_bands):
        flags = np.zeros(n_words * 8, dtype=np.uint8)
        words = flags.view(np.uint64)
        y_start = band * height // n_bands
        y_stop = (band + 1) * height // n_bands
        for y in range(y_start, y_stop):
            row = mask[y]
            _mark_changes(row, value, flags)
            i = row_offsets[y]
            run_start = 0
            for w in range(n_words):
                if words[w] == 0:
                    continue
                for x in range(w * 8, w * 8 + 8):
                    if flags[x]:
                        starts[i] = run_start
                        ends[i] = x - 1
                        inside[i] = row[x - 1] == value
                        parent[i] = i
                        i += 1
                        run_start = x
            starts[i] = run_start
            ends[i] = width - 1
            inside[i] = row[width - 1] == value
            parent[i] = i
            if y > y_start:
                _link_rows(row_offsets, y, starts, ends, inside, parent)


@njit(nogil=True, cache=True)
def _closures(height, width, n_bands, row_offsets, starts, ends, inside, parent):
    """Label the closures (module doc): per run its closure (-1 for the outside), per closure
    its first run and bbox (left, top, right, bottom). Closures are numbered in raster order.

    Runs are linked across band boundaries first. A root is always its tree's first run
    (``_union`` keeps the smaller index), so one forward pass resolves every run's root.
    """
    for band in range(1, n_bands):
        y = band * height // n_bands
        if 0 < y < height:
            _link_rows(row_offsets, y, starts, ends, inside, parent)
    n_runs = starts.shape[0]
    root = np.empty(n_runs, dtype=np.int64)
    outside = np.zeros(n_runs, dtype=np.bool_)
    for i in range(n_runs):
        root[i] = i if parent[i] == i else root[parent[i]]
    # Background touching the frame edge is outside (OpenCV pads the frame with zeros).
    for y in (0, height - 1):
        for i in range(row_offsets[y], row_offsets[y + 1]):
            if not inside[i]:
                outside[root[i]] = True
    for y in range(height):
        for i in (row_offsets[y], row_offsets[y + 1] - 1):  # a row's first and last run
            if not inside[i]:
                outside[root[i]] = True
    # Second union-find: every run that is not outside, 8-connected, whatever its kind.
    for i in range(n_runs):
        parent[i] = i
    for y in range(height):
        for i in range(row_offsets[y] + 1, row_offsets[y + 1]):
            if not outside[root[i]] and not outside[root[i - 1]]:
                _union(parent, i, i - 1)
        if y == 0:
            continue
        j = row_offsets[y - 1]
        j_end = row_offsets[y]
        for i in range(row_offsets[y], row_offsets[y + 1]):
            if outside[root[i]]:
                continue
            lo = starts[i] - 1
            hi = ends[i] + 1
            while j < j_end and ends[j] < lo:
                j += 1
            k = j
            while k < j_end and starts[k] <= hi:
                if not outside[root[k]]:
                    _union(parent, i, k)
                k += 1
    closure_of = np.full(n_runs, -1, dtype=np.int64)
    first_run = np.empty(n_runs, dtype=np.int64)
    n = 0
    for i in range(n_runs):
        if outside[root[i]]:
            continue
        p = _find(parent, i)
        if p == i:
            closure_of[i] = n
            first_run[n] = i
            n += 1
        else:
            closure_of[i] = closure_of[p]
    bbox = np.empty((n, 4), dtype=np.int64)  # left, top, right, bottom
    for c in range(n):
        bbox[c, 0] = width
        bbox[c, 2] = -1
        bbox[c, 3] = -1
    for y in range(height):
        for i in range(row_offsets[y], row_offsets[y + 1]):
            c = closure_of[i]
            if c < 0:
                continue
            if bbox[c, 3] < 0:
                bbox[c, 1] = y
            bbox[c, 0] = min(bbox[c, 0], starts[i])
            bbox[c, 2] = max(bbox[c, 2], ends[i])
            bbox[c, 3] = y
    return closure_of, first_run[:n], bbox


@njit(inline="always")
def _pixel_area(area, length):
    """``cv2.contourArea(c) + cv2.arcLength(c, True) / 2.0 + 1.0``, in that order."""
    return area + length / 2.0 + 1.0


@njit(nogil=True, cache=True)
def _compact(mask, value, starts, first_run, bbox, min_solidity):
    """Whether each closure's outermost region passes the solidity test (module doc)."""
    height, width = mask.shape
    n = first_run.shape[0]
    keep = np.zeros(n, dtype=np.bool_)
    offsets = _border_offsets(width)
    capacity = _TRACE_START_CAPACITY
    codes = np.empty(capacity, dtype=np.int8)
    px, py, order, hx, hy = _point_buffers(capacity)
    spare = np.empty(capacity + 1, dtype=np.int64)  # the hull's sorting work arrays
    counts = np.empty(max(height, width) + 3, dtype=np.int64)
    for c in range(n):
        x0 = np.int64(starts[first_run[c]])
        y0 = bbox[c, 1]
        clear = bbox[c, 0] >= 1 and y0 >= 1 and bbox[c, 2] <= width - 2 and bbox[c, 3] <= height - 2
        codes, length = _trace_fitting(mask, value, x0, y0, codes, clear, offsets)
        if codes.shape[0] > capacity:
            capacity = codes.shape[0]
            px, py, order, hx, hy = _point_buffers(capacity)
            spare = np.empty(capacity + 1, dtype=np.int64)
        # CHAIN_APPROX_SIMPLE: the points where the chain turns (a lone pixel is one point).
        m = 0
        if length == 0:
            px[0] = x0
            py[0] = y0
            m = 1
        else:
            x = x0
            y = y0
            prev = codes[length - 1]
            for i in range(length):
                code = codes[i]
                if code != prev:
                    px[m] = x
                    py[m] = y
                    m += 1
                x += _DX[code]
                y += _DY[code]
                prev = code
        width_px = bbox[c, 2] - bbox[c, 0] + 1
        height_px = bbox[c, 3] - y0 + 1
        pixels = _pixel_area(_polygon_area(px, py, m), _closed_length(px, py, m))
        if pixels >= min_solidity * width_px * height_px:  # solidity >= extent: the hull lies in the bbox
            keep[c] = True
            continue
        h = _convex_hull(px, py, m, order, hx, hy, spare, counts)
        keep[c] = pixels / _pixel_area(_polygon_area(hx, hy, h), _closed_length(hx, hy, h)) >= min_solidity
    return keep


@njit(parallel=True, nogil=True, cache=True)
def _paint(row_offsets, starts, ends, closure_of, keep, fill_value, n_bands, out):
    """Write ``fill_value`` over the runs of every kept closure (``out`` starts at zero)."""
    height = out.shape[0]
    for band in prange(n_bands):
        for y in range(band * height // n_bands, (band + 1) * height // n_bands):
            row = out[y]
            for i in range(row_offsets[y], row_offsets[y + 1]):
                c = closure_of[i]
                if c >= 0 and keep[c]:
                    row[starts[i]:ends[i] + 1] = fill_value


@njit(nogil=True, cache=True)
def _runs_by_closure(row_offsets, closure_of, keep):
    """(offsets, runs, rows): the runs of kept closure c are runs[offsets[c]:offsets[c + 1]],
    in raster order, on rows rows[offsets[c]:offsets[c + 1]]; other closures list none. A
    counting sort, so seeding a closure's window reads its own runs, not every run of every
    row its bbox spans."""
    n = keep.shape[0]
    offsets = np.zeros(n + 1, dtype=np.int64)
    for i in range(closure_of.shape[0]):
        c = closure_of[i]
        if c >= 0 and keep[c]:
            offsets[c + 1] += 1
    for c in range(n):
        offsets[c + 1] += offsets[c]
    runs = np.empty(offsets[n], dtype=np.int64)
    rows = np.empty(offsets[n], dtype=np.int64)
    cursor = offsets[:n].copy()
    for y in range(row_offsets.shape[0] - 1):
        for i in range(row_offsets[y], row_offsets[y + 1]):
            c = closure_of[i]
            if c >= 0 and keep[c]:
                runs[cursor[c]] = i
                rows[cursor[c]] = y
                cursor[c] += 1
    return offsets, runs, rows


@njit(nogil=True, cache=True)
def _grow_and_paint(row_offsets, starts, ends, closure_of, bbox, keep, grow_into, lowest, past, grow_px, fill_value, out):
    """Grow every kept closure ``grow_px`` times into the pixels of ``grow_into`` whose value v
    has ``lowest <= v < past``, and write the result.

    Each step is a dilation by the 3x3 cross followed by an AND with those pixels (so the
    closure's own pixels stay only where they qualify too), as
    ``cv2.bitwise_and(cv2.dilate(m, cross), allowed)`` repeated on the whole frame. A
    dilation of a union is the union of the dilations, so each closure grows on its own
    bbox widened by ``grow_px`` and the results are ORed together: work in proportion to
    the pores, not the frame. Windows of neighbouring closures may overlap, hence one thread.
    """
    height, width = out.shape
    n = keep.shape[0]
    offsets, runs, rows = _runs_by_closure(row_offsets, closure_of, keep)
    # One set of window buffers, as large as the largest window, with a one-pixel zero frame
    # (the cross then needs no bounds checks): no allocation per pore.
    max_h = 1
    max_w = 1
    for c in range(n):
        if keep[c]:
            max_h = max(max_h, bbox[c, 3] - bbox[c, 1] + 1 + 2 * grow_px)
            max_w = max(max_w, bbox[c, 2] - bbox[c, 0] + 1 + 2 * grow_px)
    cur = np.zeros((max_h + 2, max_w + 2), dtype=np.uint8)
    nxt = np.zeros((max_h + 2, max_w + 2), dtype=np.uint8)
    allowed = np.empty((max_h, max_w), dtype=np.uint8)
    for c in range(n):
        if not keep[c]:
            continue
        x0 = max(bbox[c, 0] - grow_px, 0)
        y0 = max(bbox[c, 1] - grow_px, 0)
        x1 = min(bbox[c, 2] + grow_px, width - 1)
        y1 = min(bbox[c, 3] + grow_px, height - 1)
        h = y1 - y0 + 1
        w = x1 - x0 + 1
        cur[:h + 2, :w + 2] = 0
        nxt[:h + 2, :w + 2] = 0
        # The loops below index slices that start at 0: an index with an offset (x0 + xx,
        # xx - 1) keeps numba's negative-index check, which stops the compiler vectorising.
        for yy in range(h):
            source = grow_into[y0 + yy, x0 : x0 + w]
            limit = allowed[yy]
            for xx in range(w):
                v = source[xx]
                limit[xx] = np.uint8(v >= lowest) & np.uint8(v < past)
        for t in range(offsets[c], offsets[c + 1]):
            i = runs[t]
            cur[rows[t] - y0 + 1, starts[i] - x0 + 1:ends[i] - x0 + 2] = 1
        for _ in range(grow_px):
            for yy in range(1, h + 1):
                above = cur[yy - 1, 1 : w + 1]
                left = cur[yy, 0:w]
                centre = cur[yy, 1 : w + 1]
                right = cur[yy, 2 : w + 2]
                below = cur[yy + 1, 1 : w + 1]
                target = nxt[yy, 1 : w + 1]
                limit = allowed[yy - 1]
                for xx in range(w):
                    target[xx] = (centre[xx] | left[xx] | right[xx] | above[xx] | below[xx]) & limit[xx]
            cur, nxt = nxt, cur
        for yy in range(h):
            source = cur[yy + 1, 1 : w + 1]
            target = out[y0 + yy, x0 : x0 + w]
            for xx in range(w):  # a select, not a branch: pore edges cross every row
                target[xx] = fill_value if source[xx] else target[xx]


def compact_fill(mask, min_solidity, value=255, fill_value=255, grow_into=None, grow_px=0, grow_below=None, out=None):
    """``fill_value`` over the compact outermost regions of ``mask == value``, holes included (module doc).

    ``mask``: 2-D uint8; pixels equal to ``value`` are region, all others background.
    ``min_solidity``: in [0, 1]. ``grow_into``: an optional uint8 mask of the same shape;
    the kept regions then grow ``grow_px`` times by one pixel (3x3 cross) into its nonzero
    pixels and keep only what lies there, as ``grow_px`` rounds of
    ``cv2.bitwise_and(cv2.dilate(out, cross), grow_into)`` would. With ``grow_below`` (a
    real number), ``grow_into`` is a grey image (uint8 or uint16) instead and the regions
    grow into its pixels darker than ``grow_below``: the same as passing
    ``cv2.compare(grow_into, ceil(grow_below), CMP_LT)``, without that full-frame pass (only
    the pixels around kept regions are read). Returns a new uint8 array of the mask's shape,
    or ``out`` (C-contiguous uint8 of the mask's shape) painted in place: its other pixels
    keep their values, so painting pores into a class mask lays them over it in the same pass.

    >>> import numpy as np
    >>> ring = np.zeros((9, 9), np.uint8); ring[1:8, 1:8] = 1; ring[3:6, 3:6] = 0; ring[4, 4] = 1
    >>> compact_fill(ring, 0.6, value=1, fill_value=7)[4].tolist()  # hole and island filled
    [0, 7, 7, 7, 7, 7, 7, 7, 0]
    >>> compact_fill(ring, 0.6, value=1, fill_value=7, grow_into=np.ones_like(ring), grow_px=1)[4].tolist()
    [7, 7, 7, 7, 7, 7, 7, 7, 7]
    >>> grey = np.full((9, 9), 200, np.uint16); grey[:, :4] = 40
    >>> compact_fill(ring, 0.6, value=1, fill_value=7, grow_into=grey, grow_below=50, grow_px=1)[4].tolist()
    [7, 7, 7, 7, 0, 0, 0, 0, 0]
    """
    if not isinstance(mask, np.ndarray) or mask.ndim != 2 or mask.dtype != np.uint8 or mask.size == 0:
        got = f"{mask.dtype} with shape {mask.shape}" if isinstance(mask, np.ndarray) else type(mask).__name__
        msg = f"compact_fill: expected a non-empty 2-D uint8 mask, got {got}"
        raise ValueError(msg)
    solidity = float(min_solidity)
    if not 0.0 <= solidity <= 1.0:
        msg = f"compact_fill: min_solidity must lie in [0, 1], got {min_solidity!r}"
        raise ValueError(msg)
    for name, level in (("value", value), ("fill_value", fill_value)):
        if isinstance(level, bool) or not isinstance(level, (int, np.integer)) or not 0 <= level <= 255:
            msg = f"compact_fill: {name} must be an integer in 0..255, got {level!r}"
            raise ValueError(msg)
    if isinstance(grow_px, bool) or not isinstance(grow_px, (int, np.integer)) or grow_px < 0:
        msg = f"compact_fill: grow_px must be an integer >= 0, got {grow_px!r}"
        raise ValueError(msg)
    grey_ok = (np.uint8, np.uint16) if grow_below is not None else (np.uint8,)
    if grow_into is not None and (not isinstance(grow_into, np.ndarray) or grow_into.dtype not in grey_ok
                                  or grow_into.shape != mask.shape):
        got = f"{grow_into.dtype} {grow_into.shape}" if isinstance(grow_into, np.ndarray) else type(grow_into).__name__
        kind = "a uint8 or uint16 grey image (with grow_below)" if grow_below is not None else "a uint8 mask"
        msg = f"compact_fill: grow_into must be {kind} of shape {mask.shape}, got {got}"
        raise ValueError(msg)
    if grow_into is None and (grow_px or grow_below is not None):
        msg = "compact_fill: grow_px and grow_below need grow_into (the pixels the regions may grow into)"
        raise ValueError(msg)
    if out is not None and (not isinstance(out, np.ndarray) or out.dtype != np.uint8 or out.shape != mask.shape
                            or not out.flags.c_contiguous or not out.flags.writeable):
        got = f"{out.dtype} {out.shape}" if isinstance(out, np.ndarray) else type(out).__name__
        msg = f"compact_fill: out must be a writeable C-contiguous uint8 array of shape {mask.shape}, got {got}"
        raise ValueError(msg)
    if grow_below is None:
        lowest, past = 1, 256  # a mask's nonzero pixels
    else:
        below = check_real(grow_below, "grow_below", "compact_fill")
        lowest, past = 0, math.ceil(below)  # integer grey levels below `below`
    mask = np.ascontiguousarray(mask)
    if grow_into is not None:
        grow_into = np.ascontiguousarray(grow_into)
    with threads_for(mask.size) as threads:
        return _compact_fill(mask, value, solidity, fill_value, grow_into, int(grow_px),
                             n_bands=max(1, min(threads, mask.shape[0])), grow_range=(lowest, past), out=out)


def _compact_fill(mask, value, min_solidity, fill_value, grow_into, grow_px, n_bands, grow_range=(1, 256), out=None):
    """``compact_fill`` after its checks, for an explicit number of row bands (any count gives
    the same mask; tests use that to cut many band boundaries). ``grow_range``: (lowest,
    past) values of ``grow_into`` the regions may grow into; ``out``: the array to paint
    (None: a new zero one)."""
    height, width = mask.shape
    row_runs = np.empty(height, dtype=np.int64)
    _count_runs(mask, np.uint8(value), n_bands, row_runs)
    row_offsets = np.zeros(height + 1, dtype=np.int64)
    np.cumsum(row_runs, out=row_offsets[1:])
    n_runs = int(row_offsets[-1])
    starts = np.empty(n_runs, dtype=np.int32)
    ends = np.empty(n_runs, dtype=np.int32)
    inside = np.empty(n_runs, dtype=np.bool_)
    parent = np.empty(n_runs, dtype=np.int64)
    _fill_and_link(mask, np.uint8(value), n_bands, row_offsets, starts, ends, inside, parent)
    closure_of, first_run, bbox = _closures(height, width, n_bands, row_offsets, starts, ends, inside, parent)
    keep = _compact(mask, np.uint8(value), starts, first_run, bbox, min_solidity)
    if out is None:
        out = np.zeros(mask.shape, dtype=np.uint8)
    if not keep.any():
        return out
    if grow_into is None or grow_px == 0:
        _paint(row_offsets, starts, ends, closure_of, keep, np.uint8(fill_value), n_bands, out)
    else:
        lowest, past = grow_range
        _grow_and_paint(row_offsets, starts, ends, closure_of, bbox, keep, grow_into, np.int64(lowest), np.int64(past),
                        grow_px, np.uint8(fill_value), out)
    return out
