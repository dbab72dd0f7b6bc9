"""The guided U-Net's upsample + affine + argmax on a CUDA GPU (numba.cuda), twin of ``kernels.guided``.

On a GPU station the network's coarse pairs are already on the device (TensorRT writes
them there), and so is the enhanced frame after the CUDA CLAHE: this kernel turns both into
the class mask without either coming back, so only the mask (1 byte per pixel) does.

One launch, one thread per column and a grid-stride loop over rows (as ``gpu_threshold``):
each pixel reads its four coarse neighbours of the 2k maps (cached: neighbouring threads
share them) and its grey level, and writes one byte. Same arithmetic as the CPU kernel
(horizontal lerp, then vertical, then ``a + b * guide`` in float32, ties to the lower
class), so the masks are identical.
"""

from __future__ import annotations

import numpy as np
from numba import cuda

from kernels import cuda_device, gpu_config
from kernels.guided import _source, check_guided_arguments

_source_on_device = cuda.jit(device=True)(_source.py_func)


@cuda.jit
def _guided(affine, image, inv_stride, inv_max, mean, inv_std, out):
    height = out.shape[0]
    width = out.shape[1]
    n_classes = affine.shape[0] // 2
    coarse_h = affine.shape[1]
    coarse_w = affine.shape[2]
    x = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    if x >= width:
        return
    x0, x1, wx = _source_on_device(x, inv_stride, coarse_w)
    row_step = cuda.gridDim.y * cuda.blockDim.y
    for y in range(cuda.blockIdx.y * cuda.blockDim.y + cuda.threadIdx.y, height, row_step):
        y0, y1, wy = _source_on_device(y, inv_stride, coarse_h)
        guide = (np.float32(image[y, x]) * inv_max - mean) * inv_std
        best_class = 0
        best_logit = np.float32(0.0)
        for c in range(n_classes):
            a_top = affine[c, y0, x0] + wx * (affine[c, y0, x1] - affine[c, y0, x0])
            a_bottom = affine[c, y1, x0] + wx * (affine[c, y1, x1] - affine[c, y1, x0])
            b_top = affine[n_classes + c, y0, x0] + wx * (affine[n_classes + c, y0, x1] - affine[n_classes + c, y0, x0])
            b_bottom = affine[n_classes + c, y1, x0] + wx * (affine[n_classes + c, y1, x1]
                                                            - affine[n_classes + c, y1, x0])
            logit = (a_top + wy * (a_bottom - a_top)) + (b_top + wy * (b_bottom - b_top)) * guide
            if c == 0 or logit > best_logit:
                best_logit = logit
                best_class = c
        out[y, x] = best_class


def gpu_guided_argmax(affine, image, stride, mean=0.5, std=0.25):
    """uint8 class mask on the GPU; ``kernels.guided_argmax(..., backend="cuda")``.

    ``affine`` and ``image`` may each be numpy or device arrays (``__cuda_array_interface__``);
    the mask is a device array when ``image`` is one, else numpy.

    >>> import numpy as np
    >>> pairs = np.zeros((6, 1, 1), np.float32); pairs[5] = 1.0
    >>> gpu_guided_argmax(pairs, np.array([[0, 255]], np.uint8), 2).tolist()
    [[0, 2]]
    """
    stream = cuda_device.thread_stream()
    if cuda_device.is_device_array(affine):
        pairs = cuda_device.import_device_array(affine)
        if np.dtype(pairs.dtype) != np.float32:
            msg = f"guided_argmax: device affine must be float32, got {pairs.dtype}"
            raise ValueError(msg)
    else:
        pairs = cuda.to_device(np.ascontiguousarray(affine, dtype=np.float32), stream=stream)
    dev, on_device = cuda_device.device_image(image, "guided_argmax")
    height, width = dev.shape
    stride = check_guided_arguments(tuple(pairs.shape), (height, width), stride)
    max_level = 65535.0 if np.dtype(dev.dtype) == np.uint16 else 255.0
    out = (cuda_device.device_output((height, width), np.uint8) if on_device
           else cuda_device.workspace("guided_out", (height, width), np.uint8))
    block_x, block_y = gpu_config.PIXEL_BLOCK
    grid = (cuda_device.blocks_for(width, block_x, 2**31 - 1),
            cuda_device.blocks_for(height, block_y * gpu_config.ROWS_PER_THREAD))
    _guided[grid, (block_x, block_y), stream](pairs, dev, np.float32(1.0 / stride), np.float32(1.0 / max_level),
                                              np.float32(mean), np.float32(1.0 / std), out)
    return out if on_device else cuda_device.to_host(out)
