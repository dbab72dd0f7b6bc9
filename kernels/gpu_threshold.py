"""Binary threshold and Otsu's threshold on a CUDA GPU (numba.cuda), twins of the CPU kernels.

Kernels and budgets (N = pixels):

* ``gpu_threshold``: 1 launch, one thread per column and ROWS_PER_THREAD rows; reads N
  pixels, writes N bytes (uint8 0/1 mask). The level is clamped on the host, so "all
  ones" / "all zeros" cases need no special path.
* ``gpu_otsu_threshold``: a memset and 1 launch build the histogram on the device, then the
  histogram (256 or 65536 int32: 1 KiB or 256 KiB) is copied back and **Otsu's search runs
  on the host**, with the CPU kernel's own compiled scan (``kernels.otsu``), so the
  threshold is identical by construction: same integer histogram, same float64 operations
  in the same order. A device-side search would risk FMA contraction changing the argmax
  and saves little: the caller needs the threshold on the host anyway.
  8-bit: per-block shared histograms (HIST_COPIES x 256 int32 = 4 KiB), folded into the
  global one with one atomic per non-empty bin per block, at most OTSU_MAX_BLOCKS blocks
  (grid-stride) so the 256 global counters see few same-address atomics. 16-bit: 65536
  bins do not fit in shared memory, so pixels add straight into the global histogram (L2
  atomics). Reads N pixels once.
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda

from kernels import cuda_device, gpu_config
from kernels._validate import check_real
from kernels.gpu_config import HIST_COPIES
from kernels.otsu import _otsu_from_histogram

# Shared-memory shapes must be compile-time constants: a module global is one.
_SHARED_COUNTERS = HIST_COPIES * 256


@cuda.jit
def _binary(img, level, out):
    """out = img > level, as uint8 0/1."""
    height = img.shape[0]
    width = img.shape[1]
    x = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    if x >= width:
        return
    row_step = cuda.gridDim.y * cuda.blockDim.y
    for y in range(cuda.blockIdx.y * cuda.blockDim.y + cuda.threadIdx.y, height, row_step):
        out[y, x] = 1 if img[y, x] > level else 0


@cuda.jit
def _histogram_u8(img, hist):
    """Grid-stride 256-bin histogram: shared copies per warp group, then one atomic per bin per block."""
    height = img.shape[0]
    width = img.shape[1]
    tid = cuda.threadIdx.x
    n_threads = cuda.blockDim.x
    counts = cuda.shared.array(_SHARED_COUNTERS, np.int32)
    for i in range(tid, _SHARED_COUNTERS, n_threads):
        counts[i] = 0
    cuda.syncthreads()
    lane_base = ((tid // 32) % HIST_COPIES) * 256
    index = cuda.blockIdx.x * n_threads + tid
    stride = cuda.gridDim.x * n_threads
    row = index // width
    col = index - row * width
    row_step = stride // width
    col_step = stride - row_step * width
    while row < height:
        cuda.atomic.add(counts, lane_base + int(img[row, col]), 1)
        row += row_step
        col += col_step
        if col >= width:
            col -= width
            row += 1
    cuda.syncthreads()
    for i in range(tid, 256, n_threads):
        total = 0
        for copy in range(HIST_COPIES):
            total += counts[copy * 256 + i]
        if total > 0:
            cuda.atomic.add(hist, i, total)


@cuda.jit
def _histogram_u16(img, hist):
    """Grid-stride 65536-bin histogram, global atomics per pixel."""
    height = img.shape[0]
    width = img.shape[1]
    index = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    stride = cuda.gridDim.x * cuda.blockDim.x
    row = index // width
    col = index - row * width
    row_step = stride // width
    col_step = stride - row_step * width
    while row < height:
        cuda.atomic.add(hist, img[row, col], 1)
        row += row_step
        col += col_step
        if col >= width:
            col -= width
            row += 1


def _pixel_grid(height: int, width: int) -> tuple[tuple[int, int], tuple[int, int]]:
    block_x, block_y = gpu_config.PIXEL_BLOCK
    grid = (
        cuda_device.blocks_for(width, block_x, 2**31 - 1),
        cuda_device.blocks_for(height, block_y * gpu_config.ROWS_PER_THREAD),
    )
    return grid, (block_x, block_y)


def gpu_threshold(img, value):
    """Binary mask on the GPU: 1 where ``img > value``, else 0 (uint8); ``kernels.threshold(..., backend="cuda")``.

    Same rule as the CPU kernel (``img > floor(value)``). A numpy ``img`` gives a numpy
    mask; a device array (``__cuda_array_interface__``) gives a device mask.

    >>> import numpy as np
    >>> gpu_threshold(np.array([[0, 99, 100, 255]], dtype=np.uint8), 99).tolist()
    [[0, 0, 1, 1]]
    """
    value = check_real(value, "value", "threshold")
    dev, on_device = cuda_device.device_image(img, "threshold")
    height, width = dev.shape
    max_value = 255 if np.dtype(dev.dtype) == np.uint8 else 65535
    # Clamp on the host: -1 gives all ones, max_value all zeros, and no int overflow.
    level = min(max(math.floor(value), -1), max_value)
    if on_device:
        out = cuda_device.device_output((height, width), np.uint8)
    else:
        out = cuda_device.workspace("threshold_out", (height, width), np.uint8)
    grid, block = _pixel_grid(height, width)
    _binary[grid, block, cuda_device.thread_stream()](dev, level, out)
    return out if on_device else cuda_device.to_host(out)


def gpu_otsu_threshold(img):
    """Otsu's threshold of a uint8/uint16 image from a device histogram; ``kernels.otsu_threshold(..., backend="cuda")``.

    Identical to ``kernels.otsu_threshold`` (and OpenCV's THRESH_OTSU). Accepts numpy or
    device arrays; always returns a Python int (the histogram comes back to the host).

    >>> import numpy as np
    >>> gpu_otsu_threshold(np.array([[10, 10, 200, 200]], dtype=np.uint8))
    10
    """
    dev, _ = cuda_device.device_image(img, "otsu_threshold")
    height, width = dev.shape
    n_pixels = height * width
    eight_bit = np.dtype(dev.dtype) == np.uint8
    n_bins = 256 if eight_bit else 65536
    threads = gpu_config.THREADS_PER_BLOCK
    blocks = cuda_device.blocks_for(
        n_pixels, threads * gpu_config.OTSU_PIXELS_PER_THREAD, gpu_config.OTSU_MAX_BLOCKS
    )
    stream = cuda_device.thread_stream()
    hist = cuda_device.workspace("otsu_hist", (n_bins,), np.int32)
    cuda_device.zero_fill(hist)
    kernel = _histogram_u8 if eight_bit else _histogram_u16
    kernel[blocks, threads, stream](dev, hist)
    counts = cuda_device.to_host(hist).astype(np.int64)
    return int(_otsu_from_histogram(counts, n_pixels))
