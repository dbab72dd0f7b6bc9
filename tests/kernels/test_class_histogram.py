"""kernels.otsu.class_grey_histogram against cv2.calcHist: the same integer counts."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from kernels.otsu import _class_histogram, _class_histogram_u8_chunks, class_grey_histogram


def calc_hist(classes: np.ndarray, img: np.ndarray, n_classes: int) -> np.ndarray:
    levels = 65536 if img.dtype == np.uint16 else 256
    first = classes if img.dtype == np.uint8 else classes.astype(np.uint16)
    counts = cv2.calcHist([first, img], [0, 1], None, [n_classes, levels], [0, n_classes, 0, levels])
    return counts.astype(np.int64)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_counts_equal_calchist(dtype):
    rng = np.random.default_rng(1)
    top = np.iinfo(dtype).max + 1
    for trial in range(40):
        shape = tuple(int(n) for n in rng.integers(1, 200, size=2))
        img = rng.integers(0, top, shape).astype(dtype)
        classes = rng.integers(0, 6, shape).astype(np.uint8)  # 3..5 are not counted
        n_classes = int(rng.integers(1, 5))
        got = class_grey_histogram(classes, img, n_classes)
        assert got.dtype == np.int64
        assert np.array_equal(got, calc_hist(classes, img, n_classes)), trial


def test_uint8_counts_every_class_value_into_its_own_row():
    """The uint8 count indexes a row per possible class value: 255 must neither spill into
    another row nor be counted; frame sizes that are no multiple of four end right."""
    rng = np.random.default_rng(3)
    for size in (1, 2, 3, 5, 4099):
        img = rng.integers(0, 256, (1, size)).astype(np.uint8)
        classes = rng.integers(0, 256, (1, size)).astype(np.uint8)
        classes[0, -1] = 255
        for n_classes in (1, 3, 255):
            assert np.array_equal(class_grey_histogram(classes, img, n_classes), calc_hist(classes, img, n_classes))


@pytest.mark.parametrize("n_chunks", [1, 2, 5])
def test_any_number_of_chunks_gives_the_same_counts(n_chunks):
    rng = np.random.default_rng(2)
    img = rng.integers(0, 65536, (37, 53)).astype(np.uint16)
    classes = rng.integers(0, 4, img.shape).astype(np.uint8)
    got = _class_histogram(classes.ravel(), img.ravel(), np.int64(3), 65536, n_chunks)
    assert np.array_equal(got, calc_hist(classes, img, 3))
    img8 = rng.integers(0, 256, (41, 53)).astype(np.uint8)  # 2173 pixels: chunks no multiple of four
    classes8 = rng.integers(0, 5, img8.shape).astype(np.uint8)
    got8 = _class_histogram_u8_chunks(classes8.ravel(), img8.ravel(), np.int64(3), n_chunks)
    assert np.array_equal(got8, calc_hist(classes8, img8, 3))


@pytest.mark.parametrize(
    ("classes", "img", "n_classes", "message"),
    [
        (np.zeros((4, 4), np.uint16), np.zeros((4, 4), np.uint8), 3, "uint8 mask"),
        (np.zeros((4, 5), np.uint8), np.zeros((4, 4), np.uint8), 3, "uint8 mask"),
        (np.zeros((4, 4), np.uint8), np.zeros((4, 4), np.float32), 3, "dtype"),
        (np.zeros((4, 4), np.uint8), np.zeros((4, 4), np.uint8), 0, "n_classes"),
    ],
)
def test_invalid_arguments_are_refused(classes, img, n_classes, message):
    with pytest.raises(ValueError, match=message):
        class_grey_histogram(classes, img, n_classes)
