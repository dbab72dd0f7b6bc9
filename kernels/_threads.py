"""Run small images on the calling thread only.

A numba parallel region wakes every pool thread and waits for all of them at its end; on
a busy machine a pool thread that is not scheduled promptly stalls the caller for up to a
scheduler time slice (milliseconds), far more than counting a small image costs. Below
``PARALLEL_MIN_PIXELS`` the wrappers therefore drop to one thread. ``numba.set_num_threads``
is thread-local, so this does not affect kernels running concurrently in other threads.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numba

from kernels.config import PARALLEL_MIN_PIXELS


@contextmanager
def threads_for(n_pixels: int, min_pixels: int = PARALLEL_MIN_PIXELS) -> Iterator[int]:
    """Yield the thread count to plan work for; one thread for images under ``min_pixels``."""
    threads = numba.get_num_threads()
    if n_pixels >= min_pixels or threads == 1:
        yield threads
        return
    numba.set_num_threads(1)
    try:
        yield 1
    finally:
        numba.set_num_threads(threads)
