"""kernels.patch_texture against the numpy / OpenCV computation of the same moments.

Tolerances: the grey spread and the box-blurred spreads come from the same float32 values
OpenCV holds (box sums are exact in float64), so they agree to float64 summation order:
1e-9 relative. The gradient means sum the same float32 products in float64 where numpy
sums them in float32, pairwise: 1e-6 of the gradient energy gxx + gyy.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from kernels.texture import line_energies, patch_texture

SPREAD_REL = 1e-9
GRADIENT_REL = 1e-6


def numpy_texture(patch: np.ndarray) -> tuple[float, ...]:
    grey = patch.astype(np.float32) * np.float32(1.0 / 255.0)

    def std(image: np.ndarray) -> float:
        return float(cv2.meanStdDev(image)[1][0, 0])

    gx = (grey[1:-1, 2:] - grey[1:-1, :-2]) * np.float32(0.5)
    gy = (grey[2:, 1:-1] - grey[:-2, 1:-1]) * np.float32(0.5)
    means = [float(np.mean(a * b)) for a, b in ((gx, gx), (gy, gy), (gx, gy))] if gx.size else [0.0] * 3
    return std(grey), *means, std(cv2.blur(grey, (4, 4))), std(cv2.blur(grey, (16, 16)))


def _patches():
    rng = np.random.default_rng(0)
    for shape in ((1, 1), (1, 7), (7, 1), (3, 3), (5, 17), (16, 16), (31, 9), (256, 256), (200, 256)):
        yield rng.integers(0, 256, shape, dtype=np.uint8)
        yield cv2.GaussianBlur(rng.integers(0, 256, shape, dtype=np.uint8), (0, 0), 2.0)
    yield np.full((64, 64), 77, np.uint8)
    yield np.tile(np.arange(256, dtype=np.uint8), (256, 1))


def test_moments_equal_numpy_and_opencv():
    for patch in _patches():
        got = patch_texture(patch)
        std, gxx, gyy, gxy, std_4, std_16 = numpy_texture(patch)
        shape = patch.shape
        for name, value, want in (("std", got.std, std), ("std_box4", got.std_box4, std_4), ("std_box16", got.std_box16, std_16)):
            assert value == pytest.approx(want, rel=SPREAD_REL, abs=1e-15), (shape, name)
        energy = gxx + gyy
        for name, value, want in (("gxx", got.gxx, gxx), ("gyy", got.gyy, gyy), ("gxy", got.gxy, gxy)):
            assert abs(value - want) <= GRADIENT_REL * energy + 1e-15, (shape, name, value, want)


def test_a_view_into_a_frame_gives_the_same_moments_as_a_copy():
    frame = np.random.default_rng(4).integers(0, 256, (300, 400), dtype=np.uint8)
    assert patch_texture(frame[20:276, 100:356]) == patch_texture(frame[20:276, 100:356].copy())


@pytest.mark.parametrize("patch", [np.zeros((4, 4), np.uint16), np.zeros((0, 4), np.uint8), np.zeros((2, 2, 2), np.uint8)])
def test_invalid_patches_are_refused(patch):
    with pytest.raises(ValueError, match="2-D uint8"):
        patch_texture(patch)


def opencv_line_energies(dxx: np.ndarray, dyy: np.ndarray, dxy: np.ndarray) -> tuple[float, float]:
    trace = cv2.add(dxx, dyy)
    root = cv2.magnitude(cv2.subtract(dxx, dyy), cv2.add(dxy, dxy))
    dark = cv2.max(cv2.min(trace, root), 0.0)
    bright = cv2.max(cv2.min(cv2.multiply(trace, -1.0), root), 0.0)
    return cv2.norm(bright, cv2.NORM_L2SQR), cv2.norm(dark, cv2.NORM_L2SQR)


def test_line_energies_equal_opencv():
    """OpenCV's magnitude may differ in its last bit from the correctly rounded one: a squared value
    then moves by at most 2.4e-7 relative, and so does a sum of them (3e-7 allowed)."""
    rng = np.random.default_rng(3)
    for shape in ((1, 1), (3, 5), (64, 64), (256, 256)):
        grey = cv2.GaussianBlur(rng.integers(0, 256, shape).astype(np.float32), (13, 13), 2.0)
        derivatives = [cv2.Sobel(grey, cv2.CV_32F, dx, dy, ksize=3) for dx, dy in ((2, 0), (0, 2), (1, 1))]
        got = line_energies(*derivatives)
        want = opencv_line_energies(*derivatives)
        assert got == pytest.approx(want, rel=3e-7, abs=1e-12), shape


def test_line_energies_refuse_other_arrays():
    with pytest.raises(ValueError, match="float32"):
        line_energies(np.zeros((3, 3)), np.zeros((3, 3)), np.zeros((3, 3)))
