"""kernels.region_table against a flood-fill reference and OpenCV.

Tolerances: region counts, order, class values, areas, bboxes, moments and centroids are
compared exactly (the centroid is one division of exact sums in both). The perimeter is
OpenCV's ``arcLength`` of its Teh-Chin contour bit for bit (the border trace, the
dominant-point reduction and the float32 edge lengths are OpenCV's), so it is compared
exactly too. The hull's area and length may differ from OpenCV's ``convexHull`` by float
summation order only: relative 1e-12.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from numba import njit

from kernels import regions as kr
from kernels._compress import HAS_COMPRESS
from tests import naive

HULL_REL = 1e-12
CLASSES = (1, 2)


def _slots(classes):
    slot_of = np.zeros(256, dtype=np.int64)
    for slot, value in enumerate(classes, start=1):
        slot_of[value] = slot
    return slot_of


def _table(mask, classes=CLASSES, min_area=1, connectivity=8, n_bands=None, n_items=None):
    """The kernel, optionally with forced band and work-item counts (the public wrapper picks them by threads)."""
    if n_bands is None and n_items is None:
        return kr.region_table(mask, classes, min_area=min_area, connectivity=connectivity, shape=connectivity == 8)
    return kr._table(
        np.ascontiguousarray(mask), _slots(classes), min_area, connectivity, connectivity == 8,
        n_bands=n_bands or 1, n_items=n_items or 1,
    )


def assert_matches_reference(mask, classes=CLASSES, min_area=1, connectivity=8, **forced):
    got = _table(mask, classes, min_area, connectivity, **forced)
    everything = naive.region_components(mask, classes, connectivity)
    want = [r for r in everything if r["area_px"] >= min_area]
    assert got.area_px.size == len(want)
    small = [sum(1 for r in everything if r["class_index"] == c and r["area_px"] < min_area) for c in range(len(classes))]
    assert got.small_counts.tolist() == small
    for i, ref in enumerate(want):
        for field in ("class_value", "area_px", "bbox_x", "bbox_y", "bbox_width_px", "bbox_height_px"):
            assert getattr(got, field)[i] == ref[field], (i, field)
        assert tuple(got.moments[i].tolist()) == ref["moments"], i
        assert got.centroid_x[i] == ref["centroid_x"], i
        assert got.centroid_y[i] == ref["centroid_y"], i
        if connectivity == 8:
            assert got.perimeter_px[i] == ref["perimeter_px"], (i, got.perimeter_px[i], ref["perimeter_px"])
            assert got.hull_area_px[i] == pytest.approx(ref["hull_area_px"], rel=HULL_REL, abs=1e-12), i
            assert got.hull_perimeter_px[i] == pytest.approx(ref["hull_perimeter_px"], rel=HULL_REL, abs=1e-12), i
        else:
            assert np.isnan(got.perimeter_px[i])
    return got


def _random_masks(seed=21):
    """Specks, median-filtered clutter, smooth blobs, and rings with islands in their holes."""
    rng = np.random.default_rng(seed)
    for shape in ((1, 1), (1, 40), (40, 1), (2, 2), (3, 3), (57, 83), (120, 90)):
        yield rng.integers(0, 3, shape, dtype=np.uint8)
        if min(shape) > 2:
            yield cv2.medianBlur(rng.integers(0, 3, shape, dtype=np.uint8), 3)
            blobs = cv2.GaussianBlur(rng.random(shape).astype(np.float32), (0, 0), 3)
            yield np.digitize(blobs, np.quantile(blobs, [0.5, 0.8])).astype(np.uint8)
    nested = np.zeros((90, 90), np.uint8)
    for value in CLASSES:
        offset = 0 if value == 1 else 45
        cv2.circle(nested, (22 + offset, 22 + offset), 20, value, 3)
        cv2.circle(nested, (22 + offset, 22 + offset), 9, value, -1)
        cv2.circle(nested, (22 + offset, 22 + offset), 4, 0, -1)
        nested[22 + offset, 22 + offset] = value
    yield nested
    yield nested.T.copy()


@pytest.mark.parametrize("min_area", [1, 4, 30])
def test_random_masks_match_the_flood_fill_reference(min_area):
    for mask in _random_masks():
        assert_matches_reference(mask, min_area=min_area)


def test_random_masks_4_connectivity_match_the_reference():
    for mask in _random_masks(seed=5):
        assert_matches_reference(mask, connectivity=4)


@pytest.mark.parametrize("connectivity", [4, 8])
def test_order_and_areas_follow_opencv_labels(connectivity):
    rng = np.random.default_rng(7)
    for trial in range(40):
        shape = tuple(int(n) for n in rng.integers(1, 200, size=2))
        mask = (rng.random(shape) < rng.uniform(0.1, 0.6)).astype(np.uint8)
        n_labels, labels = cv2.connectedComponents(mask, connectivity=connectivity, ltype=cv2.CV_32S)
        got = _table(mask, classes=(1,), connectivity=connectivity)
        areas = np.bincount(labels.ravel(), minlength=n_labels)[1:]
        assert got.area_px.tolist() == areas.tolist(), trial


def test_perimeter_and_hull_equal_opencv_on_many_random_masks():
    rng = np.random.default_rng(0)
    for trial in range(120):
        shape = tuple(int(n) for n in rng.integers(1, 60, size=2))
        mask = rng.integers(0, 3, shape).astype(np.uint8)
        if trial % 2 and min(shape) > 2:
            mask = cv2.medianBlur(mask, 3)
        got = _table(mask)
        offset = 0
        for value in CLASSES:
            n_labels, labels = cv2.connectedComponents((mask == value).view(np.uint8), connectivity=8, ltype=cv2.CV_32S)
            for label in range(1, n_labels):
                contours, _ = cv2.findContours((labels == label).view(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_TC89_L1)
                contour = max(contours, key=len)
                hull = cv2.convexHull(contour)
                i = offset + label - 1
                assert got.perimeter_px[i] == cv2.arcLength(contour, True), (trial, i)
                assert got.hull_area_px[i] == pytest.approx(cv2.contourArea(hull), rel=HULL_REL, abs=1e-12)
                assert got.hull_perimeter_px[i] == pytest.approx(cv2.arcLength(hull, True), rel=HULL_REL, abs=1e-12)
            offset += n_labels - 1


def test_empty_and_background_only_masks_have_no_regions():
    for mask in (np.zeros((1, 1), np.uint8), np.zeros((37, 50), np.uint8), np.full((9, 9), 7, np.uint8)):
        got = _table(mask)
        assert got.area_px.size == 0
        assert got.small_counts.tolist() == [0, 0]
        assert got.moments.shape == (0, 6)


@pytest.mark.parametrize("shape", [(1, 1), (1, 9), (9, 1), (3, 3), (64, 300), (301, 257)])
def test_full_frame_is_one_region_touching_every_edge(shape):
    height, width = shape
    got = _table(np.ones(shape, np.uint8))
    assert got.area_px.tolist() == [height * width]
    assert (got.bbox_x[0], got.bbox_y[0], got.bbox_width_px[0], got.bbox_height_px[0]) == (0, 0, width, height)
    assert (got.centroid_x[0], got.centroid_y[0]) == ((width - 1) / 2, (height - 1) / 2)
    # Teh-Chin keeps the four corners: the pixel-centre rectangle's perimeter, traced both ways for a line.
    # (Below 3 px a side OpenCV's reduction collapses a block to one point, perimeter 0: see the
    # 2x2 and 1x2 cases in the reference comparisons.)
    assert got.perimeter_px[0] == 2 * (width - 1) + 2 * (height - 1)
    assert got.hull_area_px[0] == (width - 1) * (height - 1)
    assert_matches_reference(np.ones(shape, np.uint8))


def test_blocks_under_three_pixels_collapse_as_in_opencv():
    for shape in ((1, 2), (2, 1), (2, 2)):
        got = assert_matches_reference(np.ones(shape, np.uint8))
        assert got.perimeter_px.tolist() == [0.0]


def test_single_pixels_anywhere():
    mask = np.zeros((5, 7), np.uint8)
    for y, x in ((0, 0), (0, 6), (4, 0), (4, 6), (2, 3)):
        mask[y, x] = 2
    got = assert_matches_reference(mask)
    assert got.area_px.tolist() == [1] * 5
    assert got.perimeter_px.tolist() == [0.0] * 5
    assert got.hull_area_px.tolist() == [0.0] * 5
    assert got.class_value.tolist() == [2] * 5


def test_regions_touching_the_frame_edges():
    mask = np.zeros((40, 50), np.uint8)
    mask[0:6, 10:30] = 1  # top edge
    mask[20:40, 0:3] = 2  # left and bottom edges
    mask[30:40, 44:50] = 1  # bottom-right corner
    cv2.circle(mask, (49, 15), 7, 2, -1)  # cut by the right edge
    assert_matches_reference(mask)


def test_diagonal_neighbours_join_with_8_and_not_with_4_connectivity():
    mask = np.zeros((8, 8), np.uint8)
    for i in range(1, 7):
        mask[i, i] = 1
    assert _table(mask).area_px.tolist() == [6]
    assert _table(mask, connectivity=4).area_px.tolist() == [1] * 6
    assert_matches_reference(mask, connectivity=4)
    assert_matches_reference(mask)


def test_neighbouring_classes_stay_separate_regions():
    mask = np.zeros((6, 6), np.uint8)
    mask[1:5, 1:3] = 1
    mask[1:5, 3:5] = 2  # touches the class-1 block along a whole side
    got = assert_matches_reference(mask)
    assert got.class_value.tolist() == [1, 2]
    assert got.area_px.tolist() == [8, 8]


def test_classes_come_out_in_the_listed_order():
    mask = np.zeros((10, 10), np.uint8)
    mask[0:2, 0:2] = 2
    mask[5:7, 5:9] = 1
    assert _table(mask, classes=(2, 1)).class_value.tolist() == [2, 1]
    assert _table(mask, classes=(1, 2)).class_value.tolist() == [1, 2]
    assert _table(mask, classes=(1,)).area_px.tolist() == [8]


@pytest.mark.parametrize("n_bands", [2, 3, 5, 17, 60])
def test_strip_boundaries_give_the_same_table(n_bands):
    """Regions crossing band boundaries: spirals, U shapes whose arms join below a boundary,
    diagonal chains meeting exactly at one, and random clutter."""
    mask = np.zeros((60, 64), np.uint8)
    mask[2:50, 2:5] = 1
    mask[2:50, 12:15] = 1
    mask[47:50, 2:15] = 1  # a U: its arms meet only at the bottom
    for i in range(40):
        mask[5 + i, 20 + i % 2 + i // 2] = 2  # a diagonal staircase through every row
    cv2.circle(mask, (45, 45), 12, 1, 2)
    mask[55:60, :] = np.random.default_rng(3).integers(0, 3, (5, 64), dtype=np.uint8)
    for y in range(0, 60, 2):
        mask[y, 60 + (y // 2) % 4] = 1  # pixels joined only diagonally across rows
    want = _table(mask, n_bands=1, n_items=1)
    for connectivity in (4, 8):
        assert_matches_reference(mask, connectivity=connectivity, n_bands=n_bands, n_items=7)
    got = _table(mask, n_bands=n_bands, n_items=3)
    for field in kr.RegionTable._fields:
        np.testing.assert_array_equal(getattr(got, field), getattr(want, field), err_msg=field)


def test_every_row_its_own_band():
    for mask in _random_masks(seed=9):
        assert_matches_reference(mask, n_bands=mask.shape[0], n_items=5)


def test_smooth_large_shapes_equal_opencv():
    """Long gentle borders: support regions many steps wide and hulls of many dominant points
    (the sorted-by-counting path), where random masks give mostly short ones."""
    mask = np.zeros((700, 900), np.uint8)
    for i, (cx, cy, a, b, angle) in enumerate([(150, 150, 120, 60, 17), (450, 140, 90, 89, 0), (720, 170, 150, 40, 63),
                                               (200, 480, 30, 170, 101), (560, 500, 200, 120, 149)]):
        cv2.ellipse(mask, (cx, cy), (a, b), angle, 0, 360, 1 + i % 2, -1)
    cv2.fillPoly(mask, [np.array([[760, 330], [890, 420], [800, 690], [700, 560]])], 1)
    got = _table(mask)
    offset = 0
    for value in CLASSES:
        n_labels, labels = cv2.connectedComponents((mask == value).view(np.uint8), connectivity=8, ltype=cv2.CV_32S)
        for label in range(1, n_labels):
            contour = max(cv2.findContours((labels == label).view(np.uint8), cv2.RETR_EXTERNAL,
                                           cv2.CHAIN_APPROX_TC89_L1)[0], key=len)
            hull = cv2.convexHull(contour)
            i = offset + label - 1
            assert len(contour) > kr._HULL_INSERTION_SORT_MAX
            assert got.perimeter_px[i] == cv2.arcLength(contour, True), i
            assert got.hull_area_px[i] == pytest.approx(cv2.contourArea(hull), rel=HULL_REL)
            assert got.hull_perimeter_px[i] == pytest.approx(cv2.arcLength(hull, True), rel=HULL_REL)
        offset += n_labels - 1
    assert offset == got.area_px.size >= 4


def test_long_borders_grow_the_trace_buffer():
    """A comb's border is far longer than the first trace buffer; results stay OpenCV's."""
    mask = np.zeros((400, 420), np.uint8)
    for x in range(5, 415, 4):
        mask[5:295, x:x + 2] = 1  # teeth
    mask[5:8, 5:415] = 1  # spine
    cv2.circle(mask, (210, 350), 40, 2, -1)
    got = _table(mask)
    contours, _ = cv2.findContours((mask == 1).view(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    assert max(len(c) for c in contours) > 4 * kr._TRACE_START_CAPACITY
    assert got.area_px.size == 2
    assert_matches_reference(mask[:120, :200])
    n_labels, labels = cv2.connectedComponents((mask == 1).view(np.uint8), connectivity=8)
    contour = max(cv2.findContours((labels == 1).view(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_TC89_L1)[0], key=len)
    assert got.perimeter_px[0] == cv2.arcLength(contour, True)


def test_non_contiguous_input_is_accepted():
    mask = np.random.default_rng(2).integers(0, 3, (40, 60), dtype=np.uint8)
    np.testing.assert_array_equal(_table(mask[:, ::2]).area_px, _table(mask[:, ::2].copy()).area_px)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    mask=arrays(np.uint8, st.tuples(st.integers(1, 24), st.integers(1, 24)), elements=st.integers(0, 3)),
    min_area=st.integers(1, 6),
    n_bands=st.integers(1, 6),
)
def test_any_small_mask_matches_the_reference(mask, min_area, n_bands):
    n_bands = min(n_bands, mask.shape[0])
    assert_matches_reference(mask, min_area=min_area, n_bands=n_bands, n_items=2)
    assert_matches_reference(mask, classes=(3, 0), connectivity=4, n_bands=n_bands)


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        ((np.zeros((4, 4), np.uint16), CLASSES), {}),
        ((np.zeros((4, 4, 1), np.uint8), CLASSES), {}),
        ((np.zeros((0, 4), np.uint8), CLASSES), {}),
        (([[1, 2]], CLASSES), {}),
        ((np.zeros((4, 4), np.uint8), ()), {}),
        ((np.zeros((4, 4), np.uint8), (1, 1)), {}),
        ((np.zeros((4, 4), np.uint8), (256,)), {}),
        ((np.zeros((4, 4), np.uint8), CLASSES), {"min_area": 0}),
        ((np.zeros((4, 4), np.uint8), CLASSES), {"min_area": True}),
        ((np.zeros((4, 4), np.uint8), CLASSES), {"connectivity": 6}),
        ((np.zeros((4, 4), np.uint8), CLASSES), {"connectivity": 4}),  # shape needs 8
    ],
)
def test_bad_arguments_raise_value_error(args, kwargs):
    with pytest.raises(ValueError, match="region_table"):
        kr.region_table(*args, **kwargs)


def test_docstring_examples():
    import doctest

    result = doctest.testmod(kr, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0
    assert result.failed == 0


def test_two_threads_at_once_give_serial_results():
    """The kernel releases the GIL; two calls in flight at once (pipeline workers) must not mix."""
    import threading

    rng = np.random.default_rng(4)
    masks = []
    for _ in range(3):
        blobs = cv2.GaussianBlur(rng.random((300, 420)).astype(np.float32), (0, 0), 2)
        masks.append(np.digitize(blobs, np.quantile(blobs, [0.5, 0.8])).astype(np.uint8))
    expected = [kr.region_table(m, CLASSES) for m in masks]
    failures = []
    start = threading.Barrier(2)

    def worker(order):
        start.wait()
        for _ in range(5):
            for i in order:
                got = kr.region_table(masks[i], CLASSES)
                if not all(np.array_equal(g, w, equal_nan=True) for g, w in zip(got, expected[i], strict=True)):
                    failures.append(i)

    threads = [threading.Thread(target=worker, args=(order,)) for order in ([0, 1, 2], [2, 1, 0])]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []


@njit
def _scan_rows(rows, scan):
    """(counts, starts) of every row by one of the run-start scans."""
    starts = np.full((rows.shape[0], rows.shape[1] + 1), -1, dtype=np.int32)
    counts = np.empty(rows.shape[0], dtype=np.int64)
    for y in range(rows.shape[0]):
        counts[y] = scan(rows[y], starts[y])
    return counts, starts


def _scalar_scan(rows):
    return _scan_rows(rows, kr._run_starts_scalar)


def _compress_scan(rows):
    return _scan_rows(rows, kr._run_starts_compress)


@pytest.mark.skipif(not HAS_COMPRESS, reason="this CPU has no AVX-512F: the scalar scan is the one in use")
@pytest.mark.parametrize("width", [1, 2, 15, 16, 17, 18, 31, 32, 33, 100, 2563])
def test_compressed_run_scan_lists_the_same_run_starts(width):
    """The AVX-512 scan against the scalar loop: every width around its 16-pixel steps, rows
    of noise, of long runs, constant and alternating; only the listed starts count (the
    compress step writes junk past them)."""
    rng = np.random.default_rng(width)
    rows = np.concatenate([
        rng.integers(0, 3, (40, width), dtype=np.uint8),
        np.repeat(rng.integers(0, 2, (40, (width + 6) // 7), dtype=np.uint8), 7, axis=1)[:, :width],
        np.zeros((1, width), np.uint8),
        np.full((1, width), 255, np.uint8),
        (np.arange(width) % 2).astype(np.uint8)[None, :],
    ])
    want_counts, want_starts = _scalar_scan(rows)
    got_counts, got_starts = _compress_scan(rows)
    assert got_counts.tolist() == want_counts.tolist()
    for y, n in enumerate(want_counts.tolist()):
        assert got_starts[y, :n].tolist() == want_starts[y, :n].tolist(), y


@pytest.mark.parametrize(("features", "expected"), [("", False), ("+avx2,-avx512f", False), ("+avx2,+avx512f", True)])
def test_the_compress_follows_the_cpu_numba_compiles_for(monkeypatch, features, expected):
    """`NUMBA_CPU_FEATURES` (set, e.g. empty with `NUMBA_CPU_NAME=generic`, for caches that
    must run on other CPUs) decides, not this machine's CPU: the instruction is never
    compiled for a target without it."""
    import numba

    from kernels import _compress

    monkeypatch.setattr(numba.config, "CPU_FEATURES", features)
    assert _compress._target_has_avx512f() is expected
