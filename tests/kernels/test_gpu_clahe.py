"""CUDA CLAHE against the CPU kernel and OpenCV (within one grey level), device arrays in and out.

Runs on a real GPU, or on the CPU under numba's simulator (the CI job):
    NUMBA_ENABLE_CUDASIM=1 .venv/bin/pytest -q -m gpu tests/kernels
Skips the whole module otherwise. The simulator executes every thread in Python, so the
images are small and the launch settings tiny (as stumpy's test.sh does): blocks of 40
threads (one full warp plus a partial one, not a power of two) and strips of 64 pixels,
so block edges, several strips per tile and several warp histograms are all exercised.
"""

from __future__ import annotations

import doctest
import sys

import cv2
import numpy as np
import pytest

import kernels
from kernels import cuda_device, gpu_config
from kernels.clahe import clahe as cpu_clahe
from tests import naive
from tests.kernels.kernel_images import random_image, smooth_image

pytestmark = pytest.mark.gpu

_USABLE, _REASON = cuda_device.cuda_usable()
if not _USABLE:
    pytest.skip(f"needs a CUDA GPU or NUMBA_ENABLE_CUDASIM=1: {_REASON}", allow_module_level=True)

from numba import cuda  # noqa: E402  (only once a GPU or the simulator is known to be there)

from kernels import gpu_clahe as gpu_clahe_module  # noqa: E402
from kernels.gpu_clahe import gpu_clahe  # noqa: E402


@pytest.fixture(autouse=True)
def small_launches(monkeypatch):
    """Tiny blocks and strips so block, strip and warp edges fall inside small images.

    The simulator runs each CUDA thread as a Python thread and its block manager polls
    them while holding the GIL: a 0.5 ms switch interval (default 5 ms) halves its wall
    time here. Restored after each test.
    """
    monkeypatch.setattr(gpu_config, "THREADS_PER_BLOCK", 40)
    monkeypatch.setattr(gpu_config, "PIXEL_BLOCK", (8, 2))
    monkeypatch.setattr(gpu_config, "ROWS_PER_THREAD", 2)
    monkeypatch.setattr(gpu_config, "HIST_PIXELS_PER_BLOCK", 64)
    if cuda_device.is_simulator():
        switch_interval_s = sys.getswitchinterval()
        sys.setswitchinterval(0.0005)
        yield
        sys.setswitchinterval(switch_interval_s)
    else:
        yield


def opencv_clahe(img, clip_limit, tile_grid):
    rows, cols = tile_grid
    return cv2.createCLAHE(clipLimit=clip_limit, tileGridSize=(cols, rows)).apply(img)


def max_abs_diff(a, b):
    return int(np.abs(a.astype(np.int64) - b.astype(np.int64)).max())


def flat_image(shape, dtype, seed):
    """Every pixel the same grey level: all counts land in one bin (clip + residual at full tilt)."""
    return np.full(shape, 128 + seed, dtype=dtype)


MAKERS = {"random": random_image, "smooth": smooth_image, "flat": flat_image}

# (kind, shape, tile_grid, clip_limit): sizes that divide the grid and sizes that do not
# (reflect-101 padding, including a 5x7 image padded by more than its own size), grids 1..4,
# clip limits 0 (no clipping) to 40.
CASES_U8 = [
    ("random", (16, 16), (2, 2), 2.0),
    ("smooth", (37, 29), (3, 4), 0.0),
    ("smooth", (48, 40), (3, 3), 4.0),
    ("random", (5, 7), (4, 4), 2.0),
    ("random", (40, 48), (1, 1), 40.0),
    ("random", (33, 50), (2, 3), 1.0),
    ("flat", (20, 24), (2, 2), 2.0),
    ("smooth", (1, 1), (1, 1), 2.0),
]

# 65536 bins per tile: the simulator spends about a second per tile, so few tiles here.
# Value ranges: a narrow band (most bins empty) and the full range.
CASES_U16 = [
    ("narrow", (16, 16), (1, 1), 2.0),
    ("smooth", (23, 19), (2, 1), 0.0),
    ("random", (12, 20), (1, 2), 3.0),
]


def make_u16(kind, shape, seed):
    if kind == "narrow":
        return np.random.default_rng(seed).integers(1000, 1200, shape, dtype=np.uint16)
    return MAKERS[kind](shape, np.uint16, seed)


@pytest.mark.parametrize(("kind", "shape", "tile_grid", "clip_limit"), CASES_U8)
def test_u8_matches_cpu_and_opencv(kind, shape, tile_grid, clip_limit):
    img = MAKERS[kind](shape, np.uint8, CASES_U8.index((kind, shape, tile_grid, clip_limit)))
    got = kernels.clahe(img, clip_limit=clip_limit, tile_grid=tile_grid, backend="cuda")
    assert isinstance(got, np.ndarray)
    assert got.dtype == np.uint8 and got.shape == img.shape
    assert max_abs_diff(got, cpu_clahe(img, clip_limit, tile_grid)) <= 1
    assert max_abs_diff(got, opencv_clahe(img, clip_limit, tile_grid)) <= 1


@pytest.mark.parametrize(("kind", "shape", "tile_grid", "clip_limit"), CASES_U16)
def test_u16_matches_cpu_and_opencv(kind, shape, tile_grid, clip_limit):
    img = make_u16(kind, shape, CASES_U16.index((kind, shape, tile_grid, clip_limit)))
    got = kernels.clahe(img, clip_limit=clip_limit, tile_grid=tile_grid, backend="cuda")
    assert got.dtype == np.uint16 and got.shape == img.shape
    assert max_abs_diff(got, cpu_clahe(img, clip_limit, tile_grid)) <= 1
    assert max_abs_diff(got, opencv_clahe(img, clip_limit, tile_grid)) <= 1


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16], ids=["u8", "u16"])
def test_equals_the_naive_float32_reference(dtype):
    """Same integer tables and the same float32 interpolation as OpenCV's CPU path.

    The simulator evaluates the kernels with numpy float32 scalars, so it must agree with
    the naive reference bit for bit; a real GPU may contract multiply-adds into FMAs, which
    can move an exact .5 tie by one level.
    """
    img = smooth_image((26, 21), dtype, seed=11)
    got = gpu_clahe(img, clip_limit=1.5, tile_grid=(2, 1) if dtype == np.uint16 else (2, 3))
    want = naive.clahe(img, 1.5, (2, 1) if dtype == np.uint16 else (2, 3))
    if cuda_device.is_simulator():
        np.testing.assert_array_equal(got, want)
    else:
        assert max_abs_diff(got, want) <= 1


def test_device_array_in_gives_device_array_out():
    img = smooth_image((20, 18), np.uint8, seed=3)
    dev = cuda.to_device(img)
    out = kernels.clahe(dev, clip_limit=2.0, tile_grid=(1, 2), backend="cuda")
    assert cuda_device.is_device_array(out)
    assert tuple(out.shape) == img.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(out.copy_to_host(), gpu_clahe(img, 2.0, (1, 2)))
    # auto follows the data: a device array goes to the GPU even under the simulator.
    again = kernels.clahe(dev, clip_limit=2.0, tile_grid=(1, 2), backend="auto")
    assert cuda_device.is_device_array(again)
    np.testing.assert_array_equal(again.copy_to_host(), out.copy_to_host())


def test_strided_device_view():
    """A crop of a device frame (non-contiguous rows) is read in place, not copied."""
    frame = random_image((40, 48), np.uint8, seed=5)
    view = cuda.to_device(frame)[3:31, 5:41]
    out = gpu_clahe(view, clip_limit=2.0, tile_grid=(2, 2))
    crop = np.ascontiguousarray(frame[3:31, 5:41])
    assert max_abs_diff(out.copy_to_host(), cpu_clahe(crop, 2.0, (2, 2))) <= 1


def test_page_locked_input():
    img = cuda_device.pinned_empty((18, 22), np.uint8)
    img[...] = random_image((18, 22), np.uint8, seed=8)
    assert max_abs_diff(gpu_clahe(img, 2.0, (2, 2)), cpu_clahe(np.array(img), 2.0, (2, 2))) <= 1


@pytest.mark.parametrize(
    ("img", "kwargs", "match"),
    [
        (np.zeros((4, 4, 3), np.uint8), {}, "2-D"),
        (np.zeros((4, 4), np.float32), {}, "uint8 or uint16"),
        (np.zeros((8, 8), np.uint8), {"clip_limit": -1.0}, "clip_limit"),
        (np.zeros((8, 8), np.uint8), {"tile_grid": (0, 2)}, "tile_grid"),
        (np.zeros((64, 64), np.uint16), {"tile_grid": (40, 40)}, "MiB"),
    ],
)
def test_bad_input_is_refused(img, kwargs, match):
    with pytest.raises(ValueError, match=match):
        gpu_clahe(img, **kwargs)


def test_bad_device_input_is_refused():
    with pytest.raises(ValueError, match="2-D"):
        gpu_clahe(cuda.to_device(np.zeros((2, 3, 4), np.uint8)))
    with pytest.raises(ValueError, match="uint8 or uint16"):
        gpu_clahe(cuda.to_device(np.zeros((4, 4), np.int32)))


def test_docstring_example():
    result = doctest.testmod(gpu_clahe_module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


def test_keep_if_is_judged_on_the_host_histogram_and_refused_for_device_arrays():
    img = random_image((40, 52), np.uint8, 3)
    seen = []
    assert kernels.clahe(img, clip_limit=2.0, tile_grid=(2, 2), backend="cuda",
                         keep_if=lambda counts: seen.append(counts) or True) is img
    assert np.array_equal(seen[0], kernels.grey_histogram(img))
    out = kernels.clahe(img, clip_limit=2.0, tile_grid=(2, 2), backend="cuda", keep_if=lambda counts: False)
    assert np.array_equal(kernels.to_host(out) if kernels.is_device_array(out) else out,
                          kernels.to_host(gpu_clahe(img, 2.0, (2, 2))))
    with pytest.raises(ValueError, match="host image"):
        kernels.clahe(cuda.to_device(img), clip_limit=2.0, tile_grid=(2, 2), keep_if=lambda counts: True)
