"""`kernels.guided_argmax`: the guided U-Net's fused bilinear upsample + affine + argmax.

References: a plain numpy implementation of `torch.nn.functional.interpolate(mode="bilinear",
align_corners=False)` written from its definition (no torch needed), and, where torch is
installed, torch itself through `inspectd.training.model.guided_logits`.
"""

from __future__ import annotations

import numpy as np
import pytest

import kernels
from inspectd.analysis.engines import unet_contract as contract


def _bilinear_half_pixel(coarse: np.ndarray, stride: int, height: int, width: int) -> np.ndarray:
    """[C, h, w] -> [C, height, width]: source = (dst + 0.5) / stride - 0.5, clamped into the grid."""

    def axis(length_out: int, length_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        source = np.maximum((np.arange(length_out) + 0.5) / stride - 0.5, 0.0)
        lower = np.minimum(source.astype(np.int64), length_in - 1)
        upper = np.minimum(lower + 1, length_in - 1)
        return lower, upper, (source - lower).astype(np.float32)

    y0, y1, wy = axis(height, coarse.shape[1])
    x0, x1, wx = axis(width, coarse.shape[2])
    top = coarse[:, y0][:, :, x0] * (1 - wx) + coarse[:, y0][:, :, x1] * wx
    bottom = coarse[:, y1][:, :, x0] * (1 - wx) + coarse[:, y1][:, :, x1] * wx
    return top * (1 - wy[:, None]) + bottom * wy[:, None]


def _reference(pairs: np.ndarray, image: np.ndarray, stride: int) -> np.ndarray:
    guide = contract.normalise(image)[0, 0]
    upsampled = _bilinear_half_pixel(pairs, stride, *image.shape)
    logits = upsampled[:3] + upsampled[3:] * guide
    return logits.argmax(0)


CASES = [  # (height, width, stride, dtype)
    (32, 48, 4, np.uint8),
    (37, 53, 4, np.uint8),  # not a multiple of the stride: the pairs cover a padded frame
    (64, 64, 2, np.uint16),
    (40, 56, 8, np.uint16),
    (1, 9, 4, np.uint8),
]


@pytest.mark.parametrize(("height", "width", "stride", "dtype"), CASES)
def test_equals_a_numpy_bilinear_reference(height, width, stride, dtype) -> None:
    rng = np.random.default_rng(height * width + stride)
    image = rng.integers(0, np.iinfo(dtype).max + 1, (height, width)).astype(dtype)
    pairs = rng.standard_normal((6, -(-height // stride), -(-width // stride))).astype(np.float32)
    mask = kernels.guided_argmax(pairs, image, stride)
    assert mask.dtype == np.uint8 and mask.shape == image.shape
    # float64 vs float32 rounding may only flip exact near-ties
    assert np.mean(mask == _reference(pairs, image, stride)) > 0.999


@pytest.mark.parametrize(("height", "width", "stride", "dtype"), CASES)
def test_equals_the_argmax_of_the_logits_the_net_is_trained_on(height, width, stride, dtype) -> None:
    torch = pytest.importorskip("torch")
    from inspectd.training.model import guided_logits

    rng = np.random.default_rng(7 + stride)
    image = rng.integers(0, np.iinfo(dtype).max + 1, (height, width)).astype(dtype)
    coarse_hw = (-(-height // stride), -(-width // stride))
    pairs = rng.standard_normal((6, *coarse_hw)).astype(np.float32)
    padded = np.pad(image, ((0, coarse_hw[0] * stride - height), (0, coarse_hw[1] * stride - width)), mode="edge")
    logits = guided_logits(torch.from_numpy(pairs)[None], torch.from_numpy(contract.normalise(padded)), stride)
    expected = logits[0, :, :height, :width].argmax(0).numpy()
    assert np.array_equal(kernels.guided_argmax(pairs, image, stride), expected)


def test_the_guide_decides_inside_a_coarse_pixel() -> None:
    """a_pore = -1, b_pore = -1: pore where the guide (normalised grey) is below -1, i.e. dark pixels."""
    pairs = np.zeros((6, 1, 1), np.float32)
    pairs[2], pairs[5] = -1.0, -1.0
    image = np.array([[0, 40, 64, 200]], np.uint8)  # guides -2.0, -1.37, -0.996, 1.14
    assert kernels.guided_argmax(pairs, image, 4).tolist() == [[2, 2, 0, 0]]


@pytest.mark.parametrize(("pairs", "image", "stride", "match"), [
    (np.zeros((6, 4)), np.zeros((4, 4), np.uint8), 1, "affine must be"),
    (np.zeros((5, 4, 4)), np.zeros((4, 4), np.uint8), 1, "affine must be"),
    (np.zeros((6, 2, 2)), np.zeros((9, 8), np.uint8), 4, "do not cover"),
    (np.zeros((6, 2, 2)), np.zeros((8, 8), np.float32), 4, "uint8 or uint16"),
    (np.zeros((6, 2, 2)), np.zeros((8, 8), np.uint8), 0, "stride must be a positive integer"),
])
def test_bad_arguments_are_refused(pairs, image, stride, match) -> None:
    with pytest.raises(ValueError, match=match):
        kernels.guided_argmax(pairs, image, stride)
