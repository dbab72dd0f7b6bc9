"""Preprocess stage: optional denoise, then CLAHE from `kernels`.

The enhanced image keeps the input dtype (uint8 or uint16) so 12/16-bit camera frames are
not quantised before segmentation.

Example:
    >>> import numpy as np
    >>> from inspectd.config import PreprocessConfig
    >>> enhance(np.full((64, 64), 100, np.uint8), PreprocessConfig()).dtype
    dtype('uint8')
"""

from __future__ import annotations

import cv2
import numpy as np
from scipy import ndimage

import kernels
from inspectd.config import DenoiseMethod, PreprocessConfig


def enhance(pixels: np.ndarray, cfg: PreprocessConfig, *, backend: str = "auto") -> np.ndarray:
    """Denoise (if configured) and apply CLAHE; returns a new array of the input dtype."""
    out = _denoise(pixels, cfg.denoise, cfg.denoise_ksize)
    if cfg.clahe.enabled:
        out = kernels.clahe(out, clip_limit=cfg.clahe.clip_limit, tile_grid=cfg.clahe.tile_grid, backend=backend)
    elif out is pixels:
        out = pixels.copy()
    return out


def enhance_on_device(pixels: np.ndarray, cfg: PreprocessConfig):
    """`enhance` for the GPU flow: denoise (if configured) on the host, upload once, CLAHE on the device.

    Returns a CUDA device array (the frame stays there for segmentation); needs a usable
    GPU or numba's simulator, else `kernels.CudaUnavailableError`.
    """
    frame = kernels.to_device(_denoise(pixels, cfg.denoise, cfg.denoise_ksize))
    if not cfg.clahe.enabled:
        return frame
    return kernels.clahe(frame, clip_limit=cfg.clahe.clip_limit, tile_grid=cfg.clahe.tile_grid, backend="cuda")


def _denoise(pixels: np.ndarray, method: DenoiseMethod, ksize: int) -> np.ndarray:
    if method is DenoiseMethod.GAUSSIAN:
        return cv2.GaussianBlur(pixels, (ksize, ksize), 0)
    if method is DenoiseMethod.MEDIAN:
        # OpenCV's median takes 16-bit input only up to ksize 5; scipy's is exact for any size.
        if pixels.dtype == np.uint16 and ksize > 5:
            return ndimage.median_filter(pixels, size=ksize, mode="reflect")
        return cv2.medianBlur(pixels, ksize)
    return pixels
