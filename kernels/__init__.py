"""Image kernels for inspectd: CLAHE and thresholds, numba on the CPU and on CUDA GPUs,
and the guided U-Net's fused upsample + argmax (``guided.py``, ``gpu_guided.py``).

Pure functions over arrays: no config or I/O, and no import of ``inspectd``. The CPU
kernels (``clahe.py``, ``otsu.py``, ``threshold.py``) each validate their input, allocate
the output and call private ``@njit(parallel=True, nogil=True, cache=True)`` cores that
release the GIL. Their CUDA twins (``gpu_clahe.py``, ``gpu_threshold.py``; numba.cuda) take
the same arguments and also accept device arrays (``__cuda_array_interface__``: CuPy,
PyTorch, numba), returning device arrays then, so a frame can stay on the GPU between
stages. The functions below pick one per call by ``backend`` (see ``kernels.backend``:
``"auto"`` uses a GPU only when one is really usable); importing ``kernels`` never imports
``numba.cuda``, so it works the same on a CPU-only box.
"""

from kernels.backend import BACKENDS, CudaUnavailableError, select_backend
from kernels.clahe import clahe as _cpu_clahe
from kernels.cuda_device import cuda_usable, is_device_array
from kernels.guided import guided_argmax as _cpu_guided_argmax
from kernels.min_error import minimum_error_threshold as _cpu_minimum_error_threshold
from kernels.otsu import grey_histogram
from kernels.otsu import otsu_threshold as _cpu_otsu_threshold
from kernels.threshold import adaptive_threshold as _cpu_adaptive_threshold
from kernels.threshold import threshold as _cpu_threshold
from kernels.warmup import warm_up as _cpu_warm_up

__all__ = [
    "BACKENDS",
    "CudaUnavailableError",
    "adaptive_threshold",
    "clahe",
    "cuda_usable",
    "grey_histogram",
    "guided_argmax",
    "is_device_array",
    "minimum_error_threshold",
    "otsu_threshold",
    "threshold",
    "to_device",
    "to_host",
    "warm_up",
]


def clahe(img, clip_limit=2.0, tile_grid=(8, 8), backend="auto", keep_if=None):
    """Contrast-limited adaptive histogram equalisation of a 2-D uint8 or uint16 image.

    Matches ``cv2.createCLAHE(clipLimit=clip_limit, tileGridSize=(cols, rows)).apply(img)``
    within one grey level on either backend. ``tile_grid`` is ``(rows, cols)`` of tiles
    (numpy order) while OpenCV's ``tileGridSize`` is ``(cols, rows)``. ``clip_limit=0``
    disables clipping. Device-array input (CUDA backend) gives a device-array result.
    ``keep_if``: a test of the image's grey histogram; True returns the image itself
    (host images only; the CPU backend reads the histogram off its tile histograms).

    >>> import numpy as np, kernels
    >>> img = np.random.default_rng(0).integers(0, 256, (64, 96), dtype=np.uint8)
    >>> kernels.clahe(img, clip_limit=2.0, tile_grid=(4, 6), backend="cpu").shape
    (64, 96)
    """
    on_device = is_device_array(img)
    if keep_if is not None and on_device:
        msg = "clahe: keep_if needs a host image (test the histogram before the upload)"
        raise ValueError(msg)
    if select_backend(backend, "clahe", on_device=on_device) == "cuda":
        from kernels.gpu_clahe import gpu_clahe

        if keep_if is not None and keep_if(grey_histogram(img)):
            return img
        return gpu_clahe(img, clip_limit, tile_grid)
    return _cpu_clahe(img, clip_limit, tile_grid, backend="cpu", keep_if=keep_if)


def otsu_threshold(img, backend="auto"):
    """Otsu's threshold of a 2-D uint8/uint16 image as an int, identical to OpenCV's THRESH_OTSU.

    The CUDA backend builds the histogram on the GPU and runs the CPU kernel's search on
    it, so both backends return the same integer.

    >>> import numpy as np, kernels
    >>> kernels.otsu_threshold(np.array([[10, 10, 200, 200]], dtype=np.uint8))
    10
    """
    if select_backend(backend, "otsu_threshold", on_device=is_device_array(img)) == "cuda":
        from kernels.gpu_threshold import gpu_otsu_threshold

        return gpu_otsu_threshold(img)
    return _cpu_otsu_threshold(img, backend="cpu")


def minimum_error_threshold(img, backend="auto"):
    """Robust Kittler-Illingworth minimum-error threshold of a 2-D uint8/uint16 image, as an int (CPU).

    Pixels above it are the bright class. Unlike Otsu it lets the two classes have their
    own spread, so a narrow bright population beside a broad dark one is not cut into
    (see ``kernels.min_error``). A device-array frame is copied to the host first: the
    search itself is a scan over the histogram.

    >>> import numpy as np, kernels
    >>> kernels.minimum_error_threshold(np.array([[10, 10, 200, 200]], dtype=np.uint8))
    10
    """
    select_backend(backend, "minimum_error_threshold", has_cuda_kernel=False)
    return _cpu_minimum_error_threshold(to_host(img), backend="cpu")


def threshold(img, value, backend="auto"):
    """Binary mask: 1 where ``img > value``, else 0 (uint8), as OpenCV's THRESH_BINARY.

    >>> import numpy as np, kernels
    >>> kernels.threshold(np.array([[0, 99, 100, 255]], dtype=np.uint8), 99).tolist()
    [[0, 0, 1, 1]]
    """
    if select_backend(backend, "threshold", on_device=is_device_array(img)) == "cuda":
        from kernels.gpu_threshold import gpu_threshold

        return gpu_threshold(img, value)
    return _cpu_threshold(img, value, backend="cpu")


def adaptive_threshold(img, block_size, offset, backend="auto"):
    """Local-mean threshold (``cv2.adaptiveThreshold`` with ADAPTIVE_THRESH_MEAN_C); CPU only.

    ``backend="cuda"`` raises CudaUnavailableError: there is no CUDA twin yet.

    >>> import numpy as np, kernels
    >>> img = np.zeros((5, 5), dtype=np.uint8); img[2, 2] = 200
    >>> int(kernels.adaptive_threshold(img, 3, 0).sum())
    1
    """
    select_backend(backend, "adaptive_threshold", has_cuda_kernel=False)
    return _cpu_adaptive_threshold(img, block_size, offset, backend="cpu")


def warm_up(backend="auto"):
    """Compile every kernel the backend will run, before the first frame (JIT off the watchdog clock).

    Always warms the CPU kernels (``auto`` still sends ``adaptive_threshold`` there); when
    ``backend`` resolves to CUDA, also compiles and runs the CUDA kernels once on tiny
    uint8 and uint16 frames (about a second per kernel on a cold start).

    >>> import kernels
    >>> kernels.warm_up(backend="cpu")
    """
    _cpu_warm_up()
    if select_backend(backend, "warm_up") != "cuda":
        return
    import numpy as np

    from kernels.gpu_clahe import gpu_clahe
    from kernels.gpu_guided import gpu_guided_argmax
    from kernels.gpu_threshold import gpu_otsu_threshold, gpu_threshold

    for dtype in (np.uint8, np.uint16):
        img = (np.arange(19 * 23) % 251).astype(dtype).reshape(19, 23)
        gpu_clahe(img, clip_limit=2.0, tile_grid=(2, 3))
        gpu_otsu_threshold(img)
        gpu_threshold(img, 100)
        gpu_guided_argmax(np.zeros((6, 5, 6), np.float32), img, 4)


def to_device(img):
    """Upload a 2-D uint8/uint16 frame once (staged through page-locked memory): a CUDA device array.

    The stages after it (``clahe``, ``otsu_threshold``, ``threshold``, ``guided_argmax``,
    the U-Net engine's ``segment_device``) then read it where it is. Raises
    CudaUnavailableError, naming what is missing, where no GPU (or simulator) is usable.
    """
    select_backend("cuda", "to_device")
    from kernels.cuda_device import upload

    return upload(img)


def to_host(dev):
    """Copy a device array back to numpy, waiting for the work queued before it on this thread.

    >>> import numpy as np, kernels
    >>> kernels.to_host(np.arange(3)).tolist()  # numpy passes through
    [0, 1, 2]
    """
    if not is_device_array(dev):
        return dev
    from kernels.cuda_device import import_device_array
    from kernels.cuda_device import to_host as _download

    return _download(import_device_array(dev))


def guided_argmax(affine, image, stride, mean=0.5, std=0.25, backend="auto"):
    """The guided U-Net's class mask: argmax_c of bilinear(a_c) + bilinear(b_c) * guide (see ``kernels.guided``).

    ``affine``: float32 ``[2 * classes, h, w]`` coarse pairs; ``image``: the enhanced uint8/uint16
    frame (the guide is ``(image / max_level - mean) / std``). Device-array input (CUDA
    backend) gives a device-array mask.

    >>> import numpy as np, kernels
    >>> pairs = np.zeros((6, 1, 1), np.float32); pairs[5] = 1.0
    >>> kernels.guided_argmax(pairs, np.array([[0, 255]], np.uint8), 2, backend="cpu").tolist()
    [[0, 2]]
    """
    on_device = is_device_array(image) or is_device_array(affine)
    if select_backend(backend, "guided_argmax", on_device=on_device) == "cuda":
        from kernels.gpu_guided import gpu_guided_argmax

        return gpu_guided_argmax(affine, image, stride, mean, std)
    return _cpu_guided_argmax(affine, image, stride, mean, std)
