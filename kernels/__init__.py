"""Numba CPU image kernels for inspectd: CLAHE and thresholds.

Pure functions over numpy arrays: no config, logging or I/O, and no import of ``inspectd``.
Each public function validates its input, allocates the output and calls a private
``@njit(parallel=True, nogil=True, cache=True)`` core, so calls from several threads overlap
(the cores release the GIL). ``backend="cuda"`` is reserved for the GPU twins of a later
issue and raises :class:`CudaUnavailableError` until they exist; ``"auto"`` and ``"cpu"``
run on the CPU.
"""

from kernels.backend import BACKENDS, CudaUnavailableError
from kernels.clahe import clahe
from kernels.otsu import otsu_threshold
from kernels.threshold import adaptive_threshold, threshold
from kernels.warmup import warm_up

__all__ = [
    "BACKENDS",
    "CudaUnavailableError",
    "adaptive_threshold",
    "clahe",
    "otsu_threshold",
    "threshold",
    "warm_up",
]
