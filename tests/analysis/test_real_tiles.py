"""Truth on real micrographs: the engines' defaults against the real labelled tile (skips without ../shared).

The tile is from the seed project, CLAHE-enhanced by its author, 256x256, labelled 255 =
unmelted. One line of OpenCV, Otsu's threshold on the tile as it is, scores IoU(unmelted)
0.79 on it; the defaults must do better, through the same command a user runs.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from inspectd import config
from inspectd.analysis.analyzer import Analyzer
from inspectd.analysis.preprocess import looks_enhanced
from inspectd.types import UNMELTED, Frame

PLAIN_OTSU_IOU = 0.79


def _read(path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    assert image is not None
    return image


def _iou_unmelted(mask: np.ndarray, label: np.ndarray) -> float:
    predicted, truth = mask == UNMELTED, label > 127
    return float(np.count_nonzero(predicted & truth) / np.count_nonzero(predicted | truth))


def test_plain_otsu_reference_score(real_labelled_tile):
    image, label = (_read(p) for p in real_labelled_tile)
    _, otsu = cv2.threshold(image, 0, 255, cv2.THRESH_BINARY | cv2.THRESH_OTSU)
    assert _iou_unmelted(np.where(otsu > 0, UNMELTED, 0), label) == pytest.approx(PLAIN_OTSU_IOU, abs=0.005)


def test_the_real_tiles_are_recognised_as_already_enhanced(real_labelled_tile, real_tile_path):
    assert looks_enhanced(_read(real_labelled_tile[0]))
    assert looks_enhanced(_read(real_tile_path))


def test_classical_default_beats_plain_otsu_on_the_real_labelled_tile(real_labelled_tile):
    image, label = (_read(p) for p in real_labelled_tile)
    result = Analyzer(config.load(None)).analyze(Frame(image, "real_coating_tile_b"))
    assert result.mask is not None
    iou = _iou_unmelted(result.mask, label)
    assert iou >= 0.82 > PLAIN_OTSU_IOU
    # the share the label marks (47 %) and the one the engine measures agree within a few points
    assert abs(result.measurements.metrics["unmelted_fraction_pct"] - 100 * np.mean(label > 127)) <= 5.0


def test_bundled_unet_beats_plain_otsu_on_the_real_labelled_tile(real_labelled_tile):
    """The bundled U-Net was trained on this tile's left 80 %: its right 20 % is scored apart."""
    image, label = (_read(p) for p in real_labelled_tile)
    result = Analyzer(config.parse_object({"segment": {"engine": "unet"}})).analyze(Frame(image, "real_coating_tile_b"))
    assert result.mask is not None and not result.assessment.out_of_distribution
    assert _iou_unmelted(result.mask, label) >= 0.82 > PLAIN_OTSU_IOU
    strip = slice(205, None)  # never trained on
    assert _iou_unmelted(result.mask[:, strip], label[:, strip]) >= 0.80
    assert result.measurements.metrics["porosity_pct"] < 5.0  # dark lamellae are not pores


def test_both_engines_mark_a_plausible_share_of_the_unlabelled_real_tile(real_tile_path):
    image = _read(real_tile_path)
    for engine in ("classical", "unet"):
        result = Analyzer(config.parse_object({"segment": {"engine": engine}})).analyze(Frame(image, "tile_c"))
        assert not result.assessment.out_of_distribution
        assert 30.0 <= result.measurements.metrics["unmelted_fraction_pct"] <= 80.0, engine
        assert result.measurements.metrics["porosity_pct"] < 6.0, engine
