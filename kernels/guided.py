"""Guided upsampling + argmax: the last step of the guided U-Net, fused into one pass.

The guided U-Net (``inspectd.training.model``, ``output_stride`` > 1) returns, per class c, a
coarse pair (a_c, b_c) at 1/stride resolution; the logit of a full-resolution pixel is
``a_c + b_c * guide`` with (a, b) upsampled bilinearly and ``guide`` the normalised input
pixel. Inside the ONNX graph that meant upsampling 6 maps to full resolution and writing
three float logits per pixel (about 100 MB and 90 ms for a 2560x1920 frame on two cores);
here bands of rows widen the coarse rows they need once, evaluate the three logits per
pixel in one vectorised pass and write only the uint8 class.
``gpu_guided.py`` is its CUDA twin.

Bilinear weights follow ``torch.nn.functional.interpolate(mode="bilinear",
align_corners=False)`` exactly (half-pixel centres, source index clamped at 0 and at the
last row/column), and the guide is computed in float32 like
``inspectd.analysis.engines.unet_contract.normalise``, so the class equals the argmax of the logits the net
was trained on (up to float rounding at exact ties).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from kernels._threads import threads_for
from kernels._validate import check_image, check_positive_int


@njit(inline="always")
def _source(index, inv_stride, length):
    """(lower index, upper index, upper weight) of output `index` on a coarse axis of `length`."""
    position = (np.float32(index) + np.float32(0.5)) * inv_stride - np.float32(0.5)
    if position < 0:
        position = np.float32(0.0)
    # Comparisons rather than min(): this is also the CUDA twin's device function, and numba
    # 0.68's built-in CUDA target builds min/max as a separate overload that fails to compile in
    # the PTX check run without a GPU (tests/kernels/test_backend_selection.py); numba-cuda,
    # which the [gpu] extra installs, compiles either.
    lower = int(position)
    if lower > length - 1:
        lower = length - 1
    upper = lower + 1
    if upper > length - 1:
        upper = length - 1
    return lower, upper, position - np.float32(lower)


# Output rows per parallel work item: each band widens only the coarse rows it needs once
# (9 of them for 32 rows at stride 4) instead of once per output row.
BAND_ROWS = 32


@njit(nogil=True, cache=True)
def _widen_row_gather(coarse, row, x_lower, x_upper, x_weight):
    """row[x] = the horizontal half of the bilinear step at output column x (any stride): a gather per value."""
    for x in range(row.shape[0]):
        left = coarse[x_lower[x]]
        row[x] = left + x_weight[x] * (coarse[x_upper[x]] - left)


@njit(nogil=True, cache=True)
def _widen_row(coarse, row, x_lower, x_upper, x_weight, stride):
    """`_widen_row_gather`, with stride 4 (the bundled model's) by whole coarse pixels.

    At stride 4 output column 4k + j reads coarse k - 1 and k (j = 0, 1) or k and k + 1
    (j = 2, 3) with the same four weights for every k away from the edges (the float32
    positions are exact there), so the middle of the row takes three loads and four stores
    per coarse pixel instead of two gathers per output value: ~3x faster, the same values.
    The first two and the last two coarse pixels (where the clamping is) keep the gather.
    """
    width = row.shape[0]
    if stride != 4:
        _widen_row_gather(coarse, row, x_lower, x_upper, x_weight)
        return
    middle_end = min(coarse.shape[0] - 2, width // 4)  # coarse pixels k in [2, middle_end) take the fast path
    if middle_end <= 2:
        _widen_row_gather(coarse, row, x_lower, x_upper, x_weight)
        return
    _widen_row_gather(coarse, row[:8], x_lower, x_upper, x_weight)
    _widen_row_gather(coarse, row[4 * middle_end:], x_lower[4 * middle_end:], x_upper[4 * middle_end:],
                      x_weight[4 * middle_end:])
    w0, w1, w2, w3 = x_weight[8], x_weight[9], x_weight[10], x_weight[11]
    for k in range(2, middle_end):
        before, here, after = coarse[k - 1], coarse[k], coarse[k + 1]
        row[4 * k] = before + w0 * (here - before)
        row[4 * k + 1] = before + w1 * (here - before)
        row[4 * k + 2] = here + w2 * (after - here)
        row[4 * k + 3] = here + w3 * (after - here)


@njit(nogil=True, cache=True)
def _best_class_row(top, bottom, wy, guide, labels, best):
    """labels[x] = argmax_c of the vertically blended a_c + b_c * guide[x] (any class count; ties keep the lower).

    Branch-free passes over contiguous arrays, one per class, which LLVM vectorises.
    """
    n_classes = top.shape[0] // 2
    for c in range(n_classes):
        a_top, a_bottom = top[c], bottom[c]
        b_top, b_bottom = top[n_classes + c], bottom[n_classes + c]
        for x in range(labels.shape[0]):
            a = a_top[x] + wy * (a_bottom[x] - a_top[x])
            b = b_top[x] + wy * (b_bottom[x] - b_top[x])
            logit = a + b * guide[x]
            if c == 0:
                best[x] = logit
                labels[x] = 0
            else:
                better = logit > best[x]
                best[x] = logit if better else best[x]
                labels[x] = c if better else labels[x]


@njit(nogil=True, cache=True)
def _best_of_three_row(top, bottom, wy, guide, labels):
    """`_best_class_row` for the contract's three classes in one pass: the three logits stay in
    registers instead of a running best and label written and read back per class."""
    a0t, a1t, a2t, b0t, b1t, b2t = top[0], top[1], top[2], top[3], top[4], top[5]
    a0b, a1b, a2b, b0b, b1b, b2b = bottom[0], bottom[1], bottom[2], bottom[3], bottom[4], bottom[5]
    for x in range(labels.shape[0]):
        g = guide[x]
        logit0 = (a0t[x] + wy * (a0b[x] - a0t[x])) + (b0t[x] + wy * (b0b[x] - b0t[x])) * g
        logit1 = (a1t[x] + wy * (a1b[x] - a1t[x])) + (b1t[x] + wy * (b1b[x] - b1t[x])) * g
        logit2 = (a2t[x] + wy * (a2b[x] - a2t[x])) + (b2t[x] + wy * (b2b[x] - b2t[x])) * g
        label = np.uint8(0)
        best = logit0
        if logit1 > best:
            best = logit1
            label = np.uint8(1)
        if logit2 > best:
            label = np.uint8(2)
        labels[x] = label


@njit(parallel=True, nogil=True, cache=True)
def _guided_argmax(affine, image, stride, inv_stride, inv_max, mean, inv_std, out):
    """out[y, x] = argmax_c of bilinear(a_c) + bilinear(b_c) * ((image[y, x] * inv_max - mean) * inv_std).

    Bands of output rows run in parallel. A band first widens the coarse rows it reads to
    full width (the horizontal half of the bilinear step, `_widen_row`); each output row
    then blends two widened rows and picks the class (`_best_of_three_row` for three
    classes, `_best_class_row` for any other count). Ties keep the lower class, as argmax does.
    """
    n_maps = affine.shape[0]
    coarse_h, coarse_w = affine.shape[1], affine.shape[2]
    height, width = out.shape
    x_lower = np.empty(width, np.int64)
    x_upper = np.empty(width, np.int64)
    x_weight = np.empty(width, np.float32)
    for x in range(width):
        x_lower[x], x_upper[x], x_weight[x] = _source(x, inv_stride, coarse_w)
    n_bands = (height + BAND_ROWS - 1) // BAND_ROWS
    for band in prange(n_bands):
        y_start = band * BAND_ROWS
        y_end = min(height, y_start + BAND_ROWS)
        first_row = _source(y_start, inv_stride, coarse_h)[0]
        last_row = _source(y_end - 1, inv_stride, coarse_h)[1]
        wide = np.empty((last_row - first_row + 1, n_maps, width), np.float32)
        for r in range(last_row - first_row + 1):
            for m in range(n_maps):
                _widen_row(affine[m, first_row + r], wide[r, m], x_lower, x_upper, x_weight, stride)
        guide = np.empty(width, np.float32)
        best = np.empty(width, np.float32)
        for y in range(y_start, y_end):
            y0, y1, wy = _source(y, inv_stride, coarse_h)
            pixels = image[y]
            for x in range(width):
                guide[x] = (np.float32(pixels[x]) * inv_max - mean) * inv_std
            if n_maps == 6:
                _best_of_three_row(wide[y0 - first_row], wide[y1 - first_row], wy, guide, out[y])
            else:
                _best_class_row(wide[y0 - first_row], wide[y1 - first_row], wy, guide, out[y], best)


def check_guided_arguments(affine_shape: tuple, image_shape: tuple, stride: object) -> int:
    """The stride as an int, or ValueError when the pairs' shape cannot serve the image (both backends)."""
    stride = check_positive_int(stride, "stride", "guided_argmax")
    if len(affine_shape) != 3 or affine_shape[0] < 2 or affine_shape[0] % 2:
        msg = f"guided_argmax: affine must be [2 * classes, h, w], got shape {tuple(affine_shape)}"
        raise ValueError(msg)
    height, width = image_shape
    if affine_shape[1] * stride < height or affine_shape[2] * stride < width:
        msg = (f"guided_argmax: coarse pairs {tuple(affine_shape[1:])} x stride {stride} do not cover "
               f"the {height}x{width} image")
        raise ValueError(msg)
    return stride


def guided_argmax(affine, image, stride, mean=0.5, std=0.25):
    """uint8 class per pixel of ``image`` from the guided U-Net's coarse pairs.

    ``affine``: float32 ``[2 * classes, h, w]`` (a_0..a_k, then b_0..b_k), covering at least
    ``image`` (``h * stride >= H``; a padded frame's pairs are fine, the extra is ignored).
    ``image``: the 2-D uint8/uint16 enhanced frame; the guide is
    ``(image / max_level - mean) / std`` with max_level 255 or 65535 (bit-exact with
    ``contract.normalise`` while ``std`` is a power of two, as its 0.25 is).

    >>> import numpy as np
    >>> pairs = np.zeros((6, 1, 1), np.float32); pairs[5] = 1.0  # pore logit = guide
    >>> guided_argmax(pairs, np.array([[0, 255]], np.uint8), 2).tolist()  # guide -2 and 2
    [[0, 2]]
    """
    image = check_image(image, "guided_argmax")
    affine = np.ascontiguousarray(affine, dtype=np.float32)
    stride = check_guided_arguments(affine.shape, image.shape, stride)
    height, width = image.shape
    max_level = 65535.0 if image.dtype == np.uint16 else 255.0
    out = np.empty((height, width), np.uint8)
    with threads_for(height * width):
        _guided_argmax(affine, image, stride, np.float32(1.0 / stride), np.float32(1.0 / max_level),
                       np.float32(mean), np.float32(1.0 / std), out)
    return out
