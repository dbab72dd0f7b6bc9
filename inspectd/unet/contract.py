"""What the U-Net takes and gives, shared by training (torch) and inference (ONNX Runtime,
TensorRT) so both normalise identically. Importing this never imports torch.

Input: the ENHANCED image (after the pipeline's CLAHE), as float32 NCHW `[N, 1, H, W]`
named `image`, values `(grey / max_level - NORM_MEAN) / NORM_STD` where max_level is 255
for uint8 and 65535 for uint16. Output: `logits` `[N, 3, H, W]` over the classes 0 melted,
1 unmelted, 2 pore. H and W must be multiples of `INPUT_MULTIPLE` (4 poolings); inference
pads (reflect) to get there.

Example:
    >>> import numpy as np
    >>> normalise(np.array([[0, 255]], np.uint8)).tolist()
    [[[[-2.0, 2.0]]]]
"""

from __future__ import annotations

import numpy as np

INPUT_NAME = "image"
OUTPUT_NAME = "logits"
N_CLASSES = 3
INPUT_MULTIPLE = 16
NORM_MEAN = 0.5
NORM_STD = 0.25
BUNDLED_MODEL = "unet-coating-v1.onnx"
BUNDLED_CARD = "unet-coating-v1.json"


def normalise(enhanced: np.ndarray) -> np.ndarray:
    """2-D uint8/uint16 enhanced image -> float32 `[1, 1, H, W]` network input."""
    max_level = 65535.0 if enhanced.dtype == np.uint16 else 255.0
    scaled = enhanced.astype(np.float32) * np.float32(1.0 / max_level)
    return ((scaled - NORM_MEAN) / NORM_STD)[None, None, :, :]
