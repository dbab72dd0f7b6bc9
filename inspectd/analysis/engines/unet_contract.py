"""What the U-Net takes and gives, shared by training (torch) and inference (ONNX Runtime,
TensorRT) so both normalise identically. Importing this never imports torch.

Input: the ENHANCED image (`inspectd.analysis.preprocess.enhance`: the pipeline's CLAHE, none for a
frame that is already enhanced), as float32 NCHW `[N, 1, H, W]`
named `image`, values `(grey / max_level - NORM_MEAN) / NORM_STD` where max_level is 255
for uint8 and 65535 for uint16. H and W must be multiples of `INPUT_MULTIPLE`; inference
pads (reflect) to get there. Output, one of:
- `logits` `[N, 3, H, W]` over the classes 0 melted, 1 unmelted, 2 pore (v1 models);
- `affine` `[N, 6, H/s, W/s]` (guided U-Net, output stride s, v2 and v3 models): per class c the
  coarse pair (a_c, b_c) in channels c and 3 + c; the logit of a full-resolution pixel is
  `a_c + b_c * image` with (a, b) upsampled bilinearly (`inspectd.training.model.guided_logits`,
  `kernels.guided_argmax`). s is read from the shapes, not declared.

Example:
    >>> normalise(np.array([[0, 255]], np.uint8)).tolist()
    [[[[-2.0, 2.0]]]]
"""

from __future__ import annotations

import functools

import cv2
import numpy as np

INPUT_NAME = "image"
OUTPUT_NAME = "logits"
AFFINE_OUTPUT_NAME = "affine"
OUTPUT_NAMES = (OUTPUT_NAME, AFFINE_OUTPUT_NAME)
N_CLASSES = 3
# Training label only (never a model output): "melted or pore, not known which". Binary masks
# (the seed's 255 = unmelted, 0 = the rest) say only that a 0 pixel is not unmelted; training
# scores such a pixel on p(melted) + p(pore), so it never teaches that a pore is matrix.
NOT_UNMELTED = 3
N_LABELS = 4
# Validation label only: a pixel that is neither scored nor trained on, e.g. the part of a single
# labelled field that training tiles came from, kept around its validation strip as context.
IGNORE = 255
# Every shipped layout divides it: v1 pools 4 times (16), v2 strides 4 then pools 3 times (32).
INPUT_MULTIPLE = 32
NORM_MEAN = 0.5
NORM_STD = 0.25
BUNDLED_MODEL = "unet-coating-v3.onnx"
BUNDLED_INT8_MODEL = "unet-coating-v3.int8.onnx"  # its record is the card's `int8` section
BUNDLED_CARD = "unet-coating-v3.json"


def output_channels(output_name: str) -> int:
    """Channels of a contract output: 3 logits, or 3 (a, b) pairs.

    >>> output_channels("logits"), output_channels("affine")
    (3, 6)
    """
    return N_CLASSES if output_name == OUTPUT_NAME else 2 * N_CLASSES


def normalise(enhanced: np.ndarray) -> np.ndarray:
    """2-D uint8/uint16 enhanced image -> float32 `[1, 1, H, W]` network input.

    One look-up per pixel in a table of every grey level's value (256 or 65536 floats)
    instead of three float passes over the frame: a 2560x1920 frame in about 1 ms (uint8,
    OpenCV's LUT) or 8 ms (uint16) instead of 25. The table holds exactly what the
    arithmetic gives, so training (float images) and inference agree to the bit.
    """
    out = np.empty(enhanced.shape, np.float32)
    normalise_into(enhanced, out)
    return out[None, None, :, :]


def normalise_into(enhanced: np.ndarray, out: np.ndarray) -> None:
    """`normalise` of a 2-D uint8/uint16 image (a view, strided or not) written into `out`, a
    C-contiguous float32 array of its shape: tiles go straight into the network's batch,
    with no normalised frame to cut them from and no copy to stack them.
    """
    table = normalise_table(enhanced.dtype)
    if enhanced.dtype == np.uint8:
        cv2.LUT(enhanced, table, dst=out)
    else:
        np.take(table, enhanced, out=out)


@functools.cache
def normalise_table(dtype: np.dtype) -> np.ndarray:
    """float32 network input of every grey level of `dtype` (read-only; the GPU path uploads it)."""
    levels = np.arange(65536 if dtype == np.uint16 else 256, dtype=np.float32)
    max_level = 65535.0 if dtype == np.uint16 else 255.0
    scaled = levels * np.float32(1.0 / max_level)
    table = (scaled - NORM_MEAN) / NORM_STD
    table.flags.writeable = False
    return table
