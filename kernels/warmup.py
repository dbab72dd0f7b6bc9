"""Compile every kernel before the first frame, so JIT time never lands in a watchdog window."""

from __future__ import annotations

import numpy as np

from kernels.clahe import clahe
from kernels.guided import guided_argmax
from kernels.morphology import open_dark
from kernels.otsu import class_grey_histogram, otsu_threshold
from kernels.pores import compact_fill
from kernels.regions import region_table
from kernels.texture import line_energies, patch_texture
from kernels.threshold import adaptive_threshold, threshold


def warm_up() -> None:
    """Run each public kernel once on tiny uint8 and uint16 images (compiles or loads the cache).

    Takes 10-20 s on a cold cache, well under one second with numba's on-disk cache
    warm. Covers writeable arrays (what decoders return); a read-only input is a
    different numba type and compiles once more on first use.

    >>> import kernels
    >>> kernels.warm_up()
    """
    for dtype in (np.uint8, np.uint16):
        # 19x23 with a 2x3 grid: padded (reflect-101) tiles and the four-look-up path;
        # 16x520 with a 2x2 grid: the 8-bit row-blend path.
        for shape in ((19, 23), (16, 520)):
            img = (np.arange(shape[0] * shape[1]) % 251).astype(dtype).reshape(shape)
            clahe(img, clip_limit=2.0, tile_grid=(2, 3))
            clahe(img, clip_limit=0.0, tile_grid=(2, 2))
            otsu_threshold(img)
            class_grey_histogram((img % 3).astype(np.uint8), img, 3)
            threshold(img, 100)
            adaptive_threshold(img, 3, 0)
            guided_argmax(np.zeros((6, shape[0], shape[1]), np.float32), img, 4)
            open_dark(img, 100, np.ones((5, 5), np.uint8))
    # measure's region pass: a two-class mask with regions on several bands of rows
    mask = (np.arange(64 * 64).reshape(64, 64) % 3).astype(np.uint8)
    region_table(mask, (1, 2))
    # the classical engine's pore filter (with and without growth) and the frame statistics' patches
    dark = np.where(mask == 1, 255, 0).astype(np.uint8)
    compact_fill(dark, 0.6, value=255, fill_value=2)
    compact_fill(dark, 0.6, value=255, fill_value=2, grow_into=np.full_like(dark, 255), grow_px=2)
    for grey in (mask * 100, mask.astype(np.uint16) * 25700):  # the pore filter's growth below a grey level
        compact_fill(dark, 0.6, value=255, fill_value=2, grow_into=grey, grow_below=150, grow_px=2)
    patch_texture(mask)
    patch_texture(mask[8:40, 8:40])  # a patch cut from a frame: a strided view compiles apart
    derivative = np.ones((8, 8), np.float32)
    line_energies(derivative, derivative, derivative)
