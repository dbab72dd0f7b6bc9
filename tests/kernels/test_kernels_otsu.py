"""kernels.otsu_threshold returns exactly OpenCV's THRESH_OTSU threshold (8- and 16-bit)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

import kernels
from tests import naive
from tests.kernels.kernel_images import make_image


def opencv_otsu(img):
    top = np.iinfo(img.dtype).max
    threshold, _ = cv2.threshold(img, 0, top, cv2.THRESH_BINARY | cv2.THRESH_OTSU)
    return int(threshold)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16], ids=["u8", "u16"])
@pytest.mark.parametrize(
    ("kind", "shape"),
    [("random", (64, 64)), ("smooth", (333, 257)), ("smooth", (1, 1)), ("smooth", (7, 1)), ("real", None)],
)
def test_otsu_identical_to_opencv(kind, shape, dtype):
    img = make_image(kind, shape, dtype, seed=21)
    assert kernels.otsu_threshold(img) == opencv_otsu(img)


def test_otsu_identical_on_many_small_random_images():
    # Few grey levels give exact ties in the between-class variance: OpenCV keeps the first.
    rng = np.random.default_rng(1)
    for trial in range(150):
        shape = tuple(int(n) for n in rng.integers(1, 60, size=2))
        levels = int(rng.integers(2, 9))
        values = np.sort(rng.choice(256, size=levels, replace=False)).astype(np.uint8)
        img = values[rng.integers(0, levels, size=shape)]
        assert kernels.otsu_threshold(img) == opencv_otsu(img), (trial, shape, values)
        assert kernels.otsu_threshold(img) == naive.otsu_threshold(img)


def test_otsu_bimodal_separates_modes():
    rng = np.random.default_rng(2)
    img = np.where(rng.random((200, 300)) < 0.3, 60, 190).astype(np.uint8)
    img = np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)
    threshold = kernels.otsu_threshold(img)
    assert 80 < threshold < 170
    assert threshold == opencv_otsu(img)


def test_otsu_constant_image_is_zero_like_opencv():
    img = np.full((30, 40), 123, dtype=np.uint8)
    assert kernels.otsu_threshold(img) == opencv_otsu(img) == 0


def test_otsu_large_frame_uses_every_row_band():
    img = make_image("smooth", (1920, 2560), np.uint8, seed=3)
    assert kernels.otsu_threshold(img) == opencv_otsu(img)

