"""CLAHE on a CUDA GPU (numba.cuda): the twin of ``kernels.clahe`` with the same arguments.

Same function as OpenCV's ``createCLAHE(clipLimit, tileGridSize).apply`` and the CPU kernel:
tile geometry with OpenCV's padding rule (reflect-101 when the size does not divide),
clip limit scaled by the tile area, clipped counts redistributed as ``clipped // bins`` per
bin plus one count every ``bins // residual`` bins, one LUT per tile rounded in float32, and
bilinear interpolation between tile centres in OpenCV's float32 arithmetic. The LUTs equal
the CPU kernel's exactly; interpolation rounds like OpenCV (the CPU kernel uses fixed
point), so outputs are within one grey level of both.

Kernels and budgets (N = pixels, T = tiles, B = bins: 256 or 65536):

* 8-bit, 3 launches: ``_tile_hist_u8`` (tiles x strips blocks; 4 KiB shared histograms,
  private per warp group; reads N bytes; writes T*strips*1 KiB of partial histograms, no
  global atomics), ``_tile_luts_u8`` (T blocks, 5 KiB shared; merges the strips, clip, scan, LUT;
  writes T*256 B), ``_interpolate`` (one thread per column and ROWS_PER_THREAD rows;
  reads N + writes N bytes, 4 LUT reads per pixel served by L1/L2: 8x8 LUTs are 16 KiB;
  the half-to-even rounding is one float32 ``cvt.rni``, no FP64: Python's ``round()``
  would widen to float64 first, and a Jetson's GPU has few FP64 units;
  ``bench/gpu_resources.py`` counts FP64 instructions per kernel).
* 16-bit, 4 launches: 65536 bins x 4 B = 256 KiB per tile do not fit in shared memory
  (48 KiB static per block), so each tile's histogram lives in global memory and the
  strips add into it with global atomics (L2, low contention: natural 16-bit images
  spread over many bins). A memset clears the T*256 KiB first; ``_tile_luts_u16`` clips and
  scans in place in global memory (one THREADS_PER_BLOCK block per tile, each thread a
  contiguous chunk of bins); LUTs take T*128 KiB (8x8: 8 MiB, L2-resident on H100-class).
* Device memory: the image (when uploaded), the output, and the histogram/LUT tables above,
  cached per thread and shape; refused beyond ``gpu_config.MAX_TABLE_BYTES``.
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda
from numba.cuda import libdevice

from kernels import _clahe_luts, cuda_device, gpu_config
from kernels._validate import check_clahe_arguments
from kernels.gpu_config import HIST_COPIES, MAX_THREADS_PER_BLOCK

# Shared-memory shapes must be compile-time constants: a module global is one.
_SHARED_COUNTERS = HIST_COPIES * 256

_HALF = np.float32(0.5)
_ONE = np.float32(1.0)


# The CPU kernel's index mapping, compiled once more as a device function.
reflect_101 = cuda.jit(device=True)(_clahe_luts.reflect_101.py_func)


if cuda_device.is_simulator():

    @cuda.jit(device=True)
    def _round_half_even(value):
        """Python's round(): the same half-to-even rounding; the simulator gives libdevice no body."""
        return round(value)

else:

    @cuda.jit(device=True)
    def _round_half_even(value):
        """float32 -> int32, ties to even (OpenCV's cvRound): one ``cvt.rni.s32.f32``."""
        return libdevice.float2int_rn(value)


@cuda.jit(device=True)
def _saturate(value, max_value):
    """Clamp to 0..max_value (OpenCV's saturate_cast after cvRound)."""
    if value < 0:
        return 0
    if value > max_value:
        return max_value
    return value


@cuda.jit
def _tile_hist_u8(img, tile_h, tile_w, partial):
    """Block (tx, ty, strip): 256-bin histogram of one strip of one padded tile.

    Threads walk the strip in row-major order (consecutive threads read consecutive
    pixels: coalesced) with an incremental (row, col) so no pixel needs a division.
    Shared memory: HIST_COPIES x 256 int32; warp w counts into copy w % HIST_COPIES.
    """
    height = img.shape[0]
    width = img.shape[1]
    n_strips = partial.shape[1]
    tx = cuda.blockIdx.x
    ty = cuda.blockIdx.y
    strip = cuda.blockIdx.z
    tid = cuda.threadIdx.x
    n_threads = cuda.blockDim.x
    counts = cuda.shared.array(_SHARED_COUNTERS, np.int32)
    for i in range(tid, _SHARED_COUNTERS, n_threads):
        counts[i] = 0
    cuda.syncthreads()

    lane_base = ((tid // 32) % HIST_COPIES) * 256
    y0 = ty * tile_h + strip * tile_h // n_strips
    rows = ty * tile_h + (strip + 1) * tile_h // n_strips - y0
    x0 = tx * tile_w
    row = tid // tile_w
    col = tid - row * tile_w
    row_step = n_threads // tile_w
    col_step = n_threads - row_step * tile_w
    while row < rows:
        y = y0 + row
        x = x0 + col
        if y >= height:
            y = reflect_101(y, height)
        if x >= width:
            x = reflect_101(x, width)
        cuda.atomic.add(counts, lane_base + int(img[y, x]), 1)
        row += row_step
        col += col_step
        if col >= tile_w:
            col -= tile_w
            row += 1
    cuda.syncthreads()

    tile = ty * cuda.gridDim.x + tx
    for i in range(tid, 256, n_threads):
        total = 0
        for copy in range(HIST_COPIES):
            total += counts[copy * 256 + i]
        partial[tile, strip, i] = total


@cuda.jit
def _tile_hist_u16(img, tile_h, tile_w, n_strips, hist):
    """Block (tx, ty, strip): add one strip of one padded tile into the tile's global 65536-bin histogram."""
    height = img.shape[0]
    width = img.shape[1]
    tx = cuda.blockIdx.x
    ty = cuda.blockIdx.y
    strip = cuda.blockIdx.z
    tid = cuda.threadIdx.x
    n_threads = cuda.blockDim.x
    tile = ty * cuda.gridDim.x + tx
    y0 = ty * tile_h + strip * tile_h // n_strips
    rows = ty * tile_h + (strip + 1) * tile_h // n_strips - y0
    x0 = tx * tile_w
    row = tid // tile_w
    col = tid - row * tile_w
    row_step = n_threads // tile_w
    col_step = n_threads - row_step * tile_w
    while row < rows:
        y = y0 + row
        x = x0 + col
        if y >= height:
            y = reflect_101(y, height)
        if x >= width:
            x = reflect_101(x, width)
        cuda.atomic.add(hist, (tile, img[y, x]), 1)
        row += row_step
        col += col_step
        if col >= tile_w:
            col -= tile_w
            row += 1


@cuda.jit(device=True)
def _clip_scan_lut(hist, n_bins, clip, lut_scale, max_value, lut, clipped_total, scan):
    """One block turns one tile histogram (shared or global, modified in place) into its LUT.

    OpenCV's integer steps: clip at ``clip``, add ``clipped // n_bins`` to every bin and one
    more to the first ``residual`` multiples of ``max(n_bins // residual, 1)``; prefix sum;
    ``lut = round_half_even(float32(cdf) * lut_scale)`` saturated. ``clipped_total[0]``
    must be 0 and visible to the block on entry.
    Scan: each thread sums a contiguous chunk of bins, a Hillis-Steele scan over the
    per-thread totals (log2(threads) steps in shared memory) gives each chunk its carry.
    """
    tid = cuda.threadIdx.x
    n_threads = cuda.blockDim.x
    if clip > 0:
        excess = 0
        for i in range(tid, n_bins, n_threads):
            over = hist[i] - clip
            if over > 0:
                excess += over
        cuda.atomic.add(clipped_total, 0, excess)
        cuda.syncthreads()
        clipped = clipped_total[0]
        batch = clipped // n_bins
        residual = clipped - batch * n_bins
        step = n_bins
        if residual > 0:
            step = n_bins // residual  # >= 1: residual < n_bins
        for i in range(tid, n_bins, n_threads):
            count = hist[i]
            if count > clip:
                count = clip
            count += batch
            if residual > 0 and i % step == 0 and i // step < residual:
                count += 1
            hist[i] = count
        cuda.syncthreads()

    chunk = (n_bins + n_threads - 1) // n_threads
    start = tid * chunk
    if start > n_bins:
        start = n_bins
    stop = start + chunk
    if stop > n_bins:
        stop = n_bins
    running = 0
    for i in range(start, stop):
        running += hist[i]
        hist[i] = running
    scan[tid] = running
    cuda.syncthreads()
    offset = 1
    while offset < n_threads:
        earlier = 0
        if tid >= offset:
            earlier = scan[tid - offset]
        cuda.syncthreads()
        scan[tid] += earlier
        cuda.syncthreads()
        offset *= 2
    carry = 0
    if tid > 0:
        carry = scan[tid - 1]
    for i in range(start, stop):
        lut[i] = _saturate(_round_half_even(np.float32(hist[i] + carry) * lut_scale), max_value)


@cuda.jit
def _tile_luts_u8(partial, clip, lut_scale, luts):
    """Block t: merge tile t's strip histograms into shared memory, then clip, scan, LUT."""
    tile = cuda.blockIdx.x
    tid = cuda.threadIdx.x
    n_threads = cuda.blockDim.x
    hist = cuda.shared.array(256, np.int32)
    scan = cuda.shared.array(MAX_THREADS_PER_BLOCK, np.int32)
    clipped_total = cuda.shared.array(1, np.int32)
    if tid == 0:
        clipped_total[0] = 0
    n_strips = partial.shape[1]
    for i in range(tid, 256, n_threads):
        total = 0
        for strip in range(n_strips):
            total += partial[tile, strip, i]
        hist[i] = total
    cuda.syncthreads()
    _clip_scan_lut(hist, 256, clip, lut_scale, 255, luts[tile], clipped_total, scan)


@cuda.jit
def _tile_luts_u16(hist, clip, lut_scale, luts):
    """Block t: clip, scan and LUT of tile t's 65536-bin global histogram, in place."""
    tile = cuda.blockIdx.x
    scan = cuda.shared.array(MAX_THREADS_PER_BLOCK, np.int32)
    clipped_total = cuda.shared.array(1, np.int32)
    if cuda.threadIdx.x == 0:
        clipped_total[0] = 0
    cuda.syncthreads()
    _clip_scan_lut(hist[tile], 65536, clip, lut_scale, 65535, luts[tile], clipped_total, scan)


@cuda.jit
def _interpolate(img, luts, tiles_y, tiles_x, inv_tile_h, inv_tile_w, max_value, out):
    """Bilinear interpolation between the four nearest tile LUTs, OpenCV's float32 formula.

    One thread per column (x from the grid) and a grid-stride walk over rows, so the
    column's tile pair and weights are computed once. Per pixel: 1 read, 4 LUT reads,
    6 multiplies, 1 write.
    """
    height = img.shape[0]
    width = img.shape[1]
    x = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    if x >= width:
        return
    txf = np.float32(x) * inv_tile_w - _HALF
    tx1 = int(math.floor(txf))
    xa = txf - np.float32(tx1)
    xa1 = _ONE - xa
    tx2 = tx1 + 1 if tx1 + 1 < tiles_x else tiles_x - 1
    tx1 = tx1 if tx1 > 0 else 0
    row_step = cuda.gridDim.y * cuda.blockDim.y
    for y in range(cuda.blockIdx.y * cuda.blockDim.y + cuda.threadIdx.y, height, row_step):
        tyf = np.float32(y) * inv_tile_h - _HALF
        ty1 = int(math.floor(tyf))
        ya = tyf - np.float32(ty1)
        ya1 = _ONE - ya
        ty2 = ty1 + 1 if ty1 + 1 < tiles_y else tiles_y - 1
        ty1 = ty1 if ty1 > 0 else 0
        value = img[y, x]
        top = ty1 * tiles_x
        bottom = ty2 * tiles_x
        res = (np.float32(luts[top + tx1, value]) * xa1 + np.float32(luts[top + tx2, value]) * xa) * ya1 + (
            np.float32(luts[bottom + tx1, value]) * xa1 + np.float32(luts[bottom + tx2, value]) * xa
        ) * ya
        out[y, x] = _saturate(_round_half_even(res), max_value)


def tile_geometry(height, width, tiles_y, tiles_x):
    """Tile size as OpenCV computes it (the CPU kernel's rule): both axes padded when either does not divide.

    >>> tile_geometry(64, 64, 8, 8), tile_geometry(67, 93, 8, 8)
    ((8, 8), (9, 12))
    """
    if height % tiles_y == 0 and width % tiles_x == 0:
        return height // tiles_y, width // tiles_x
    padded_h = height + tiles_y - height % tiles_y
    padded_w = width + tiles_x - width % tiles_x
    return padded_h // tiles_y, padded_w // tiles_x


def _threads_per_block() -> int:
    threads = gpu_config.THREADS_PER_BLOCK
    if not 1 <= threads <= MAX_THREADS_PER_BLOCK:
        msg = f"gpu_config.THREADS_PER_BLOCK must be 1..{MAX_THREADS_PER_BLOCK}, got {threads}"
        raise ValueError(msg)
    return threads


def gpu_clahe(img, clip_limit=2.0, tile_grid=(8, 8)):
    """CLAHE of a 2-D uint8/uint16 image on the GPU; ``kernels.clahe(..., backend="cuda")`` calls this.

    Same arguments and result as ``kernels.clahe`` (within one grey level; ``tile_grid`` is
    (rows, cols), OpenCV's ``tileGridSize`` is (cols, rows)). ``img`` may be a numpy array
    (uploaded; a numpy array is returned) or a device array with
    ``__cuda_array_interface__`` (CuPy, PyTorch, numba), in which case the result stays on
    the GPU as a numba device array on this thread's stream (``cupy.asarray(out)`` or
    ``torch.as_tensor(out, device="cuda")`` wrap it without a copy; both honour the stream
    it names). The first call per dtype and memory layout compiles the kernels (about a
    second each; ``kernels.warm_up`` does it at start-up for uploaded frames).

    >>> import numpy as np
    >>> img = np.random.default_rng(0).integers(0, 256, (24, 32), dtype=np.uint8)
    >>> out = gpu_clahe(img, clip_limit=2.0, tile_grid=(2, 2))
    >>> out.shape, out.dtype
    ((24, 32), dtype('uint8'))
    """
    clip_limit, tiles_y, tiles_x = check_clahe_arguments(clip_limit, tile_grid)
    dev, on_device = cuda_device.device_image(img, "clahe")
    dtype = np.dtype(dev.dtype)
    height, width = dev.shape
    n_bins = 256 if dtype == np.uint8 else 65536
    max_value = n_bins - 1

    tile_h, tile_w = tile_geometry(height, width, tiles_y, tiles_x)
    tile_area = tile_h * tile_w
    n_tiles = tiles_y * tiles_x
    lut_scale = np.float32(max_value) / np.float32(tile_area)
    clip = 0
    if clip_limit > 0.0:
        # OpenCV: static_cast<int>(clipLimit * tileArea / histSize), at least 1; capped at
        # the tile area (a larger clip never bites) so it fits an int32.
        clip = max(int(min(clip_limit * tile_area / n_bins, tile_area)), 1)

    threads = _threads_per_block()
    n_strips = max(1, min(tile_h, 65535, -(-tile_area // gpu_config.HIST_PIXELS_PER_BLOCK)))
    if n_bins == 256:
        table_bytes = n_tiles * n_strips * 256 * 4 + n_tiles * 256
    else:
        table_bytes = n_tiles * 65536 * (4 + 2)
    if table_bytes > gpu_config.MAX_TABLE_BYTES:
        msg = (
            f"clahe: a {tiles_y}x{tiles_x} tile grid on a {dtype} image needs "
            f"{table_bytes / 2**20:.0f} MiB of device histograms and LUTs "
            f"(limit {gpu_config.MAX_TABLE_BYTES / 2**20:.0f} MiB); use a coarser grid"
        )
        raise ValueError(msg)

    stream = cuda_device.thread_stream()
    luts = cuda_device.workspace("clahe_luts", (n_tiles, n_bins), dtype)
    hist_grid = (tiles_x, tiles_y, n_strips)
    if n_bins == 256:
        partial = cuda_device.workspace("clahe_hist_u8", (n_tiles, n_strips, 256), np.int32)
        _tile_hist_u8[hist_grid, threads, stream](dev, tile_h, tile_w, partial)
        _tile_luts_u8[n_tiles, threads, stream](partial, clip, lut_scale, luts)
    else:
        hist = cuda_device.workspace("clahe_hist_u16", (n_tiles, 65536), np.int32)
        cuda_device.zero_fill(hist)
        _tile_hist_u16[hist_grid, threads, stream](dev, tile_h, tile_w, n_strips, hist)
        _tile_luts_u16[n_tiles, threads, stream](hist, clip, lut_scale, luts)

    if on_device:
        out = cuda_device.device_output((height, width), dtype)
    else:
        out = cuda_device.workspace("clahe_out", (height, width), dtype)
    block_x, block_y = gpu_config.PIXEL_BLOCK
    grid = (
        cuda_device.blocks_for(width, block_x, 2**31 - 1),
        cuda_device.blocks_for(height, block_y * gpu_config.ROWS_PER_THREAD),
    )
    inv_tile_h = _ONE / np.float32(tile_h)
    inv_tile_w = _ONE / np.float32(tile_w)
    _interpolate[grid, (block_x, block_y), stream](
        dev, luts, tiles_y, tiles_x, inv_tile_h, inv_tile_w, max_value, out
    )
    return out if on_device else cuda_device.to_host(out)
