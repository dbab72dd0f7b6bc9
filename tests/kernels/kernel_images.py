"""Seeded test images for the kernel tests: noise, smooth fields and the real sample tile."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

REAL_TILE = Path(__file__).resolve().parents[2] / ".." / "shared" / "samples" / "real_coating_tile_c.png"


def random_image(shape, dtype, seed):
    """Uniform noise over the dtype's full range."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, np.iinfo(dtype).max + 1, size=shape, dtype=dtype)


def smooth_image(shape, dtype, seed):
    """Blobs, a lighting gradient and faint noise, like an unevenly lit micrograph.

    Built at 1/16 scale and upsampled, so a 2560x1920 frame takes milliseconds.
    """
    rng = np.random.default_rng(seed)
    height, width = shape
    coarse = rng.normal(size=(max(2, height // 16), max(2, width // 16))).astype(np.float32)
    blobs = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    ramp = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :]
    field = blobs / (np.abs(blobs).max() + 1e-6) + ramp
    field += rng.normal(scale=0.01, size=shape).astype(np.float32)
    field = (field - field.min()) / (field.max() - field.min() + 1e-6)
    top = np.iinfo(dtype).max
    return np.clip(field * top * 0.8 + top * 0.1, 0, top).astype(dtype)


def real_tile(dtype=np.uint8):
    """The shared real coating micrograph tile, or skip when ../shared is absent."""
    if not REAL_TILE.is_file():
        pytest.skip(f"real sample tile not available at {REAL_TILE}")
    img = cv2.imread(str(REAL_TILE), cv2.IMREAD_GRAYSCALE)
    assert img is not None, f"could not decode {REAL_TILE}"
    if dtype == np.uint16:
        # Spread to 16 bits with low-order noise, as a 12/16-bit camera would deliver.
        rng = np.random.default_rng(7)
        return (img.astype(np.uint16) << 8) | rng.integers(0, 256, img.shape, dtype=np.uint16)
    return img


def make_image(kind, shape, dtype, seed=0):
    """Build a test image by kind name: random, smooth or real (real ignores shape)."""
    if kind == "random":
        return random_image(shape, dtype, seed)
    if kind == "smooth":
        return smooth_image(shape, dtype, seed)
    if kind == "real":
        return real_tile(dtype)
    msg = f"unknown image kind {kind}"
    raise AssertionError(msg)
