"""kernels.minimum_error_threshold: the robust Kittler-Illingworth threshold, against a slow reference."""

from __future__ import annotations

import numpy as np
import pytest

import kernels
from tests import naive
from tests.kernels.kernel_images import make_image


def _two_populations(n_broad: int, broad_mean: float, broad_sd: float, n_narrow: int, narrow_mean: float,
                     narrow_sd: float, seed: int, dtype=np.uint8) -> np.ndarray:
    rng = np.random.default_rng(seed)
    values = np.concatenate([rng.normal(broad_mean, broad_sd, n_broad), rng.normal(narrow_mean, narrow_sd, n_narrow)])
    top = np.iinfo(dtype).max
    scale = 1.0 if dtype == np.uint8 else 257.0
    return np.clip(rng.permutation(values) * scale, 0, top).astype(dtype).reshape(1, -1)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16], ids=["u8", "u16"])
@pytest.mark.parametrize(("kind", "shape"), [("random", (64, 64)), ("smooth", (333, 257)), ("smooth", (1, 1)),
                                             ("real", None)])
def test_identical_to_the_slow_reference(kind, shape, dtype):
    img = make_image(kind, shape, dtype, seed=5)
    assert kernels.minimum_error_threshold(img) == naive.minimum_error_threshold(img)


def test_identical_to_the_reference_on_many_two_population_images():
    rng = np.random.default_rng(3)
    for trial in range(40):
        img = _two_populations(int(rng.integers(2000, 6000)), rng.uniform(40, 120), rng.uniform(10, 50),
                               int(rng.integers(500, 4000)), rng.uniform(150, 230), rng.uniform(4, 20), seed=trial)
        assert kernels.minimum_error_threshold(img) == naive.minimum_error_threshold(img), trial


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16], ids=["u8", "u16"])
def test_a_narrow_bright_population_is_not_cut_into(dtype):
    """Broad matrix (mean 90, sd 40) + narrow particles (mean 200, sd 12): Otsu splits inside the
    broad side's bright tail; the minimum-error threshold lies near where the densities meet."""
    img = _two_populations(60_000, 90, 40, 40_000, 200, 12, seed=1, dtype=dtype)
    scale = 1 if dtype == np.uint8 else 257
    otsu, minimum_error = kernels.otsu_threshold(img), kernels.minimum_error_threshold(img)
    assert otsu < minimum_error
    # The two generating densities (weights 0.6, 0.4) cross at 171.3 grey levels.
    assert abs(minimum_error / scale - 171.3) <= 6


def test_degenerate_histograms_fall_back_to_otsu():
    two_levels = np.array([[10, 10, 200, 200]], np.uint8)
    assert kernels.minimum_error_threshold(two_levels) == kernels.otsu_threshold(two_levels) == 10
    flat = np.full((8, 8), 77, np.uint8)
    assert kernels.minimum_error_threshold(flat) == kernels.otsu_threshold(flat)
    # One broad Gaussian: J has no minimum strictly between Otsu's class means.
    rng = np.random.default_rng(0)
    one = np.clip(rng.normal(128, 30, (200, 200)), 0, 255).astype(np.uint8)
    assert kernels.minimum_error_threshold(one) == kernels.otsu_threshold(one)


def test_grey_histogram_counts_every_pixel():
    img = make_image("random", (123, 77), np.uint16, seed=2)
    hist = kernels.grey_histogram(img)
    assert hist.shape == (65536,) and hist.sum() == img.size
    assert np.array_equal(hist, np.bincount(img.ravel(), minlength=65536))


def test_cuda_backend_is_refused_with_a_clear_error():
    with pytest.raises(kernels.CudaUnavailableError, match="no CUDA kernel"):
        kernels.minimum_error_threshold(np.zeros((4, 4), np.uint8), backend="cuda")
