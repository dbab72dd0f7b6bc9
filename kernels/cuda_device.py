"""The CUDA device: is it really usable here, and moving frames on and off it.

``cuda_usable()`` answers ``(ok, reason)`` once per process, the way cuCIM's
``algorithm="auto"`` asks before it picks a GPU path: a driver that loads, a GPU it sees,
NVVM/libdevice to compile kernels (the "runtime" numba needs), and a test kernel that runs
and returns the right numbers. ``numba.cuda.is_available()`` alone says yes on machines
where the first real kernel then fails (no NVVM, a driver too old for the toolkit).
numba's CUDA simulator counts as usable only when ``NUMBA_ENABLE_CUDASIM=1`` was set before
numba was imported.

Importing this module never imports ``numba.cuda`` (half a second, and it must not fail on
a CPU-only box); the functions import it when they need it.

Frames and streams: every calling thread gets its own CUDA stream (``thread_stream``), so
pipeline workers queue work independently; device workspaces and page-locked staging
buffers are cached per thread and per shape, so a steady stream of equally sized frames
allocates only each call's output.
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading
from collections import OrderedDict

import numpy as np

from kernels import gpu_config
from kernels._validate import SUPPORTED_DTYPES, check_image

_probe_lock = threading.Lock()
_probe_result: tuple[bool, str] | None = None


def _restore_numpy_names_numba_cuda_uses() -> None:
    """Give NumPy back ``row_stack`` (an alias of ``vstack``) where it was removed.

    numba-cuda 0.30.4 registers ``np.row_stack`` while it loads its typing registries, at
    the first kernel compile; NumPy 2.5 dropped that alias (deprecated since 2.0), so on
    such a machine every CUDA kernel failed to compile and ``cuda_usable()`` reported the
    GPU unusable. Setting the alias back (the same function, under its old name) is all
    numba-cuda needs; it is done here because every CUDA path imports this module first.
    """
    if not hasattr(np, "row_stack"):
        np.row_stack = np.vstack


_restore_numpy_names_numba_cuda_uses()


def is_simulator() -> bool:
    """True when numba runs CUDA kernels in its CPU simulator (``NUMBA_ENABLE_CUDASIM=1``).

    >>> isinstance(is_simulator(), bool)
    True
    """
    from numba.core import config

    return bool(config.ENABLE_CUDASIM)


def cuda_usable() -> tuple[bool, str]:
    """Whether the CUDA kernels can run here, and why (or why not); probed once per process.

    ``reason`` names the device when ``ok``, else what is missing, phrased to follow
    "needs a usable CUDA GPU, but ...".

    >>> ok, reason = cuda_usable()
    >>> isinstance(ok, bool) and bool(reason)
    True
    """
    global _probe_result
    with _probe_lock:
        if _probe_result is None:
            _probe_result = _probe()
        return _probe_result


def _probe() -> tuple[bool, str]:
    if is_simulator():
        try:
            _test_launch()
        except Exception as exc:  # a broken simulator install
            return False, f"numba's CUDA simulator failed a test kernel ({type(exc).__name__}: {exc})"
        return True, (
            "numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1): correct results, no GPU, "
            "orders of magnitude slower than the CPU kernels"
        )
    late_simulator = ""
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        late_simulator = (
            " (NUMBA_ENABLE_CUDASIM=1 was set after numba was imported, so the simulator is "
            "off: set it before Python starts)"
        )
    missing_driver = _driver_library_missing()
    if missing_driver:
        return False, missing_driver + late_simulator
    try:
        from numba import cuda
    except Exception as exc:  # numba built or installed without its CUDA target
        return False, f"numba.cuda cannot be imported ({type(exc).__name__}: {exc})"
    try:
        if not cuda.is_available():
            error = cuda.cuda_error()
            if error:
                detail = " ".join(str(error).split())
                return False, f"numba cannot initialise the CUDA driver ({detail}){late_simulator}"
            return False, f"the CUDA driver loads but reports no GPU{late_simulator}"
        from numba.cuda.cudadrv import nvvm

        if not nvvm.is_available():
            return False, (
                "the CUDA driver and a GPU are present but numba finds no NVVM/libdevice "
                "(CUDA toolkit) to compile kernels: install the CUDA toolkit or the "
                "nvidia-cuda-nvcc wheel, or set CUDA_HOME"
            )
        _test_launch()
        device = cuda.get_current_device()
    except Exception as exc:  # driver/toolkit mismatch, out of memory, busy GPU, ...
        return False, f"a CUDA test kernel failed to compile or run ({type(exc).__name__}: {exc})"
    name = device.name.decode() if isinstance(device.name, bytes) else str(device.name)
    major, minor = device.compute_capability
    return True, f"{name} (compute capability {major}.{minor})"


def _driver_library_missing() -> str:
    """A reason when the CUDA driver library cannot be dlopen'ed, else ''.

    A cheap pre-check on Linux (about a millisecond) so a CPU-only box never pays for
    importing numba.cuda; it loads the same library numba would, unless NUMBA_CUDA_DRIVER
    names another one.
    """
    if not sys.platform.startswith("linux") or os.environ.get("NUMBA_CUDA_DRIVER"):
        return ""
    error = None
    for name in ("libcuda.so.1", "libcuda.so"):
        try:
            ctypes.CDLL(name)
        except OSError as exc:
            error = error or exc
            continue
        return ""
    return f"no CUDA driver is installed (libcuda.so.1 cannot be loaded: {error})"


def _test_launch() -> None:
    """Run the real binary-threshold kernel on a tiny frame; raise if the mask is wrong.

    Using a production kernel (not a toy) checks what ``auto`` is about to rely on: that
    numba can compile our kernels for this GPU, launch them on a stream, and copy back.
    """
    from kernels.gpu_threshold import gpu_threshold

    frame = np.arange(80, dtype=np.uint8).reshape(2, 40)
    mask = gpu_threshold(frame, 39.5)
    if not np.array_equal(mask, (frame > 39).astype(np.uint8)):
        msg = f"the test kernel returned a wrong mask {mask.tolist()}"
        raise RuntimeError(msg)


def is_device_array(obj: object) -> bool:
    """True for GPU arrays: anything with ``__cuda_array_interface__`` (CuPy, PyTorch, numba) or a numba (simulator) device array.

    >>> import numpy as np
    >>> is_device_array(np.zeros(3))
    False
    """
    return hasattr(obj, "__cuda_array_interface__") or bool(getattr(obj, "__cuda_ndarray__", False))


class _ThreadResources(threading.local):
    """One stream and one buffer cache per calling thread (pipeline worker)."""

    def __init__(self) -> None:
        self.stream = None
        self.buffers: OrderedDict = OrderedDict()


_thread = _ThreadResources()


def thread_stream():
    """This thread's CUDA stream, created on first use; every kernel call of the thread runs on it.

    Work from different threads therefore overlaps on the GPU, and within a thread the
    stages of one frame are ordered without host synchronisation.
    """
    if _thread.stream is None:
        from numba import cuda

        _thread.stream = cuda.stream()
    return _thread.stream


def _cached(key: tuple, make):
    buffers = _thread.buffers
    buffer = buffers.get(key)
    if buffer is None:
        buffer = make()
        buffers[key] = buffer
        if len(buffers) > gpu_config.WORKSPACE_CACHE_ENTRIES:
            # Work queued earlier on this thread's stream may still use the buffer we drop.
            if _thread.stream is not None:
                _thread.stream.synchronize()
            while len(buffers) > gpu_config.WORKSPACE_CACHE_ENTRIES:
                buffers.popitem(last=False)
    else:
        buffers.move_to_end(key)
    return buffer


def workspace(name: str, shape: tuple, dtype) -> object:
    """A device array cached for this thread by (name, shape, dtype); contents are undefined.

    Safe to reuse across calls because all of a thread's work is ordered on its stream.
    """
    from numba import cuda

    dtype = np.dtype(dtype)
    return _cached(("device", name, tuple(shape), dtype), lambda: cuda.device_array(shape, dtype=dtype))


def _staging(name: str, shape: tuple, dtype) -> np.ndarray:
    from numba import cuda

    dtype = np.dtype(dtype)
    return _cached(("pinned", name, tuple(shape), dtype), lambda: cuda.pinned_array(shape, dtype=dtype))


def pinned_empty(shape: tuple, dtype) -> np.ndarray:
    """A page-locked numpy array: decode frames into it and the upload is a direct async DMA.

    Page-locked memory is a scarce OS resource (it cannot be swapped): allocate a few
    frame buffers at start-up and reuse them, never one per frame.
    """
    from numba import cuda

    return cuda.pinned_array(shape, dtype=np.dtype(dtype))


def _is_page_locked(host: np.ndarray) -> bool:
    """True for arrays backed by numba's page-locked allocations (``pinned_empty``)."""
    base = host
    while base is not None:
        if type(base).__name__ in ("PinnedMemory", "MappedMemory"):
            return True
        base = getattr(base, "base", None)
    return False


def device_output(shape: tuple, dtype) -> object:
    """A fresh device array on this thread's stream: what the kernels return to device callers."""
    from numba import cuda

    return cuda.device_array(shape, dtype=np.dtype(dtype), stream=thread_stream())


def zero_fill(array) -> None:
    """Set a device array to zero, asynchronously on this thread's stream (one memset)."""
    if is_simulator():
        array[...] = 0
        return
    from numba.cuda.cudadrv import driver

    driver.device_memset(array, 0, array.nbytes, stream=thread_stream())


def device_image(img: object, kernel_name: str) -> tuple[object, bool]:
    """``img`` as a 2-D uint8/uint16 device array, and whether it already was on the device.

    numpy arrays are validated as the CPU kernels validate them and uploaded into a cached
    per-thread buffer (staged through page-locked memory, see ``gpu_config.PINNED_STAGING``).
    Device arrays are used in place, strided views included. A numba array produced on
    another thread's stream, or a CuPy/PyTorch array whose ``__cuda_array_interface__``
    names another stream, is synchronised first, so its producer has finished writing it.
    """
    stream = thread_stream()
    if is_device_array(img):
        dev = _import_device_array(img, stream)
        _check_device_image(dev, kernel_name)
        return dev, True
    host = check_image(img, kernel_name)
    dev = workspace("input", host.shape, host.dtype)
    _copy_in(dev, host, stream)
    return dev, False


def upload(img: np.ndarray, kernel_name: str = "to_device") -> object:
    """A new device array holding a validated 2-D uint8/uint16 frame, queued on this thread's stream.

    Unlike the kernels' own uploads (into a per-thread buffer that the next call reuses), the
    result belongs to the caller: a frame uploaded once can feed several stages.
    """
    host = check_image(img, kernel_name)
    dev = device_output(host.shape, host.dtype)
    _copy_in(dev, host, thread_stream())
    return dev


def _copy_in(dev, host: np.ndarray, stream) -> None:
    source = host
    if gpu_config.PINNED_STAGING and not _is_page_locked(host):
        source = _staging("upload", host.shape, host.dtype)
        np.copyto(source, host)
    dev.copy_to_device(source, stream=stream)


def device_pointer(dev) -> int:
    """The device address of a numba device array's first element (what TensorRT and ONNX Runtime bind)."""
    return int(dev.__cuda_array_interface__["data"][0])


def import_device_array(obj):
    """Any device array (numba, CuPy, PyTorch) as a numba device array, its producer finished writing it."""
    return _import_device_array(obj, thread_stream())


def _import_device_array(obj, stream):
    if getattr(obj, "__cuda_ndarray__", False):  # a numba (or simulator) device array
        producer = getattr(obj, "stream", 0)
        if producer and producer is not stream:
            producer.synchronize()
        return obj
    from numba import cuda

    producer = obj.__cuda_array_interface__.get("stream")
    same_stream = producer is not None and not is_simulator() and producer == int(stream)
    return cuda.as_cuda_array(obj, sync=not same_stream)


def _check_device_image(dev, kernel_name: str) -> None:
    if len(dev.shape) != 2:
        msg = (
            f"{kernel_name}: expected a 2-D single-channel device image, got shape "
            f"{tuple(dev.shape)} (convert colour images to grey first)"
        )
        raise ValueError(msg)
    if dev.shape[0] * dev.shape[1] == 0:
        msg = f"{kernel_name}: the image is empty (shape {tuple(dev.shape)})"
        raise ValueError(msg)
    if np.dtype(dev.dtype) not in SUPPORTED_DTYPES or not np.dtype(dev.dtype).isnative:
        msg = f"{kernel_name}: expected dtype uint8 or uint16, got {dev.dtype}"
        raise ValueError(msg)


def to_host(dev) -> np.ndarray:
    """Copy a device result back (staged through page-locked memory) and wait for it."""
    stream = thread_stream()
    if gpu_config.PINNED_STAGING:
        staging = _staging("download", tuple(dev.shape), dev.dtype)
        dev.copy_to_host(staging, stream=stream)
        stream.synchronize()
        return staging.copy()
    host = dev.copy_to_host(stream=stream)
    stream.synchronize()
    return host


def blocks_for(n_items: int, per_block: int, limit: int = 65535) -> int:
    """ceil(n_items / per_block), at least 1 and at most ``limit`` (grid-stride loops cover the rest).

    >>> blocks_for(1000, 256), blocks_for(0, 256), blocks_for(10**9, 1)
    (4, 1, 65535)
    """
    return max(1, min(-(-n_items // per_block), limit))
