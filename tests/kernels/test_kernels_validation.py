"""Bad inputs fail early with ValueError; backend='cuda' fails with CudaUnavailableError."""

from __future__ import annotations

import numpy as np
import pytest

import kernels

IMG = np.zeros((16, 16), dtype=np.uint8)


@pytest.mark.parametrize(
    ("img", "match"),
    [
        (np.zeros((4, 4, 3), dtype=np.uint8), "2-D"),
        (np.zeros(16, dtype=np.uint8), "2-D"),
        (np.zeros((0, 5), dtype=np.uint8), "empty"),
        (np.zeros((4, 4), dtype=np.float32), "uint8 or uint16"),
        (np.zeros((4, 4), dtype=np.int16), "uint8 or uint16"),
        ([[1, 2], [3, 4]], "numpy array"),
    ],
)
@pytest.mark.parametrize("call", ["clahe", "otsu", "threshold", "adaptive"])
def test_bad_images_raise_value_error(img, match, call):
    calls = {
        "clahe": lambda a: kernels.clahe(a),
        "otsu": lambda a: kernels.otsu_threshold(a),
        "threshold": lambda a: kernels.threshold(a, 10),
        "adaptive": lambda a: kernels.adaptive_threshold(a, 3, 0),
    }
    with pytest.raises(ValueError, match=match):
        calls[call](img)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"clip_limit": -1.0}, "clip_limit"),
        ({"clip_limit": float("nan")}, "clip_limit"),
        ({"clip_limit": "2"}, "clip_limit"),
        ({"tile_grid": (0, 8)}, "tile_grid"),
        ({"tile_grid": (8,)}, "tile_grid"),
        ({"tile_grid": (8, 2.5)}, "tile_grid"),
        ({"tile_grid": 8}, "tile_grid"),
        ({"tile_grid": (True, 8)}, "tile_grid"),
        ({"backend": "gpu"}, "backend"),
    ],
)
def test_bad_clahe_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        kernels.clahe(IMG, **kwargs)


def test_huge_grid_on_16_bit_is_refused():
    with pytest.raises(ValueError, match="MiB"):
        kernels.clahe(np.zeros((512, 512), dtype=np.uint16), tile_grid=(64, 64))


@pytest.mark.parametrize(("block_size", "match"), [(4, "odd"), (1, "odd"), (0, "positive"), (3.0, "positive")])
def test_bad_adaptive_block_size(block_size, match):
    with pytest.raises(ValueError, match=match):
        kernels.adaptive_threshold(IMG, block_size, 0)


def test_bad_threshold_value():
    with pytest.raises(ValueError, match="value"):
        kernels.threshold(IMG, float("inf"))


_GPU_HERE = pytest.mark.skipif(kernels.cuda_usable()[0], reason="a usable CUDA GPU (or the simulator) is present")


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda: kernels.clahe(IMG, backend="cuda"), marks=_GPU_HERE),
        pytest.param(lambda: kernels.otsu_threshold(IMG, backend="cuda"), marks=_GPU_HERE),
        pytest.param(lambda: kernels.threshold(IMG, 1, backend="cuda"), marks=_GPU_HERE),
        lambda: kernels.adaptive_threshold(IMG, 3, 0, backend="cuda"),  # no CUDA twin: refused everywhere
    ],
)
def test_cuda_backend_raises_clear_error(call):
    with pytest.raises(kernels.CudaUnavailableError, match="CUDA") as excinfo:
        call()
    assert isinstance(excinfo.value, RuntimeError)
    assert "backend='cpu'" in str(excinfo.value)


@pytest.mark.parametrize("backend", ["auto", "cpu"])
def test_cpu_backends_run(backend):
    assert kernels.clahe(IMG, backend=backend).shape == IMG.shape
    assert kernels.otsu_threshold(IMG, backend=backend) == 0


def test_big_endian_uint16_is_accepted():
    img = np.arange(64, dtype=">u2").reshape(8, 8) * 1000
    native = img.astype(np.uint16)
    np.testing.assert_array_equal(kernels.clahe(img, tile_grid=(2, 2)), kernels.clahe(native, tile_grid=(2, 2)))
