"""kernels.clahe against OpenCV's CLAHE (within one grey level) and the naive reference."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

import kernels
from kernels._clahe_interp import interpolate_direct, interpolate_row_blend_u8
from kernels.config import CLAHE_ROW_BLEND_MAX_RATIO
from tests import naive
from tests.kernels.kernel_images import make_image


def opencv_clahe(img, clip_limit, tile_grid):
    rows, cols = tile_grid
    return cv2.createCLAHE(clipLimit=clip_limit, tileGridSize=(cols, rows)).apply(img)


def max_abs_diff(a, b):
    return int(np.abs(a.astype(np.int64) - b.astype(np.int64)).max())


# (kind, shape, tile_grid, clip_limit): sizes that divide the grid and sizes that do not
# (OpenCV pads with BORDER_REFLECT_101), grids 1..16 including non-square ones, clip 0..40.
CASES = [
    ("random", (64, 64), (8, 8), 2.0),
    ("random", (67, 93), (8, 8), 2.0),
    ("random", (100, 37), (3, 5), 0.0),
    ("random", (31, 200), (16, 16), 4.0),
    ("random", (128, 96), (1, 1), 40.0),
    ("random", (5, 7), (16, 16), 2.0),
    ("smooth", (120, 160), (8, 8), 2.0),
    ("smooth", (121, 161), (4, 6), 1.0),
    ("smooth", (240, 320), (16, 16), 3.0),
    ("smooth", (97, 131), (2, 1), 0.0),
    ("smooth", (64, 70), (7, 13), 0.5),
    ("smooth", (1, 1), (1, 1), 2.0),
    ("real", None, (8, 8), 2.0),
    ("real", None, (5, 3), 0.0),
    ("real", None, (16, 16), 8.0),
]


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16], ids=["u8", "u16"])
@pytest.mark.parametrize(("kind", "shape", "tile_grid", "clip_limit"), CASES)
def test_clahe_matches_opencv(kind, shape, tile_grid, clip_limit, dtype):
    img = make_image(kind, shape, dtype, seed=CASES.index((kind, shape, tile_grid, clip_limit)))
    got = kernels.clahe(img, clip_limit=clip_limit, tile_grid=tile_grid)
    want = opencv_clahe(img, clip_limit, tile_grid)
    assert got.dtype == img.dtype
    assert got.shape == img.shape
    assert max_abs_diff(got, want) <= 1


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16], ids=["u8", "u16"])
def test_clahe_camera_sized_frame_rarely_rounds_differently(dtype):
    # Fixed-point interpolation rounds half up where OpenCV's float32 rounds half to even,
    # and OpenCV's float32 carries its own rounding error: a few pixels in a thousand differ
    # by one level at realistic tile sizes (small power-of-two tiles give exact ties, more).
    img = make_image("smooth", (480, 640), dtype, seed=12)
    got = kernels.clahe(img, clip_limit=2.0, tile_grid=(8, 8))
    want = opencv_clahe(img, 2.0, (8, 8))
    assert max_abs_diff(got, want) <= 1
    assert np.mean(got != want) < 0.02


@pytest.mark.parametrize("grid", list(range(1, 17)))
def test_clahe_every_square_grid_on_odd_size(grid):
    img = make_image("smooth", (77, 103), np.uint8, seed=grid)
    got = kernels.clahe(img, clip_limit=2.0, tile_grid=(grid, grid))
    assert max_abs_diff(got, opencv_clahe(img, 2.0, (grid, grid))) <= 1


@pytest.mark.parametrize("clip_limit", [0.0, 0.01, 1.0, 2.0, 10.0, 1000.0])
def test_clahe_clip_limits(clip_limit):
    img = make_image("random", (96, 128), np.uint8, seed=3)
    got = kernels.clahe(img, clip_limit=clip_limit, tile_grid=(4, 4))
    assert max_abs_diff(got, opencv_clahe(img, clip_limit, (4, 4))) <= 1


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16], ids=["u8", "u16"])
def test_clahe_matches_naive_reference(dtype):
    img = make_image("smooth", (90, 110), dtype, seed=11)
    got = kernels.clahe(img, clip_limit=2.0, tile_grid=(6, 4))
    assert max_abs_diff(got, naive.clahe(img, 2.0, (6, 4))) <= 1


def test_clahe_twelve_bit_image_stays_in_range():
    # A 12-bit camera frame in a uint16 container: CLAHE stretches it over 16 bits, as OpenCV does.
    img = (make_image("smooth", (64, 64), np.uint16, seed=5) >> 4).astype(np.uint16)
    got = kernels.clahe(img, clip_limit=2.0, tile_grid=(4, 4))
    assert max_abs_diff(got, opencv_clahe(img, 2.0, (4, 4))) <= 1


def test_clahe_accepts_non_contiguous_view():
    img = make_image("random", (80, 120), np.uint8, seed=9)
    view = img[::2, 1::2]
    got = kernels.clahe(view, tile_grid=(2, 2))
    assert max_abs_diff(got, opencv_clahe(np.ascontiguousarray(view), 2.0, (2, 2))) <= 1


def test_clahe_constant_image_maps_to_constant():
    img = np.full((40, 40), 77, dtype=np.uint8)
    got = kernels.clahe(img, clip_limit=2.0, tile_grid=(4, 4))
    assert np.unique(got).size == 1
    assert max_abs_diff(got, opencv_clahe(img, 2.0, (4, 4))) <= 1


def test_clahe_tile_grid_is_rows_then_cols():
    # A tall image with a (4, 1) grid means 4 tiles stacked vertically, i.e. OpenCV (1, 4).
    img = make_image("smooth", (128, 32), np.uint8, seed=4)
    got = kernels.clahe(img, clip_limit=2.0, tile_grid=(4, 1))
    assert max_abs_diff(got, opencv_clahe(img, 2.0, (4, 1))) <= 1
    transposed = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(4, 1)).apply(img)
    assert max_abs_diff(got, transposed) > 1


# Wide 8-bit images take the row-blend interpolation path (two look-ups per pixel);
# narrow ones and all 16-bit images the four-look-up path. Cover both on odd sizes.
@pytest.mark.parametrize(
    ("shape", "tile_grid", "clip_limit"),
    [((45, 1203), (3, 5), 2.0), ((97, 2049), (16, 16), 0.0), ((130, 700), (7, 2), 3.0), ((33, 600), (1, 1), 1.0)],
)
def test_clahe_row_blend_path_matches_opencv(shape, tile_grid, clip_limit):
    rows, cols = tile_grid
    assert (cols + 1) * 256 <= CLAHE_ROW_BLEND_MAX_RATIO * shape[1], "case must exercise the row-blend path"
    img = make_image("smooth", shape, np.uint8, seed=shape[1])
    got = kernels.clahe(img, clip_limit=clip_limit, tile_grid=tile_grid)
    assert max_abs_diff(got, opencv_clahe(img, clip_limit, tile_grid)) <= 1


def test_interpolation_paths_agree():
    img = make_image("random", (50, 900), np.uint8, seed=2)
    tiles_y, tiles_x, tile_h, tile_w = 5, 3, 10, 300
    luts = np.random.default_rng(3).integers(0, 256, (tiles_y * tiles_x, 256)).astype(np.uint8)
    luts.sort(axis=1)
    blended = np.empty_like(img)
    direct = np.empty_like(img)
    interpolate_row_blend_u8(img, luts, tiles_y, tiles_x, tile_h, tile_w, 4, blended)
    interpolate_direct(img, luts, tiles_y, tiles_x, tile_h, tile_w, direct)
    assert max_abs_diff(blended, direct) <= 1


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("shape", [(64, 96), (61, 97)])  # a 4x6 grid divides the first only
def test_keep_if_sees_the_image_histogram_and_keeps_the_image(shape, dtype):
    img = make_image("random", shape, dtype)
    seen = []

    def keep(counts):
        seen.append(counts)
        return True

    assert kernels.clahe(img, clip_limit=2.0, tile_grid=(4, 6), backend="cpu", keep_if=keep) is img
    assert np.array_equal(seen[0], kernels.grey_histogram(img)) and seen[0].dtype == np.int64
    equalised = kernels.clahe(img, clip_limit=2.0, tile_grid=(4, 6), backend="cpu", keep_if=lambda counts: False)
    assert np.array_equal(equalised, kernels.clahe(img, clip_limit=2.0, tile_grid=(4, 6), backend="cpu"))
