"""Input checks shared by the public kernel wrappers: fail early with a message a user can act on."""

from __future__ import annotations

import numbers

import numpy as np

SUPPORTED_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16))


def check_image(img: object, kernel_name: str) -> np.ndarray:
    """Return ``img`` as a C-contiguous, native-byte-order 2-D uint8/uint16 array, or raise ValueError."""
    if not isinstance(img, np.ndarray):
        msg = f"{kernel_name}: expected a numpy array, got {type(img).__name__}"
        raise ValueError(msg)
    if img.ndim != 2:
        msg = (
            f"{kernel_name}: expected a 2-D single-channel image, got shape {img.shape} "
            "(convert colour images to grey first)"
        )
        raise ValueError(msg)
    if img.size == 0:
        msg = f"{kernel_name}: the image is empty (shape {img.shape})"
        raise ValueError(msg)
    native = img.dtype.newbyteorder("=")
    if native not in SUPPORTED_DTYPES:
        msg = f"{kernel_name}: expected dtype uint8 or uint16, got {img.dtype}"
        raise ValueError(msg)
    return np.ascontiguousarray(img, dtype=native)


def check_positive_int(value: object, name: str, kernel_name: str) -> int:
    """Accept Python or numpy integers (not bools) greater than zero."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        msg = f"{kernel_name}: {name} must be a positive integer, got {value!r}"
        raise ValueError(msg)
    return int(value)


def check_real(value: object, name: str, kernel_name: str) -> float:
    """Accept a finite real number (Python or numpy), not a bool."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not np.isfinite(value):
        msg = f"{kernel_name}: {name} must be a finite number, got {value!r}"
        raise ValueError(msg)
    return float(value)


def check_clahe_arguments(clip_limit, tile_grid) -> tuple[float, int, int]:
    """(clip_limit, tile rows, tile cols) after the checks both CLAHE backends share."""
    clip_limit = check_real(clip_limit, "clip_limit", "clahe")
    if clip_limit < 0:
        msg = f"clahe: clip_limit must be >= 0 (0 disables clipping), got {clip_limit}"
        raise ValueError(msg)
    if not isinstance(tile_grid, (tuple, list)) or len(tile_grid) != 2:
        msg = f"clahe: tile_grid must be (rows, cols) of positive integers, got {tile_grid!r}"
        raise ValueError(msg)
    tiles_y = check_positive_int(tile_grid[0], "tile_grid rows", "clahe")
    tiles_x = check_positive_int(tile_grid[1], "tile_grid cols", "clahe")
    return clip_limit, tiles_y, tiles_x
