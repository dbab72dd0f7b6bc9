"""The classical engine's masks equal the former OpenCV path's, pixel for pixel.

The former path (`former_classify`) is the engine as it was before its pore filter moved
to `kernels.compact_fill`: the frame blurred a second time for the pores, external
contours, the per-contour solidity test, a filled drawing and two whole-frame dilations
(`classical._pores_by_contours`). Checked on synthetic v2 and v3 frames at 8 and 16 bits,
a full 2560x1920 v3 frame, the real tiles of ../shared/samples where present, and
configurations that do not share the blur.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

import kernels
from inspectd import config
from inspectd.analysis.engines import classical
from inspectd.analysis.engines.registry import create_engine
from inspectd.analysis.preprocess import enhance
from inspectd.data import synth


def former_classify(enhanced: np.ndarray, cfg: classical.ClassicalConfig) -> np.ndarray:
    smoothed = classical._smooth(enhanced, cfg.smooth_sigma_px)
    otsu = kernels.otsu_threshold(smoothed)
    mask = classical._refine_bright(classical._bright(smoothed, otsu, cfg), cfg.open_radius_px, cfg.close_radius_px)
    pore_source = classical._smooth(enhanced, classical._PORE_SMOOTH_SIGMA_PX)
    pores = classical._pores_by_contours(pore_source, cfg.pore_level * otsu, cfg.pore_min_solidity)
    return cv2.max(mask, pores)


def _enhanced_frames():
    preprocess = config.load(None).preprocess
    for seed in (1, 2, 3):
        for make in (synth.generate, synth.generate_v3):
            raw = make(480, 640, seed=seed).image
            yield f"{make.__name__} seed {seed}", enhance(raw, preprocess)
            if seed == 1:
                yield f"{make.__name__} seed {seed} 16-bit", enhance(raw.astype(np.uint16) * 257, preprocess)


def _assert_same(got: np.ndarray, want: np.ndarray, name: str) -> None:
    assert np.array_equal(got, want), f"{name}: {int(np.count_nonzero(got != want))} pixels differ"


def test_default_engine_masks_equal_the_former_path():
    engine = create_engine(config.load(None).segment)
    engine.load()
    checked_pores = 0
    for name, enhanced in _enhanced_frames():
        mask = engine.segment(enhanced)
        _assert_same(mask, former_classify(enhanced, engine.cfg), name)
        checked_pores += int(np.count_nonzero(mask == 2))
    assert checked_pores > 10_000  # the frames do hold pores


def test_a_full_size_v3_frame_equals_the_former_path():
    enhanced = enhance(synth.generate_v3(1920, 2560, seed=11).image, config.load(None).preprocess)
    cfg = classical.ClassicalConfig()
    _assert_same(classical.classify(enhanced, cfg), former_classify(enhanced, cfg), "v3 2560x1920")


@pytest.mark.parametrize(
    "settings",
    [
        {"smooth_sigma_px": 0.0},  # no blur for the bright class: the pores still get theirs
        {"smooth_sigma_px": 1.5, "open_radius_px": 2, "close_radius_px": 1},
        {"threshold": "otsu", "pore_level": 0.5, "pore_min_solidity": 0.8},
        {"threshold": "adaptive", "pore_min_solidity": 0.0},
        {"pore_min_solidity": 1.0},
    ],
)
def test_other_settings_equal_the_former_path(settings):
    cfg = classical.ClassicalConfig(**settings)
    for name, enhanced in list(_enhanced_frames())[:4]:
        _assert_same(classical.classify(enhanced, cfg), former_classify(enhanced, cfg), f"{name} {settings}")


def test_real_tiles_equal_the_former_path(real_tile_path, real_labelled_tile):
    cfg = classical.ClassicalConfig()
    for path in (real_tile_path, real_labelled_tile[0]):
        image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        for variant in (image, cv2.resize(image, None, fx=4, fy=4, interpolation=cv2.INTER_CUBIC)):
            _assert_same(classical.classify(variant, cfg), former_classify(variant, cfg), f"{path.name} {variant.shape}")


def test_frames_without_dark_pixels_have_no_pores():
    frame = np.full((64, 80), 200, np.uint8)
    frame[10:30, 10:30] = 250
    cfg = classical.ClassicalConfig()
    mask = classical.classify(frame, cfg)
    _assert_same(mask, former_classify(frame, cfg), "no dark pixels")
    assert not (mask == 2).any()
