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


@pytest.mark.parametrize("coarse_w", [1, 2, 3, 4, 5, 6, 9, 17])
def test_the_stride_4_widening_equals_the_gather_on_every_width(coarse_w) -> None:
    """The whole-coarse-pixel path of stride 4 and its clamped edges give the gather's values bit for bit,
    for every output width the coarse row can serve (a padded frame's pairs are wider than needed)."""
    from kernels.guided import _source, _widen_row, _widen_row_gather

    coarse = np.random.default_rng(coarse_w).standard_normal(coarse_w).astype(np.float32)
    for width in range(1, 4 * coarse_w + 1):
        positions = [_source(x, np.float32(0.25), coarse_w) for x in range(width)]
        x_lower = np.array([p[0] for p in positions], np.int64)
        x_upper = np.array([p[1] for p in positions], np.int64)
        x_weight = np.array([p[2] for p in positions], np.float32)
        fast, gathered = np.full(width, np.nan, np.float32), np.full(width, np.nan, np.float32)
        _widen_row(coarse, fast, x_lower, x_upper, x_weight, 4)
        _widen_row_gather(coarse, gathered, x_lower, x_upper, x_weight)
        np.testing.assert_array_equal(fast, gathered)


def test_the_three_class_pass_equals_the_per_class_passes() -> None:
    """One pass with three logits in registers picks what one pass per class picks, ties included."""
    from kernels.guided import _best_class_row, _best_of_three_row

    rng = np.random.default_rng(3)
    width = 1000
    top, bottom = (rng.integers(-3, 4, (6, width)).astype(np.float32) for _ in range(2))  # many exact ties
    guide = rng.integers(-2, 3, width).astype(np.float32)
    for wy in (np.float32(0.0), np.float32(0.375), np.float32(1.0)):
        one_pass, per_class = np.empty(width, np.uint8), np.empty(width, np.uint8)
        _best_of_three_row(top, bottom, wy, guide, one_pass)
        _best_class_row(top, bottom, wy, guide, per_class, np.empty(width, np.float32))
        np.testing.assert_array_equal(one_pass, per_class)
