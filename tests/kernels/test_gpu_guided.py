"""CUDA guided argmax against the CPU kernel (identical masks), numpy and device arrays.

Runs on a real GPU, or on the CPU under numba's simulator (the CI job):
    NUMBA_ENABLE_CUDASIM=1 .venv/bin/pytest -q -m gpu tests/kernels
Skips the whole module otherwise.
"""

from __future__ import annotations

import numpy as np
import pytest

import kernels
from kernels import cuda_device, gpu_config

pytestmark = pytest.mark.gpu

_USABLE, _REASON = cuda_device.cuda_usable()
if not _USABLE:
    pytest.skip(f"needs a CUDA GPU or NUMBA_ENABLE_CUDASIM=1: {_REASON}", allow_module_level=True)

from numba import cuda  # noqa: E402  (only once a GPU or the simulator is known to be there)

from kernels.gpu_guided import gpu_guided_argmax  # noqa: E402
from kernels.guided import guided_argmax as cpu_guided_argmax  # noqa: E402


@pytest.fixture(autouse=True)
def small_launches(monkeypatch):
    """Tiny blocks: many blocks and grid-stride row loops on small images."""
    monkeypatch.setattr(gpu_config, "PIXEL_BLOCK", (8, 2))
    monkeypatch.setattr(gpu_config, "ROWS_PER_THREAD", 2)


@pytest.mark.parametrize(("height", "width", "stride", "dtype"), [
    (24, 40, 4, np.uint8),
    (21, 19, 4, np.uint16),  # not a multiple of the stride
    (16, 24, 2, np.uint8),
    (17, 33, 8, np.uint16),
])
def test_equals_the_cpu_kernel(height, width, stride, dtype) -> None:
    rng = np.random.default_rng(height + width + stride)
    image = rng.integers(0, np.iinfo(dtype).max + 1, (height, width)).astype(dtype)
    pairs = rng.standard_normal((6, -(-height // stride), -(-width // stride))).astype(np.float32)
    mask = gpu_guided_argmax(pairs, image, stride)
    assert isinstance(mask, np.ndarray) and mask.dtype == np.uint8
    assert np.array_equal(mask, cpu_guided_argmax(pairs, image, stride))


def test_device_arrays_in_give_a_device_mask_out() -> None:
    rng = np.random.default_rng(5)
    image = rng.integers(0, 256, (20, 28)).astype(np.uint8)
    pairs = rng.standard_normal((6, 5, 7)).astype(np.float32)
    mask = kernels.guided_argmax(cuda.to_device(pairs), cuda.to_device(image), 4)
    assert cuda_device.is_device_array(mask)
    assert np.array_equal(mask.copy_to_host(), cpu_guided_argmax(pairs, image, 4))


def test_bad_pairs_are_refused_as_on_the_cpu() -> None:
    with pytest.raises(ValueError, match="do not cover"):
        gpu_guided_argmax(np.zeros((6, 2, 2), np.float32), np.zeros((9, 8), np.uint8), 4)
    with pytest.raises(ValueError, match="float32"):
        gpu_guided_argmax(cuda.to_device(np.zeros((6, 2, 2), np.float64)), np.zeros((8, 8), np.uint8), 4)
