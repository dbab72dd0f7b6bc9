"""kernels.compact_fill against OpenCV: external contours, the solidity test, a filled drawing.

The oracle is the sequence the kernel replaces (``cv2.findContours(RETR_EXTERNAL,
CHAIN_APPROX_SIMPLE)``, the pixel area ``contourArea + arcLength / 2 + 1`` of the contour
and of its ``cv2.convexHull``, ``cv2.drawContours(FILLED)``, then ``cv2.dilate`` by the 3x3
cross and ``cv2.bitwise_and`` for the growth). Masks are compared pixel for pixel.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from kernels.pores import _compact_fill, compact_fill

CROSS = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3))


def _pixel_area(contour: np.ndarray) -> float:
    return cv2.contourArea(contour) + cv2.arcLength(contour, True) / 2.0 + 1.0


def _is_compact(contour: np.ndarray, min_solidity: float) -> bool:
    _, _, width, height = cv2.boundingRect(contour)
    pixels = _pixel_area(contour)
    if pixels >= min_solidity * width * height:
        return True
    return pixels / _pixel_area(cv2.convexHull(contour)) >= min_solidity


def opencv_compact_fill(mask, min_solidity, value=255, fill_value=255, grow_into=None, grow_px=0):
    region = (mask == value).view(np.uint8)
    contours, _ = cv2.findContours(region, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    out = np.zeros(mask.shape, np.uint8)
    keep = [c for c in contours if _is_compact(c, min_solidity)]
    if keep:
        cv2.drawContours(out, keep, -1, fill_value, thickness=cv2.FILLED)
    for _ in range(grow_px):
        out = cv2.bitwise_and(cv2.dilate(out, CROSS), np.where(grow_into > 0, 255, 0).astype(np.uint8))
    return out


def _random_masks(seed):
    """Noise at several densities, opened / closed / median-filtered clutter, smooth blobs."""
    rng = np.random.default_rng(seed)
    for trial in range(400):
        shape = tuple(int(n) for n in rng.integers(1, 48, size=2))
        mask = np.where(rng.random(shape) < rng.uniform(0.15, 0.85), 255, 0).astype(np.uint8)
        if trial % 4 == 1:
            mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, CROSS)
        elif trial % 4 == 2:
            mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, CROSS)
        elif trial % 4 == 3 and min(shape) > 2:
            mask = cv2.medianBlur(mask, 3)
        yield mask
    for shape in ((120, 90), (64, 257)):
        blobs = cv2.GaussianBlur(rng.random(shape).astype(np.float32), (0, 0), 2.5)
        yield np.where(blobs < np.quantile(blobs, 0.3), 255, 0).astype(np.uint8)


def _rings_with_islands():
    """Outer regions with holes, islands in the holes, and a crack around a compact blob."""
    mask = np.zeros((80, 120), np.uint8)
    cv2.rectangle(mask, (5, 5), (17, 17), 255, 1)  # a square outline with a long tail: not solid;
    mask[11, 18:60] = 255  # its hole holds a solid island
    mask[9:14, 9:14] = 255
    cv2.circle(mask, (80, 40), 25, 255, -1)  # a disc with a hole holding an island
    cv2.circle(mask, (80, 40), 10, 0, -1)
    cv2.circle(mask, (80, 40), 4, 255, -1)
    mask[70, 2:110] = 255  # a bent crack along the bottom and up the right
    mask[30:70, 112] = 255
    mask[70, 110:113] = 255
    return mask


@pytest.mark.parametrize("min_solidity", [0.0, 0.3, 0.6, 0.85, 1.0])
def test_random_masks_equal_opencv(min_solidity):
    for i, mask in enumerate(_random_masks(seed=int(min_solidity * 10))):
        want = opencv_compact_fill(mask, min_solidity, fill_value=2)
        got = compact_fill(mask, min_solidity, fill_value=2)
        assert np.array_equal(got, want), (i, mask.shape, int((got != want).sum()))


def test_holes_and_islands_follow_the_outer_region():
    mask = _rings_with_islands()
    got = compact_fill(mask, 0.6)
    assert np.array_equal(got, opencv_compact_fill(mask, 0.6))
    assert got[40, 80] == 255 and got[40, 72] == 255  # the disc's island and hole, filled with it
    assert got[11, 11] == 0  # an island inside a region that is dropped goes with it
    assert got[70, 50] == 0  # the crack


@pytest.mark.parametrize("n_bands", [1, 2, 3, 7, 40])
def test_any_number_of_row_bands_gives_the_same_mask(n_bands):
    rng = np.random.default_rng(3)
    for trial in range(30):
        shape = tuple(int(n) for n in rng.integers(2, 90, size=2))
        mask = cv2.morphologyEx(np.where(rng.random(shape) < 0.5, 255, 0).astype(np.uint8), cv2.MORPH_OPEN, CROSS)
        want = opencv_compact_fill(mask, 0.6)
        got = _compact_fill(mask, 255, 0.6, 255, None, 0, n_bands=min(n_bands, shape[0]))
        assert np.array_equal(got, want), trial


@pytest.mark.parametrize("grow_px", [1, 2, 3])
def test_growth_equals_dilation_and_mask(grow_px):
    rng = np.random.default_rng(grow_px)
    for trial in range(200):
        shape = tuple(int(n) for n in rng.integers(1, 40, size=2))
        mask = np.where(rng.random(shape) < rng.uniform(0.2, 0.8), 255, 0).astype(np.uint8)
        # the rim: the regions themselves and more (as a looser dark level gives), or unrelated noise
        grow_into = np.where(rng.random(shape) < 0.6, 255, 0).astype(np.uint8)
        if trial % 2:
            grow_into |= mask
        want = opencv_compact_fill(mask, 0.6, fill_value=2, grow_into=grow_into, grow_px=grow_px)
        got = compact_fill(mask, 0.6, fill_value=2, grow_into=grow_into, grow_px=grow_px)
        assert np.array_equal(got, want), trial


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_growth_below_a_grey_level_equals_growth_into_the_compared_mask(dtype):
    """``grow_below``: the rim read from the grey image around each kept region equals the
    growth into ``cv2.compare(grey, ceil(level), CMP_LT)`` computed on the whole frame."""
    rng = np.random.default_rng(11)
    top = int(np.iinfo(dtype).max) + 1
    for trial in range(150):
        shape = tuple(int(n) for n in rng.integers(1, 40, size=2))
        mask = np.where(rng.random(shape) < rng.uniform(0.2, 0.8), 255, 0).astype(np.uint8)
        grey = rng.integers(0, top, shape).astype(dtype)
        level = float(rng.choice([-1.0, 0.0, top * 0.4 + 0.5, top * 0.8, top + 5.0]))
        rim = np.where(grey.astype(np.int64) < math.ceil(level), 255, 0).astype(np.uint8)  # cv2.compare's result
        want = compact_fill(mask, 0.6, fill_value=2, grow_into=rim, grow_px=2)
        got = compact_fill(mask, 0.6, fill_value=2, grow_into=grey, grow_below=level, grow_px=2)
        assert np.array_equal(got, want), trial


def test_painting_into_a_given_array_lays_the_regions_over_it():
    """``out``: the kept regions are painted into the caller's array, whose other pixels stay,
    which is ``cv2.max`` of that array and the regions' own mask when fill_value is larger."""
    rng = np.random.default_rng(4)
    for trial in range(100):
        shape = tuple(int(n) for n in rng.integers(1, 40, size=2))
        mask = np.where(rng.random(shape) < rng.uniform(0.2, 0.8), 255, 0).astype(np.uint8)
        grey = rng.integers(0, 256, shape).astype(np.uint8)
        classes = rng.integers(0, 2, shape).astype(np.uint8)
        for kwargs in ({}, {"grow_into": grey, "grow_below": 120, "grow_px": 2}):
            want = cv2.max(classes, compact_fill(mask, 0.6, fill_value=2, **kwargs))
            into = classes.copy()
            got = compact_fill(mask, 0.6, fill_value=2, out=into, **kwargs)
            assert got is into and np.array_equal(got, want), trial


def test_other_mask_values_are_background():
    mask = np.zeros((20, 20), np.uint8)
    mask[2:9, 2:9] = 1
    mask[4:6, 4:6] = 7  # a hole of another value
    mask[12:18, 12:18] = 7
    got = compact_fill(mask, 0.6, value=1, fill_value=3)
    assert np.array_equal(got, opencv_compact_fill(mask, 0.6, value=1, fill_value=3))
    assert got[5, 5] == 3 and got[15, 15] == 0


def test_empty_and_full_masks():
    assert not compact_fill(np.zeros((30, 40), np.uint8), 0.6).any()
    assert (compact_fill(np.full((30, 40), 255, np.uint8), 0.6) == 255).all()
    assert compact_fill(np.full((1, 1), 255, np.uint8), 1.0).tolist() == [[255]]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mask": np.zeros((4, 4), np.uint16)}, "2-D uint8"),
        ({"mask": np.zeros((0, 4), np.uint8)}, "2-D uint8"),
        ({"min_solidity": 1.5}, "min_solidity"),
        ({"value": 256}, "value"),
        ({"fill_value": -1}, "fill_value"),
        ({"grow_px": 1}, "grow_into"),
        ({"grow_into": np.zeros((3, 4), np.uint8), "grow_px": 1}, "grow_into"),
        ({"grow_into": np.zeros((4, 4), np.uint8), "grow_px": -1}, "grow_px"),
        ({"grow_into": np.zeros((4, 4), np.uint16), "grow_px": 1}, "uint8 mask"),
        ({"grow_into": np.zeros((4, 4), np.float32), "grow_px": 1, "grow_below": 3}, "grey image"),
        ({"grow_into": np.zeros((4, 4), np.uint8), "grow_px": 1, "grow_below": float("inf")}, "grow_below"),
        ({"grow_below": 3}, "grow_into"),
        ({"out": np.zeros((4, 5), np.uint8)}, "out must be"),
        ({"out": np.zeros((4, 4), np.uint16)}, "out must be"),
        ({"out": np.zeros((4, 8), np.uint8)[:, ::2]}, "out must be"),
    ],
)
def test_invalid_arguments_are_refused(kwargs, message):
    arguments = {"mask": np.zeros((4, 4), np.uint8), "min_solidity": 0.6, **kwargs}
    with pytest.raises(ValueError, match=message):
        compact_fill(**arguments)
