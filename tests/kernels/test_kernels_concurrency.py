"""Kernels called from two Python threads at once give the same results as serial calls.

The daemon runs pipeline stages in threads and the kernels release the GIL, so two
parallel numba regions can be live at once. This needs a thread-safe numba threading layer
(tbb or omp); the daemon picks one. This test deliberately does not set
``numba.config.THREADING_LAYER``: it checks correctness under whatever layer is active and
prints it (see the ``-rA`` / ``-s`` output).
"""

from __future__ import annotations

import threading

import numba
import numpy as np

import kernels
from tests.kernels.kernel_images import make_image


def test_two_threads_at_once_give_serial_results():
    images = [make_image("smooth", (240, 320), np.uint8, seed=s) for s in range(2)]
    images += [make_image("random", (300, 263), np.uint16, seed=s) for s in range(2)]

    def run_all(img):
        return (
            kernels.clahe(img, clip_limit=2.0, tile_grid=(8, 8)),
            kernels.otsu_threshold(img),
            kernels.threshold(img, int(img.mean())),
            kernels.adaptive_threshold(img, 7, 1),
        )

    expected = [run_all(img) for img in images]
    rounds = 10
    failures = []
    start = threading.Barrier(2)

    def worker(order):
        start.wait()
        for _ in range(rounds):
            for i in order:
                got = run_all(images[i])
                want = expected[i]
                same = all(np.array_equal(g, w) for g, w in zip(got, want, strict=True))
                if not same:
                    failures.append(i)

    threads = [threading.Thread(target=worker, args=(order,)) for order in ([0, 1, 2, 3], [3, 2, 1, 0])]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not any(thread.is_alive() for thread in threads)
    print(f"numba threading layer active: {numba.threading_layer()}")
    assert failures == []
