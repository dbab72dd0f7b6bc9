"""kernels.threshold (THRESH_BINARY rule) and kernels.adaptive_threshold (ADAPTIVE_THRESH_MEAN_C)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

import kernels
from tests import naive
from tests.kernels.kernel_images import make_image


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16], ids=["u8", "u16"])
@pytest.mark.parametrize("value", [-1, 0, 0.5, 99, 127.9, 254, 255, 300, 65534.5, 70000])
def test_threshold_matches_opencv_binary(value, dtype):
    img = make_image("random", (37, 53), dtype, seed=1)
    got = kernels.threshold(img, value)
    _, want = cv2.threshold(img, value, 1, cv2.THRESH_BINARY)
    assert got.dtype == np.uint8
    assert set(np.unique(got)) <= {0, 1}
    np.testing.assert_array_equal(got, want.astype(np.uint8))
    np.testing.assert_array_equal(got, naive.threshold(img, value))


def test_threshold_with_otsu_level_equals_opencv_otsu_mask():
    img = make_image("smooth", (120, 90), np.uint8, seed=4)
    level = kernels.otsu_threshold(img)
    _, want = cv2.threshold(img, 0, 1, cv2.THRESH_BINARY | cv2.THRESH_OTSU)
    np.testing.assert_array_equal(kernels.threshold(img, level), want)


# OpenCV rounds the box-filter mean to uint8 with its own rounding; at exact .5 means the
# two may decide differently. Tolerance: at most 0.5% of pixels differ, and only pixels whose
# value sits within one grey level of the local threshold.
@pytest.mark.parametrize(
    ("kind", "shape", "block_size", "offset"),
    [
        ("smooth", (64, 80), 3, 0),
        ("smooth", (101, 77), 11, 2),
        ("random", (50, 61), 5, -3),
        ("random", (40, 40), 31, 1.5),
        ("smooth", (9, 200), 15, 0),
        ("real", None, 21, 5),
    ],
)
def test_adaptive_threshold_matches_opencv_mean_c(kind, shape, block_size, offset):
    img = make_image(kind, shape, np.uint8, seed=block_size)
    got = kernels.adaptive_threshold(img, block_size, offset)
    want = cv2.adaptiveThreshold(
        img, 1, cv2.ADAPTIVE_THRESH_MEAN_C, cv2.THRESH_BINARY, block_size, offset
    )
    differ = got != want
    assert differ.mean() <= 0.005
    if differ.any():
        mean = cv2.blur(img.astype(np.float64), (block_size, block_size), borderType=cv2.BORDER_REPLICATE)
        margin = np.abs(img.astype(np.float64) - (mean - np.ceil(offset)))
        assert margin[differ].max() <= 1.0


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16], ids=["u8", "u16"])
def test_adaptive_threshold_matches_naive(dtype):
    img = make_image("smooth", (23, 31), dtype, seed=8)
    got = kernels.adaptive_threshold(img, 7, 1)
    want = naive.adaptive_threshold(img, 7, 1)
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, want)


def test_adaptive_threshold_block_larger_than_image():
    img = make_image("random", (4, 6), np.uint8, seed=2)
    got = kernels.adaptive_threshold(img, 25, 0)
    want = cv2.adaptiveThreshold(img, 1, cv2.ADAPTIVE_THRESH_MEAN_C, cv2.THRESH_BINARY, 25, 0)
    assert np.mean(got != want) <= 0.05
