"""Tiled U-Net inference around the network, on a CUDA GPU (numba.cuda): cut, feather, blend, argmax.

The device twin of the host steps in ``inspectd.analysis.engines.tiling`` and ``contract.normalise``,
so the U-Net engine can take a frame that is already on the GPU (after the CUDA CLAHE) to a
class mask there, with only the mask coming back:

* ``gpu_normalised_tiles``: reflect-pad + normalise + cut in one pass. Each thread writes one
  pixel of one tile of the float32 batch ``[N, 1, h, w]`` the network reads, taking its grey
  level from the frame (bottom/right padding mirrored as ``numpy.pad(mode="reflect")``, or
  repeated as ``mode="edge"`` for a frame one pixel wide or high) through the same float32
  table ``contract.normalise`` uses, so the tiles are bit-identical to the host's.
* ``gpu_blend_add``: adds one tile's output, weighted by its linear feather, into the padded
  accumulators (one launch per tile, serial on the thread's stream, so no atomics and the
  same summation order as ``TileBlender.add``).
* ``gpu_blend_mean`` / ``gpu_blend_argmax``: the weighted mean (a guided U-Net's coarse pairs,
  for ``gpu_guided_argmax``) or the class argmax (a logits model) of the accumulators.

Arguments are numba device arrays (``cuda_device.import_device_array`` turns CuPy/PyTorch ones
into those) and all work is queued on the calling thread's stream; nothing here synchronises.
"""

from __future__ import annotations

import numpy as np
from numba import cuda

from kernels import cuda_device, gpu_config


@cuda.jit(device=True)
def _mirror(index, length, edge):
    """Source index of padded position ``index`` along an axis of ``length`` pixels (numpy's reflect/edge)."""
    if index < length:
        return index
    if edge or length == 1:
        return length - 1
    period = 2 * (length - 1)
    folded = index % period
    return period - folded if folded >= length else folded


@cuda.jit
def _tiles(image, table, origins, edge, out):
    height = image.shape[0]
    width = image.shape[1]
    tile_h = out.shape[2]
    tile_w = out.shape[3]
    x = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    tile = cuda.blockIdx.z
    if x >= tile_w or tile >= out.shape[0]:
        return
    source_x = _mirror(origins[tile, 1] + x, width, edge)
    row_step = cuda.gridDim.y * cuda.blockDim.y
    for y in range(cuda.blockIdx.y * cuda.blockDim.y + cuda.threadIdx.y, tile_h, row_step):
        source_y = _mirror(origins[tile, 0] + y, height, edge)
        out[tile, 0, y, x] = table[image[source_y, source_x]]


@cuda.jit(device=True)
def _feather(index, length, overlap, rises_at_start, rises_at_end):
    """The tile's weight along one axis: ``tiling._ramp`` (linear over ``overlap`` px on rising sides)."""
    weight = np.float32(1.0)
    if overlap == 0:
        return weight
    if rises_at_start and index < overlap:  # the rise is < 1 here; comparisons, not min(): see guided._source
        weight = (np.float32(index) + np.float32(0.5)) / np.float32(overlap)
    from_end = length - 1 - index
    if rises_at_end and from_end < overlap:
        falling = (np.float32(from_end) + np.float32(0.5)) / np.float32(overlap)
        if falling < weight:
            weight = falling
    return weight


@cuda.jit
def _blend_add(total, weight_sum, tile_out, origin_y, origin_x, overlap, rise_top, rise_bottom, rise_left, rise_right):
    n_classes = tile_out.shape[0]
    tile_h = tile_out.shape[1]
    tile_w = tile_out.shape[2]
    x = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    if x >= tile_w:
        return
    weight_x = _feather(x, tile_w, overlap, rise_left, rise_right)
    row_step = cuda.gridDim.y * cuda.blockDim.y
    for y in range(cuda.blockIdx.y * cuda.blockDim.y + cuda.threadIdx.y, tile_h, row_step):
        weight = _feather(y, tile_h, overlap, rise_top, rise_bottom) * weight_x
        for c in range(n_classes):
            total[c, origin_y + y, origin_x + x] += tile_out[c, y, x] * weight
        weight_sum[origin_y + y, origin_x + x] += weight


@cuda.jit
def _mean(total, weight_sum):
    x = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    if x >= total.shape[2]:
        return
    row_step = cuda.gridDim.y * cuda.blockDim.y
    for y in range(cuda.blockIdx.y * cuda.blockDim.y + cuda.threadIdx.y, total.shape[1], row_step):
        for c in range(total.shape[0]):
            total[c, y, x] = total[c, y, x] / weight_sum[y, x]


@cuda.jit
def _argmax(total, out):
    x = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    if x >= out.shape[1]:
        return
    row_step = cuda.gridDim.y * cuda.blockDim.y
    for y in range(cuda.blockIdx.y * cuda.blockDim.y + cuda.threadIdx.y, out.shape[0], row_step):
        best_class = 0
        best = total[0, y, x]
        for c in range(1, total.shape[0]):
            if total[c, y, x] > best:  # ties keep the lower class, as numpy.argmax
                best = total[c, y, x]
                best_class = c
        out[y, x] = best_class


def _grid(height: int, width: int, depth: int = 1) -> tuple[tuple[int, ...], tuple[int, int]]:
    block_x, block_y = gpu_config.PIXEL_BLOCK
    grid = (cuda_device.blocks_for(width, block_x, 2**31 - 1),
            cuda_device.blocks_for(height, block_y * gpu_config.ROWS_PER_THREAD))
    return ((*grid, depth) if depth > 1 else grid), (block_x, block_y)


def gpu_normalised_tiles(image, table, origins, out) -> None:
    """Fill ``out`` (float32 ``[N, 1, h, w]`` device array) with the normalised tiles at ``origins``.

    ``image``: the 2-D uint8/uint16 device frame; ``table``: float32 device array of every grey
    level's network input (``contract.normalise_table``); ``origins``: int32 ``[N, 2]`` (y, x)
    tile corners in padded-frame coordinates (numpy, or a device array to save the upload).

    >>> import numpy as np
    >>> from numba import cuda
    >>> out = cuda.device_array((1, 1, 2, 4), np.float32)
    >>> frame = cuda.to_device(np.array([[0, 1, 2]], np.uint8))
    >>> gpu_normalised_tiles(frame, cuda.to_device(np.arange(256, dtype=np.float32)), np.array([[0, 0]]), out)
    >>> out.copy_to_host()[0, 0].tolist()
    [[0.0, 1.0, 2.0, 2.0], [0.0, 1.0, 2.0, 2.0]]
    """
    stream = cuda_device.thread_stream()
    n_tiles, _, tile_h, tile_w = out.shape
    if cuda_device.is_device_array(origins):
        origins_dev = cuda_device.import_device_array(origins)
    else:
        origins_dev = cuda.to_device(np.ascontiguousarray(origins, dtype=np.int32), stream=stream)
    edge = min(image.shape) == 1  # tiling.pad_frame repeats both axes of a one-pixel-wide frame
    grid, block = _grid(tile_h, tile_w, n_tiles)
    _tiles[grid, block, stream](image, table, origins_dev, edge, out)


def gpu_blend_add(total, weight_sum, tile_out, origin, overlap_px: int, rises: tuple[bool, bool, bool, bool]) -> None:
    """Add ``tile_out`` ``[C, h, w]`` weighted by its feather into ``total`` ``[C, H, W]`` at ``origin``.

    ``rises``: (top, bottom, left, right) sides that face another tile (the feather rises
    there); the feather itself is added into ``weight_sum`` ``[H, W]``.
    """
    _, tile_h, tile_w = tile_out.shape
    grid, block = _grid(tile_h, tile_w)
    _blend_add[grid, block, cuda_device.thread_stream()](total, weight_sum, tile_out, int(origin[0]), int(origin[1]),
                                                         overlap_px, *(bool(r) for r in rises))


def gpu_blend_mean(total, weight_sum) -> None:
    """Divide ``total`` ``[C, H, W]`` by ``weight_sum`` ``[H, W]`` in place (the blended output)."""
    grid, block = _grid(total.shape[1], total.shape[2])
    _mean[grid, block, cuda_device.thread_stream()](total, weight_sum)


def gpu_blend_argmax(total, frame_hw: tuple[int, int]):
    """uint8 device mask ``[H, W]`` of the class with the largest accumulated logit (the frame's corner of ``total``)."""
    out = cuda_device.device_output(frame_hw, np.uint8)
    grid, block = _grid(*frame_hw)
    _argmax[grid, block, cuda_device.thread_stream()](total, out)
    return out
