"""CUDA binary threshold and Otsu against the CPU kernels (identical results), device frames, streams.

Runs on a real GPU, or on the CPU under numba's simulator (the CI job):
    NUMBA_ENABLE_CUDASIM=1 .venv/bin/pytest -q -m gpu tests/kernels
Skips the whole module otherwise.
"""

from __future__ import annotations

import doctest
import sys
import threading

import cv2
import numpy as np
import pytest

import kernels
from kernels import cuda_device, gpu_config
from kernels.otsu import otsu_threshold as cpu_otsu_threshold
from kernels.threshold import threshold as cpu_threshold
from tests.kernels.kernel_images import random_image, smooth_image

pytestmark = pytest.mark.gpu

_USABLE, _REASON = cuda_device.cuda_usable()
if not _USABLE:
    pytest.skip(f"needs a CUDA GPU or NUMBA_ENABLE_CUDASIM=1: {_REASON}", allow_module_level=True)

from numba import cuda  # noqa: E402  (only once a GPU or the simulator is known to be there)

from kernels import gpu_threshold as gpu_threshold_module  # noqa: E402
from kernels.gpu_clahe import gpu_clahe  # noqa: E402
from kernels.gpu_threshold import gpu_otsu_threshold, gpu_threshold  # noqa: E402


@pytest.fixture(autouse=True)
def small_launches(monkeypatch):
    """Tiny blocks and few pixels per thread: many blocks and grid-stride wrap-arounds on small images."""
    monkeypatch.setattr(gpu_config, "THREADS_PER_BLOCK", 40)
    monkeypatch.setattr(gpu_config, "PIXEL_BLOCK", (8, 2))
    monkeypatch.setattr(gpu_config, "ROWS_PER_THREAD", 2)
    monkeypatch.setattr(gpu_config, "OTSU_PIXELS_PER_THREAD", 3)
    monkeypatch.setattr(gpu_config, "HIST_PIXELS_PER_BLOCK", 64)
    if cuda_device.is_simulator():  # see test_gpu_clahe.small_launches
        switch_interval_s = sys.getswitchinterval()
        sys.setswitchinterval(0.0005)
        yield
        sys.setswitchinterval(switch_interval_s)
    else:
        yield


def bimodal_image(shape, dtype, seed):
    """Two grey-level populations with noise: a clear Otsu split."""
    rng = np.random.default_rng(seed)
    top = np.iinfo(dtype).max
    dark = rng.normal(0.25 * top, 0.05 * top, shape)
    bright = rng.normal(0.7 * top, 0.08 * top, shape)
    pick = rng.random(shape) < 0.4
    return np.clip(np.where(pick, bright, dark), 0, top).astype(dtype)


OTSU_CASES = [
    ("random", (40, 30), np.uint8),
    ("bimodal", (24, 37), np.uint8),
    ("smooth", (33, 41), np.uint8),
    ("flat", (9, 11), np.uint8),
    ("single", (1, 1), np.uint8),
    ("narrow16", (20, 30), np.uint16),
    ("bimodal", (19, 26), np.uint16),
    ("flat", (7, 5), np.uint16),
]


def make_otsu_image(kind, shape, dtype, seed):
    if kind == "random":
        return random_image(shape, dtype, seed)
    if kind == "bimodal":
        return bimodal_image(shape, dtype, seed)
    if kind == "smooth":
        return smooth_image(shape, dtype, seed)
    if kind == "narrow16":
        return np.random.default_rng(seed).integers(0, 3000, shape, dtype=dtype)
    if kind == "single":
        return np.full(shape, 77, dtype=dtype)
    return np.full(shape, 200, dtype=dtype)  # flat


@pytest.mark.parametrize(("kind", "shape", "dtype"), OTSU_CASES)
def test_otsu_is_identical_to_cpu(kind, shape, dtype):
    img = make_otsu_image(kind, shape, dtype, seed=OTSU_CASES.index((kind, shape, dtype)))
    got = kernels.otsu_threshold(img, backend="cuda")
    assert isinstance(got, int)
    assert got == cpu_otsu_threshold(img)
    if dtype == np.uint8:
        opencv_level, _ = cv2.threshold(img, 0, 255, cv2.THRESH_BINARY | cv2.THRESH_OTSU)
        assert got == int(opencv_level)


def test_otsu_of_a_device_array():
    img = bimodal_image((21, 34), np.uint8, seed=4)
    assert gpu_otsu_threshold(cuda.to_device(img)) == cpu_otsu_threshold(img)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16], ids=["u8", "u16"])
@pytest.mark.parametrize("value", [-5, -0.5, 0, 99.7, 254.9, 255, 65534.5, 65535, 1e12])
def test_threshold_equals_cpu(dtype, value):
    img = random_image((13, 29), dtype, seed=2)
    img[0, :4] = [0, 255, 65535 if dtype == np.uint16 else 254, 100]
    got = kernels.threshold(img, value, backend="cuda")
    assert isinstance(got, np.ndarray) and got.dtype == np.uint8
    np.testing.assert_array_equal(got, cpu_threshold(img, value))


def test_threshold_device_array_in_gives_device_array_out():
    img = random_image((17, 23), np.uint16, seed=6)
    out = kernels.threshold(cuda.to_device(img), 30000, backend="cuda")
    assert cuda_device.is_device_array(out)
    np.testing.assert_array_equal(out.copy_to_host(), cpu_threshold(img, 30000))


def test_threshold_bad_inputs():
    with pytest.raises(ValueError, match="value"):
        gpu_threshold(np.zeros((4, 4), np.uint8), float("nan"))
    with pytest.raises(ValueError, match="uint8 or uint16"):
        gpu_otsu_threshold(np.zeros((4, 4), np.int16))
    with pytest.raises(ValueError, match="empty"):
        gpu_threshold(cuda.to_device(np.zeros((0, 4), np.uint8)), 1)


def test_frame_stays_on_the_device_through_the_preprocess_chain():
    """Upload once, CLAHE -> Otsu -> threshold on device arrays, download only the mask."""
    host = bimodal_image((22, 26), np.uint8, seed=9)
    frame = cuda.to_device(host)
    enhanced = kernels.clahe(frame, clip_limit=2.0, tile_grid=(1, 2), backend="auto")
    level = kernels.otsu_threshold(enhanced, backend="auto")
    mask = kernels.threshold(enhanced, level, backend="auto")
    assert cuda_device.is_device_array(enhanced) and cuda_device.is_device_array(mask)
    enhanced_host = enhanced.copy_to_host()
    assert level == cpu_otsu_threshold(enhanced_host)
    np.testing.assert_array_equal(mask.copy_to_host(), cpu_threshold(enhanced_host, level))


def test_one_stream_per_thread():
    streams = {}

    def record(name):
        streams[name] = (cuda_device.thread_stream(), cuda_device.thread_stream())

    workers = [threading.Thread(target=record, args=(name,)) for name in ("a", "b")]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    record("main")
    for first, second in streams.values():
        assert first is second
    assert len({id(first) for first, _ in streams.values()}) == 3


@pytest.mark.skipif(cuda_device.is_simulator(), reason="the simulator cannot launch kernels from two threads at once")
def test_threads_run_concurrently_with_correct_results():
    images = [bimodal_image((96, 128), np.uint8, seed=s) for s in range(4)]
    expected = [(gpu_clahe(img, 2.0, (4, 4)), cpu_otsu_threshold(img)) for img in images]
    failures = []

    def work(index):
        for _ in range(20):
            img = images[index]
            if not np.array_equal(gpu_clahe(img, 2.0, (4, 4)), expected[index][0]):
                failures.append(("clahe", index))
            if gpu_otsu_threshold(img) != expected[index][1]:
                failures.append(("otsu", index))

    workers = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert failures == []


def test_docstring_examples():
    result = doctest.testmod(gpu_threshold_module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
