"""The frame statistics from `kernels.patch_texture` equal the former numpy / OpenCV ones.

The envelopes shipped with the classical engine and in the model cards were fitted with the
former statistics (`ood._texture_statistics_numpy`), so every value must stay within
1e-6 relative of it (1e-7 absolute for values near 0, a tiny fraction of any envelope's
width: at least 0.04). Checked on synthetic v2/v3 frames at 8 and 16 bits, inverted ones,
a full-size frame, noise, flat and tiny frames, and the real tiles where present.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from inspectd import config
from inspectd.analysis import ood
from inspectd.analysis.preprocess import enhance
from inspectd.data import synth

REL = 1e-6
ABS = 1e-7


def _assert_statistics_unchanged(raw: np.ndarray, name: str) -> None:
    enhanced = enhance(raw, config.load(None).preprocess)
    want = ood._frame_statistics(enhanced, raw, ood._texture_statistics_numpy)
    got = ood.frame_statistics(enhanced, raw)
    assert list(got) == list(want)
    for feature in ood.FEATURES:
        assert got[feature] == pytest.approx(want[feature], rel=REL, abs=ABS), (name, feature)


def _raw_frames():
    rng = np.random.default_rng(0)
    for seed in (1, 2, 3):
        for make in (synth.generate, synth.generate_v3):
            raw = make(480, 640, seed=seed).image
            yield f"{make.__name__} {seed}", raw
            yield f"{make.__name__} {seed} inverted", 255 - raw
            yield f"{make.__name__} {seed} 16-bit", raw.astype(np.uint16) * 257
    yield "v3 2560x1920", synth.generate_v3(1920, 2560, seed=9).image
    yield "noise", rng.integers(0, 256, (96, 128), dtype=np.uint8)
    yield "flat", np.full((50, 60), 9, np.uint8)
    yield "two rows", rng.integers(0, 256, (2, 300), dtype=np.uint8)
    yield "tiny", rng.integers(0, 256, (7, 9), dtype=np.uint8)


def test_statistics_equal_the_former_computation():
    for name, raw in _raw_frames():
        _assert_statistics_unchanged(raw, name)


def test_real_tiles_statistics_equal_the_former_computation(real_tile_path, real_labelled_tile):
    for path in (real_tile_path, real_labelled_tile[0]):
        image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        _assert_statistics_unchanged(image, path.name)
        _assert_statistics_unchanged(255 - image, f"{path.name} inverted")
