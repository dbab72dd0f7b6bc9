"""CLAHE (contrast limited adaptive histogram equalisation), numba CPU kernels.

Same function as OpenCV's ``cv2.createCLAHE(clipLimit, tileGridSize).apply`` (CPU path of
``modules/imgproc/src/clahe.cpp``): per-tile histograms, clip limit scaled by the tile area,
clipped counts redistributed evenly plus a strided residual, one LUT per tile, bilinear
interpolation between tile centres. When the image does not divide into the grid, the
histograms see a copy padded with BORDER_REFLECT_101; here the padding is an index mapping
used by the edge tiles only, never a materialised image.

Three parallel passes (see ``_clahe_luts.py`` and ``_clahe_interp.py``): histograms over
(tile, strip) work items; per-tile clip, redistribution and LUT; interpolation over bands
of rows. LUTs equal OpenCV's exactly; interpolation is integer fixed point and may round
one grey level differently from OpenCV's float32 (mostly at exact .5 ties).
"""

from __future__ import annotations

import numpy as np

from kernels._clahe_interp import interpolate_direct, interpolate_row_blend_u8
from kernels._clahe_luts import image_histogram, tile_histograms, tile_luts
from kernels._threads import threads_for
from kernels._validate import check_clahe_arguments, check_image
from kernels.backend import resolve_backend
from kernels.config import (
    CLAHE_LANES_MIN_TILE_AREA,
    CLAHE_MAX_TABLE_BYTES,
    CLAHE_ROW_BLEND_MAX_RATIO,
    HIST_WORK_ITEMS_PER_THREAD,
    ROW_BAND_ROWS,
)
from kernels.otsu import checked_histogram


def _tile_geometry(height, width, tiles_y, tiles_x):
    """Tile size as OpenCV computes it, including its padding rule.

    OpenCV pads both axes whenever either axis does not divide, each by
    ``grid - size % grid``; an axis that divides evenly thus still grows by one whole row
    (or column) of pixels per tile. Reproduced on purpose so the tiles match.
    """
    if height % tiles_y == 0 and width % tiles_x == 0:
        return height // tiles_y, width // tiles_x
    padded_h = height + tiles_y - height % tiles_y
    padded_w = width + tiles_x - width % tiles_x
    return padded_h // tiles_y, padded_w // tiles_x


def clahe(img, clip_limit=2.0, tile_grid=(8, 8), backend="auto", keep_if=None):
    """Contrast-limited adaptive histogram equalisation of a 2-D uint8 or uint16 image.

    ``keep_if``: an optional test of the image's grey histogram (int64 counts, 256 bins for
    uint8, 65536 for uint16); when it says True, the image itself is returned, not
    equalised. Where the grid divides the image, the histogram is the sum of the tile
    histograms CLAHE counts anyway, so the test costs no pass over the frame.

    Matches ``cv2.createCLAHE(clipLimit=clip_limit, tileGridSize=(cols, rows)).apply(img)``
    within one grey level. Note the order: ``tile_grid`` here is ``(rows, cols)`` of tiles
    (numpy order), while OpenCV's ``tileGridSize`` is ``(cols, rows)``.
    ``clip_limit=0`` disables clipping (plain adaptive equalisation). 16-bit images use
    65536 histogram bins, as OpenCV does.

    >>> import numpy as np, kernels
    >>> img = np.random.default_rng(0).integers(0, 256, (64, 96), dtype=np.uint8)
    >>> out = kernels.clahe(img, clip_limit=2.0, tile_grid=(4, 6))
    >>> out.shape, out.dtype
    ((64, 96), dtype('uint8'))
    """
    resolve_backend(backend, "clahe")
    given = img
    img = check_image(img, "clahe")
    clip_limit, tiles_y, tiles_x = check_clahe_arguments(clip_limit, tile_grid)
    hist_size = 256 if img.dtype == np.uint8 else 65536

    height, width = img.shape
    tile_h, tile_w = _tile_geometry(height, width, tiles_y, tiles_x)
    tile_area = tile_h * tile_w
    lut_scale = np.float32(hist_size - 1) / np.float32(tile_area)
    clip = 0
    if clip_limit > 0.0:
        # OpenCV: static_cast<int>(clipLimit * tileArea / histSize), at least 1. A clip at
        # or above the tile area never bites, so cap there rather than overflow an int.
        clip = max(int(min(clip_limit * tile_area / hist_size, tile_area)), 1)

    n_tiles = tiles_y * tiles_x
    with threads_for(img.size) as threads:
        # Enough (tile, strip) work items for every thread even on a coarse grid.
        n_strips = min(tile_h, -(-threads * HIST_WORK_ITEMS_PER_THREAD // n_tiles))
        # 4 interleaved 256-bin lanes pay off on large 8-bit tiles only (see _count_pixels).
        lane_stride = 256 if hist_size == 256 and tile_area >= CLAHE_LANES_MIN_TILE_AREA else 0
        table_bytes = n_tiles * hist_size * img.itemsize + n_tiles * n_strips * (hist_size + 3 * lane_stride) * 4
        if table_bytes > CLAHE_MAX_TABLE_BYTES:
            msg = (
                f"clahe: a {tiles_y}x{tiles_x} tile grid on a {img.dtype} image needs "
                f"{table_bytes / 2**20:.0f} MiB of histograms and LUTs "
                f"(limit {CLAHE_MAX_TABLE_BYTES / 2**20:.0f} MiB); use a coarser grid"
            )
            raise ValueError(msg)
        partial = tile_histograms(img, tiles_y, tiles_x, tile_h, tile_w, n_strips, lane_stride, hist_size)
        if keep_if is not None:
            unpadded = height % tiles_y == 0 and width % tiles_x == 0
            counts = image_histogram(partial, lane_stride, hist_size) if unpadded else checked_histogram(img)
            if keep_if(counts):
                return given
        luts = np.empty((n_tiles, hist_size), dtype=img.dtype)
        tile_luts(partial, n_tiles, n_strips, lane_stride, hist_size, clip, lut_scale, luts)
        del partial

        out = np.empty_like(img)
        n_segments = tiles_x + 1
        if hist_size == 256 and n_segments * 256 <= CLAHE_ROW_BLEND_MAX_RATIO * width:
            n_bands = max(1, min(height // ROW_BAND_ROWS, 8 * threads))
            interpolate_row_blend_u8(img, luts, tiles_y, tiles_x, tile_h, tile_w, n_bands, out)
        else:
            interpolate_direct(img, luts, tiles_y, tiles_x, tile_h, tile_w, out)
    return out
