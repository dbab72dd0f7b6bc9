"""Backend selection shared by every public kernel.

``"auto"`` and ``"cpu"`` run the numba CPU kernels. ``"cuda"`` is reserved for the CUDA
twins (``gpu_clahe.py`` and friends, a later issue); until they exist, asking for it
explicitly raises :class:`CudaUnavailableError` instead of silently running on the CPU, so a
deployment that believes it runs on the GPU finds out at start-up.
"""

from __future__ import annotations

BACKENDS = ("auto", "cpu", "cuda")


class CudaUnavailableError(RuntimeError):
    """``backend="cuda"`` was asked for but no CUDA kernel can run here."""


def _cuda_device_summary() -> str:
    """Say whether numba sees a CUDA GPU and driver, without failing on a CPU-only box."""
    try:
        from numba import cuda
    except Exception as exc:  # numba built without CUDA support
        return f"numba.cuda cannot be imported ({exc})"
    try:
        if cuda.is_available():
            return "numba sees a CUDA GPU and driver"
    except Exception as exc:  # a broken driver install raises instead of returning False
        return f"the CUDA driver could not be queried ({exc})"
    return "numba finds no CUDA GPU or driver on this machine"


def resolve_backend(backend: str, kernel_name: str) -> str:
    """Return the backend that will run ``kernel_name``; today always ``"cpu"``.

    >>> resolve_backend("auto", "clahe")
    'cpu'
    """
    if backend not in BACKENDS:
        msg = f"{kernel_name}: backend must be one of {BACKENDS}, got {backend!r}"
        raise ValueError(msg)
    if backend == "cuda":
        msg = (
            f"{kernel_name}: backend='cuda' needs a CUDA GPU kernel, and this build of "
            f"`kernels` has no CUDA implementation of {kernel_name} yet (the GPU twins come "
            f"later); {_cuda_device_summary()}. Use backend='cpu' or 'auto'."
        )
        raise CudaUnavailableError(msg)
    return "cpu"
