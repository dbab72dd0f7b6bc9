"""How sure an engine is of its mask, as one number in [0, 1] per frame.

Why two definitions: the engines decide differently, so "how close was the decision" is
measured where each one decides.

- U-Net: the mean over the frame of p_top1 - p_top2, the margin between the two most
  probable classes' softmax probabilities (1: every pixel decided outright; 0: every pixel
  a coin toss between two classes). A guided U-Net's full-resolution logits are
  a_c + b_c * guide with (a, b) at 1/stride; evaluating them at every pixel would cost as
  much as the fused argmax itself, so the margin is taken on the coarse grid, with the guide
  computed from the frame area-averaged to that grid (`guided_margin`): the model's own
  resolution. Every 2nd coarse cell in each direction is enough for a mean (76 800 cells
  of a 2560x1920 frame; 1.9 ms, where all of them took 3.7 ms on two cores). Near an edge
  a coarse cell averages both sides, so this margin runs above the full-resolution one
  where the mask is busiest. A logits model's output is sampled every 4th pixel (`logits_margin`).
- Classical: Otsu's separability eta = between-class variance / total variance at the best
  two-class split of the enhanced frame's grey histogram (`histogram_separability`). eta is
  2/pi for any single Gaussian population (nothing to split) and 1 for two spikes, so the
  confidence is (eta - 2/pi) / (1 - 2/pi), clipped to [0, 1]: 0 when the grey levels hold no
  more two-population structure than one bell curve. The classical engine's own threshold
  method (`segment.classical.threshold`) is deliberately not consulted: this measures the
  frame, whatever split the engine then picks. Measured: synthetic and real coating frames
  after CLAHE 0.17-0.32 (their grey populations overlap heavily), uniform noise 0.31, one
  bell 0.

Example:
    >>> import numpy as np
    >>> logits = np.zeros((3, 2, 2), np.float32); logits[0] = 20.0  # class 0 certain everywhere
    >>> round(softmax_margin(logits), 6)
    1.0
    >>> round(softmax_margin(np.zeros((3, 2, 2), np.float32)), 6)  # three-way ties
    0.0
    >>> two_spikes = np.where(np.arange(4096).reshape(64, 64) % 2, 40, 210).astype(np.uint8)
    >>> histogram_separability(two_spikes)
    1.0
"""

from __future__ import annotations

import math

import cv2
import numpy as np

# eta of any single Gaussian population: 2/pi (its halves' means lie at +-sigma*sqrt(2/pi)).
GAUSSIAN_SEPARABILITY = 2.0 / math.pi
# A logits model's output is sampled every this many pixels for its margin, a guided
# U-Net's coarse grid every this many cells (the exp per class and pixel is the cost).
LOGITS_MARGIN_STEP = 4
GUIDED_MARGIN_STEP = 2
_HISTOGRAM_SAMPLE_PX = 1 << 18


def softmax_margin(logits: np.ndarray) -> float:
    """Mean over pixels of the top-two softmax margin of `logits` `[classes, h, w]`, in [0, 1].

    >>> import numpy as np
    >>> round(softmax_margin(np.array([[[2.0]], [[0.0]], [[0.0]]], np.float32)), 4)  # p = .787, .107, .107
    0.6805
    """
    logits = np.asarray(logits, dtype=np.float32)
    n_classes = logits.shape[0]
    if n_classes < 2 or logits[0].size == 0:
        return 1.0
    # exp(l - max): the top class weighs exactly 1, so p_top1 = 1 / sum and p_top2 = second / sum.
    weights = np.exp(logits - logits.max(axis=0))
    total = weights.sum(axis=0)
    if n_classes == 2:
        second = weights.min(axis=0)
    elif n_classes == 3:
        second = total - 1.0 - weights.min(axis=0)
    else:
        second = np.partition(weights, n_classes - 2, axis=0)[n_classes - 2]
    margin = float(np.mean((1.0 - second) / total))
    return min(1.0, max(0.0, margin))


def guided_margin(affine: np.ndarray, enhanced: np.ndarray, stride: int, *, mean: float = 0.5,
                  std: float = 0.25, step: int = GUIDED_MARGIN_STEP) -> float:
    """The guided U-Net's margin on its coarse grid (see the module docstring).

    `affine`: the blended coarse pairs `[2 * classes, h, w]` (a, then b; a padded frame's
    pairs are fine), `enhanced`: the 2-D uint8/uint16 frame they belong to, normalised as the
    network's input (`(level / max_level - mean) / std`); every `step`-th coarse cell counts.

    >>> import numpy as np
    >>> pairs = np.zeros((6, 2, 2), np.float32); pairs[5] = 20.0  # pore logit = 20 * guide
    >>> frame = np.full((8, 8), 255, np.uint8)  # guide +2: the pore class wins outright
    >>> round(guided_margin(pairs, frame, 4), 6)
    1.0
    """
    height, width = enhanced.shape
    rows, cols = max(1, height // stride), max(1, width // stride)
    # Whole coarse cells only: a frame that is not a multiple of the stride loses < stride
    # pixels at its bottom and right edges, and the area average stays an exact block mean.
    frame = enhanced[:rows * stride, :cols * stride] if height >= stride and width >= stride else enhanced
    grey = cv2.resize(frame, (cols, rows), interpolation=cv2.INTER_AREA).astype(np.float32)
    max_level = 65535.0 if enhanced.dtype == np.uint16 else 255.0
    guide = (grey * np.float32(1.0 / max_level) - np.float32(mean)) * np.float32(1.0 / std)
    n_classes = affine.shape[0] // 2
    pairs = np.asarray(affine[:, :rows:step, :cols:step], dtype=np.float32)
    guide = guide[::step, ::step]
    return softmax_margin(pairs[:n_classes] + pairs[n_classes:] * guide)


def logits_margin(logits: np.ndarray, step: int = LOGITS_MARGIN_STEP) -> float:
    """A logits model's margin on every `step`-th pixel of its blended `[classes, H, W]` output.

    >>> import numpy as np
    >>> round(logits_margin(np.zeros((3, 8, 8), np.float32)), 6)
    0.0
    """
    return softmax_margin(logits[:, ::step, ::step])


def histogram_separability(enhanced: np.ndarray) -> float:
    """The classical engine's confidence: Otsu's eta rescaled from a single Gaussian's 2/pi to 1.

    Taken on a strided copy of about 2^18 pixels in 256 grey bins (a uint16 frame's levels
    grouped by 256), so it costs well under a millisecond on a 2560x1920 frame.

    >>> import numpy as np
    >>> histogram_separability(np.full((8, 8), 90, np.uint8))  # one level: nothing to separate
    0.0
    """
    height, width = enhanced.shape
    step = max(1, math.ceil(math.sqrt(height * width / _HISTOGRAM_SAMPLE_PX)))
    sample = enhanced[::step, ::step]
    if sample.dtype != np.uint8:
        sample = (sample >> 8).astype(np.uint8)
    p = np.bincount(sample.ravel(), minlength=256).astype(np.float64)
    p /= p.sum()
    levels = np.arange(256, dtype=np.float64)
    weight = np.cumsum(p)
    first_moment = np.cumsum(p * levels)
    mean = first_moment[-1]
    total_variance = float((p * (levels - mean) ** 2).sum())
    if total_variance <= 0.0:
        return 0.0
    inside = (weight > 0.0) & (weight < 1.0)
    between = np.zeros(256)
    between[inside] = (mean * weight[inside] - first_moment[inside]) ** 2 / (weight[inside] * (1.0 - weight[inside]))
    eta = float(between.max()) / total_variance
    return min(1.0, max(0.0, (eta - GAUSSIAN_SEPARABILITY) / (1.0 - GAUSSIAN_SEPARABILITY)))
