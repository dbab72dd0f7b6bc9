"""The U-Net engine's confidence: the mean top-two softmax margin, for guided (v2) and logits (v1) models.

The guided model's margin is taken on its coarse grid (`confidence.guided_margin`); here it is
checked against the exact full-resolution margin (bilinear pairs, affine logit per pixel,
softmax), which it tracked within 0.005 on bundled-model micrographs when written (0.9642 vs
0.9631 on a 512x640 synthetic frame) and within 0.03 on noise (0.563 vs 0.533).
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnx")

from inspectd.analysis.confidence import guided_margin, logits_margin, softmax_margin  # noqa: E402
from inspectd.analysis.engines import create_engine  # noqa: E402
from inspectd.analysis.engines import unet_contract as contract  # noqa: E402
from inspectd.analysis.engines.unet import UnetEngine  # noqa: E402
from inspectd.analysis.preprocess import enhance  # noqa: E402
from inspectd.config import PreprocessConfig, SegmentConfig, UnetConfig  # noqa: E402
from inspectd.data import synth  # noqa: E402
from tests.kernels.test_kernels_guided import _bilinear_half_pixel  # noqa: E402
from tests.unet.random_unet import build_guided, build_unet, save  # noqa: E402


def _engine(**unet_kwargs) -> UnetEngine:
    engine = create_engine(SegmentConfig(engine="unet", backend="cpu", unet=UnetConfig(**unet_kwargs)))
    engine.load()
    return engine


def _naive_margin(logits: np.ndarray) -> float:
    probabilities = np.exp(logits - logits.max(axis=0))
    probabilities /= probabilities.sum(axis=0)
    top_two = np.sort(probabilities, axis=0)[-2:]
    return float(np.mean(top_two[1] - top_two[0]))


def _full_resolution_margin(pairs: np.ndarray, enhanced: np.ndarray, stride: int) -> float:
    upsampled = _bilinear_half_pixel(pairs, stride, *enhanced.shape)
    guide = contract.normalise(enhanced)[0, 0]
    return _naive_margin(upsampled[:3] + upsampled[3:] * guide)


def test_softmax_margin_is_the_mean_top_two_probability_gap() -> None:
    rng = np.random.default_rng(0)
    for classes in (2, 3, 5):
        logits = (rng.standard_normal((classes, 17, 23)) * 3).astype(np.float32)
        assert softmax_margin(logits) == pytest.approx(_naive_margin(logits), abs=1e-5)
    assert logits_margin(logits, step=2) == pytest.approx(_naive_margin(logits[:, ::2, ::2]), abs=1e-5)


@pytest.mark.parametrize(("height", "width", "seed"), [(512, 640, 1), (250, 333, 3)])
def test_bundled_guided_margin_tracks_the_full_resolution_margin(height, width, seed) -> None:
    engine = _engine(precision="fp32")
    assert engine.output_stride == 4
    raw = synth.generate_v3(height, width, seed=seed, params=synth.RealisticParams(enhance=False)).image
    enhanced = enhance(raw, PreprocessConfig())
    output = engine.forward(enhanced)
    assessed = engine.segment_assessed(enhanced)
    assert np.array_equal(assessed.mask, engine.segment(enhanced))
    assert assessed.confidence == pytest.approx(guided_margin(output.blended, enhanced, 4), abs=1e-6)
    assert assessed.confidence == pytest.approx(_full_resolution_margin(output.blended, enhanced, 4), abs=0.02)
    assert assessed.confidence > 0.8  # a micrograph like its training frames: decided almost everywhere


def test_random_guided_model_margin_follows_the_formula(tmp_path) -> None:
    engine = _engine(model=save(build_guided(stride=4, seed=3), tmp_path / "guided.onnx"), tile_px=128, overlap_px=16)
    enhanced = enhance(synth.generate(200, 260, seed=9).image, PreprocessConfig())
    pairs = engine.blended_logits(enhanced)
    expected = guided_margin(pairs, enhanced, 4)
    assert engine.segment_assessed(enhanced).confidence == pytest.approx(expected, abs=1e-5)
    # one coarse cell per 4x4 block, every 2nd one: the guide is the block's mean grey level (OpenCV's
    # INTER_AREA rounds it to a whole level for a uint8 frame)
    block_means = np.round(enhanced[:200, :260].reshape(50, 4, 65, 4).mean(axis=(1, 3))[::2, ::2])
    guide = (block_means / 255.0 - contract.NORM_MEAN) / contract.NORM_STD
    coarse = pairs[:, :50:2, :65:2]
    assert expected == pytest.approx(_naive_margin(coarse[:3] + coarse[3:] * guide), abs=1e-4)


def test_logits_model_margin_samples_every_fourth_pixel(tmp_path) -> None:
    engine = _engine(model=save(build_unet(base_channels=4, seed=1), tmp_path / "unet.onnx"), tile_px=128,
                     overlap_px=32)
    assert engine.output_stride == 1
    enhanced = enhance(synth.generate(150, 210, seed=6).image, PreprocessConfig())
    logits = engine.blended_logits(enhanced)
    assessed = engine.segment_assessed(enhanced)
    assert assessed.confidence == pytest.approx(_naive_margin(logits[:, ::4, ::4]), abs=1e-5)
    assert np.array_equal(assessed.mask, logits.argmax(0))


def test_a_downscaled_run_reports_the_margin_of_what_the_network_saw(tmp_path) -> None:
    engine = _engine(model=save(build_guided(stride=4, seed=5), tmp_path / "guided.onnx"), scale=0.5)
    enhanced = enhance(synth.generate(240, 320, seed=2).image, PreprocessConfig())
    assessed = engine.segment_assessed(enhanced)
    assert assessed.mask.shape == enhanced.shape
    assert 0.0 <= assessed.confidence <= 1.0
