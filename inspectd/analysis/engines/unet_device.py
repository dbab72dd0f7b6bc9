"""The U-Net engine's GPU-resident path: an enhanced frame already on the device -> class mask on the host.

Why: on a GPU station the frame goes to the device once, for the CUDA CLAHE; sending it back
to pad, normalise and cut tiles on the CPU, then uploading the tiles again, would cost two
transfers and a CPU pass per frame. Here every step stays on the calling thread's CUDA stream:

1. `kernels.gpu_tiles.gpu_normalised_tiles` writes each batch of reflect-padded, normalised
   tiles into a float32 device buffer (the same `TilePlan` as the host path);
2. the runner reads that buffer and writes the network's output into another
   (`run_device`: TensorRT tensor addresses, or ONNX Runtime I/O binding on the CUDA provider);
3. `gpu_blend_add` feathers each tile's output into the coarse accumulators;
4. `gpu_guided_argmax` (guided U-Net) or `gpu_blend_argmax` (logits model) makes the mask,
   and only the mask, one byte per pixel, comes back.

The steps are the host path's arithmetic (`tiling`, `contract.normalise`), so the masks agree;
on numba's simulator they are identical (tested), on a GPU fused multiply-adds may move a
near-tie by one float32 ulp. Buffers are per-thread workspaces (`cuda_device.workspace`),
so a steady stream of equal frames allocates only the mask.
"""

from __future__ import annotations

import functools
from typing import Protocol

import numpy as np

from inspectd.analysis.engines import tiling
from inspectd.analysis.engines import unet_contract as contract


class DeviceTileRunner(Protocol):
    """What the device path needs from a runner: device batch in, device output written."""

    output_name: str

    def run_device(self, batch: object, out: object) -> None: ...


def segment_device(frame, runner: DeviceTileRunner, plan: tiling.TilePlan, output_stride: int,
                   tiles_per_run: int) -> np.ndarray:
    """uint8 class-index mask (numpy) of the 2-D uint8/uint16 device frame `frame`, tiled by `plan`."""
    from kernels import cuda_device

    total, weight_sum = _blend(frame, runner, plan, output_stride, tiles_per_run)
    return cuda_device.to_host(_mask(frame, total, weight_sum, plan, output_stride))


def segment_device_with_output(frame, runner: DeviceTileRunner, plan: tiling.TilePlan, output_stride: int,
                               tiles_per_run: int) -> tuple[np.ndarray, np.ndarray]:
    """`segment_device`'s mask and the blended output on the host (for the confidence).

    The output is the weighted mean over the padded frame: a guided U-Net's coarse pairs
    `[6, h, w]`, or a logits model's logits `[3, H, W]`, the padding included.
    """
    from kernels import cuda_device
    from kernels.gpu_tiles import gpu_blend_mean

    total, weight_sum = _blend(frame, runner, plan, output_stride, tiles_per_run)
    mask = _mask(frame, total, weight_sum, plan, output_stride)
    if output_stride == 1:  # the argmax read the sums; the margin needs the means
        gpu_blend_mean(total, weight_sum)
    return cuda_device.to_host(mask), cuda_device.to_host(total)


def _blend(frame, runner: DeviceTileRunner, plan: tiling.TilePlan, output_stride: int, tiles_per_run: int):
    """The device accumulators (sum of feathered outputs, sum of weights) over the padded frame."""
    from kernels import cuda_device
    from kernels.gpu_tiles import gpu_blend_add, gpu_normalised_tiles

    channels = contract.output_channels(runner.output_name)
    coarse = plan.coarse(output_stride)
    total = cuda_device.workspace("unet_total", (channels, *coarse.padded_hw), np.float32)
    weight_sum = cuda_device.workspace("unet_weight_sum", coarse.padded_hw, np.float32)
    cuda_device.zero_fill(total)
    cuda_device.zero_fill(weight_sum)
    batch = cuda_device.workspace("unet_tiles", (tiles_per_run, 1, *plan.tile_hw), np.float32)
    out = cuda_device.workspace("unet_output", (tiles_per_run, channels, *coarse.tile_hw), np.float32)
    table = _device_table(np.dtype(frame.dtype))
    origins = _device_origins(plan)
    for start in range(0, plan.n_tiles, tiles_per_run):
        n_tiles = min(tiles_per_run, plan.n_tiles - start)
        gpu_normalised_tiles(frame, table, origins[start:start + n_tiles], batch[:n_tiles])
        runner.run_device(batch[:n_tiles], out[:n_tiles])
        for index, origin in enumerate(coarse.origins[start:start + n_tiles]):
            gpu_blend_add(total, weight_sum, out[index], origin, coarse.overlap_px,
                          tiling.feather_sides(coarse, *origin))
    return total, weight_sum


def _mask(frame, total, weight_sum, plan: tiling.TilePlan, output_stride: int):
    """The device mask; a guided U-Net's `total` is left holding the mean pairs."""
    from kernels.gpu_guided import gpu_guided_argmax
    from kernels.gpu_tiles import gpu_blend_argmax, gpu_blend_mean

    if output_stride == 1:
        return gpu_blend_argmax(total, plan.frame_hw)
    gpu_blend_mean(total, weight_sum)
    return gpu_guided_argmax(total, frame, output_stride, contract.NORM_MEAN, contract.NORM_STD)


@functools.cache
def _device_table(dtype: np.dtype):
    """`contract.normalise_table` on the device, uploaded once per process (read-only, shared by all threads)."""
    from numba import cuda

    return cuda.to_device(np.ascontiguousarray(contract.normalise_table(dtype)))


@functools.lru_cache(maxsize=8)
def _device_origins(plan: tiling.TilePlan):
    """The plan's tile corners as an int32 device array, uploaded once per frame size (a station sees one or two)."""
    from numba import cuda

    return cuda.to_device(np.array(plan.origins, dtype=np.int32).reshape(-1, 2))
