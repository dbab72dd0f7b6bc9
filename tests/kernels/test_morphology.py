"""kernels.open_dark against the OpenCV calls it replaces: ``cv2.compare(image, ceil(level),
CMP_LT)`` then ``cv2.morphologyEx(MORPH_OPEN, element)``, compared byte for byte."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from kernels.morphology import _open_dark, element_half_widths, open_dark

ELEMENTS = [
    *(cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1)) for r in range(5)),
    cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (7, 3)),
    cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 9)),
    cv2.getStructuringElement(cv2.MORPH_RECT, (5, 3)),
    cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 7)),
    np.array([[0, 0, 1, 0, 0], [0, 1, 1, 1, 0], [1, 1, 1, 1, 1], [0, 1, 1, 1, 0], [0, 0, 1, 0, 0]], np.uint8),
]


def opencv_open_dark(image, level, element):
    if image.shape[1] == 1 and image.shape[0] <= 4:
        # OpenCV's Python binding reads an array of 1 to 4 elements in one column as a Scalar
        dark = np.where(image.astype(np.int64) < math.ceil(level), 255, 0).astype(np.uint8)
    else:
        dark = cv2.compare(image, math.ceil(level), cv2.CMP_LT)
    return cv2.morphologyEx(dark, cv2.MORPH_OPEN, element)


def _cases(seed, n):
    """Random small frames (uint8 and uint16, plain noise or mostly dark) with levels below, inside
    and above the dtype's range, every element in turn."""
    rng = np.random.default_rng(seed)
    for trial in range(n):
        shape = tuple(int(v) for v in rng.integers(1, 36, size=2))
        dtype = np.uint8 if trial % 2 else np.uint16
        top = int(np.iinfo(dtype).max) + 1
        image = rng.integers(0, top, shape).astype(dtype)
        if trial % 3 == 0:
            image = np.where(rng.random(shape) < 0.8, 0, image).astype(dtype)
        level = float(rng.choice([-5.0, 0.0, 0.5, top * 0.3, top * 0.7, top - 0.5, top, top + 10.0, rng.uniform(0, top)]))
        yield image, level, ELEMENTS[trial % len(ELEMENTS)]


def test_random_frames_equal_opencv():
    for i, (image, level, element) in enumerate(_cases(seed=0, n=500)):
        want = opencv_open_dark(image, level, element)
        assert np.array_equal(open_dark(image, level, element), want), (i, image.shape, image.dtype, level)


@pytest.mark.parametrize("n_bands", [1, 2, 3, 7, 40])
def test_any_number_of_row_bands_gives_the_same_mask(n_bands):
    for i, (image, level, element) in enumerate(_cases(seed=n_bands, n=120)):
        below = min(max(math.ceil(level), 0), int(np.iinfo(image.dtype).max) + 1)
        if below == 0:
            continue  # the wrapper answers that without the kernel
        got = np.empty(image.shape, np.uint8)
        _open_dark(image, image.dtype.type(below - 1), element_half_widths(element), min(n_bands, image.shape[0]), got)
        assert np.array_equal(got, opencv_open_dark(image, level, element)), i


def test_a_frame_sized_pore_filter_mask_equals_opencv():
    """The pore filter's own use: a blurred 2560x1920 frame, near-black level, 5x5 ellipse."""
    rng = np.random.default_rng(7)
    image = cv2.GaussianBlur(rng.integers(0, 256, (1920, 2560), dtype=np.uint8), (0, 0), 1.5)
    element = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
    level = float(np.quantile(image, 0.03))
    want = opencv_open_dark(image, level, element)
    assert want.any() and not want.all()
    assert np.array_equal(open_dark(image, level, element), want)


def test_what_the_opening_keeps_and_drops():
    disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
    image = np.full((20, 30), 200, np.uint8)
    image[3:12, 3:12] = 5  # a 9x9 pore: stays
    image[15, 2:28] = 5  # a one-pixel crack: goes
    image[2:18, 20:22] = 5  # a two-pixel one: goes
    out = open_dark(image, 20, disc)
    assert out[7, 7] == 255 and out[3, 3] == 0  # the ellipse rounds the square's corners
    assert not out[15].any() and not out[:, 20:22].any()
    assert set(np.unique(out).tolist()) == {0, 255}


@pytest.mark.parametrize(
    ("element", "message"),
    [
        (np.ones((2, 3), np.uint8), "odd height and width"),
        (np.ones(3, np.uint8), "odd height and width"),
        (np.array([[1, 1, 0], [1, 1, 1], [0, 1, 1]], np.uint8), "centred"),
        (np.array([[0, 0, 0], [1, 1, 1], [0, 1, 0]], np.uint8), "centred"),
        (np.array([[0, 1, 0], [1, 1, 1], [1, 1, 1]], np.uint8), "symmetric"),
        ([[1]], "odd height and width"),
    ],
)
def test_elements_it_cannot_take_are_refused(element, message):
    with pytest.raises(ValueError, match=message):
        open_dark(np.zeros((4, 4), np.uint8), 10, element)


@pytest.mark.parametrize(
    ("image", "level", "message"),
    [
        (np.zeros((4, 4), np.float32), 10, "uint8 or uint16"),
        (np.zeros((4, 4, 3), np.uint8), 10, "2-D"),
        (np.zeros((0, 4), np.uint8), 10, "empty"),
        (np.zeros((4, 4), np.uint8), float("nan"), "level"),
    ],
)
def test_invalid_images_and_levels_are_refused(image, level, message):
    with pytest.raises(ValueError, match=message):
        open_dark(image, level, np.ones((3, 3), np.uint8))
