"""Which backend runs a kernel call: the numba CPU kernels or their CUDA twins.

* ``"cpu"``: always the CPU kernels.
* ``"cuda"``: the CUDA kernels (``gpu_clahe.py``, ``gpu_threshold.py``); where no GPU is
  usable (``cuda_device.cuda_usable()``: driver, GPU, NVVM, a test launch) this raises
  :class:`CudaUnavailableError` naming what is missing, never a silent CPU run, so a
  deployment that believes it runs on the GPU finds out at start-up. numba's CUDA
  simulator (``NUMBA_ENABLE_CUDASIM=1`` before Python starts) counts as usable.
* ``"auto"``: CUDA when a real GPU is usable, else the CPU; the choice is logged once per
  process. The simulator is never picked for numpy input (it is orders of magnitude slower
  than the CPU kernels), only when the input already is a device array. Kernels without a
  CUDA twin (``adaptive_threshold``) always run on the CPU under ``auto``.

Logging here is the one exception to "kernels do no I/O": the issue asks ``auto`` to say
once which way it went, and only the selector knows.
"""

from __future__ import annotations

import logging
import threading

from kernels import cuda_device

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "cpu", "cuda")

_logged_lock = threading.Lock()
_logged_choices: set[tuple[str, str]] = set()


class CudaUnavailableError(RuntimeError):
    """``backend="cuda"`` was asked for but no CUDA kernel can run here."""


def _check_name(backend: str, kernel_name: str) -> None:
    if backend not in BACKENDS:
        msg = f"{kernel_name}: backend must be one of {BACKENDS}, got {backend!r}"
        raise ValueError(msg)


def _unavailable_message(kernel_name: str, reason: str) -> str:
    return (
        f"{kernel_name}: backend='cuda' needs a usable CUDA GPU, but {reason}. "
        "Use backend='cpu' or 'auto' to run the numba CPU kernels (or set "
        "NUMBA_ENABLE_CUDASIM=1 before starting Python to run the CUDA kernels in numba's "
        "simulator, for tests)."
    )


def select_backend(backend: str, kernel_name: str, *, has_cuda_kernel: bool = True,
                   on_device: bool = False) -> str:
    """Return ``"cpu"`` or ``"cuda"`` for one call of ``kernel_name``, or raise.

    ``on_device``: the input already is a device array (``auto`` then uses the GPU even
    under the simulator). Raises ValueError for an unknown name and CudaUnavailableError
    for ``"cuda"`` where it cannot run.

    >>> select_backend("cpu", "clahe")
    'cpu'
    """
    _check_name(backend, kernel_name)
    if backend == "cpu":
        return "cpu"
    if backend == "cuda":
        if not has_cuda_kernel:
            msg = (
                f"{kernel_name}: backend='cuda' asked for, but {kernel_name} has no CUDA "
                "kernel (only clahe, otsu_threshold, threshold and guided_argmax do); use backend='cpu' or 'auto'."
            )
            raise CudaUnavailableError(msg)
        ok, reason = cuda_device.cuda_usable()
        if not ok:
            raise CudaUnavailableError(_unavailable_message(kernel_name, reason))
        return "cuda"
    if not has_cuda_kernel:
        return "cpu"
    ok, reason = cuda_device.cuda_usable()
    if ok and (on_device or not cuda_device.is_simulator()):
        choice, why = "cuda", f"CUDA kernels on {reason}"
    elif ok:
        choice, why = "cpu", "CPU kernels (the CUDA simulator is enabled, but auto never picks it for host arrays)"
    else:
        choice, why = "cpu", f"CPU kernels ({reason})"
    _log_once(choice, why)
    return choice


def _log_once(choice: str, why: str) -> None:
    key = (choice, why)
    with _logged_lock:
        if key in _logged_choices:
            return
        _logged_choices.add(key)
    logger.info("kernels backend auto: using the %s", why)


def resolve_backend(backend: str, kernel_name: str) -> str:
    """The CPU kernels' own check: ``"cpu"`` for ``"auto"``/``"cpu"``, an error for ``"cuda"``.

    The public ``kernels.clahe`` etc. pick the backend (``select_backend``) and call the
    CPU modules with ``backend="cpu"``; a direct call of a CPU module with ``"cuda"`` is
    refused rather than silently run on the CPU.

    >>> resolve_backend("auto", "clahe")
    'cpu'
    """
    _check_name(backend, kernel_name)
    if backend == "cuda":
        ok, reason = cuda_device.cuda_usable()
        if not ok:
            raise CudaUnavailableError(_unavailable_message(kernel_name, reason))
        msg = (
            f"{kernel_name}: this is the CPU implementation; for the CUDA one call "
            f"kernels.{kernel_name}(..., backend='cuda'), or pass backend='cpu' here."
        )
        raise CudaUnavailableError(msg)
    return "cpu"
