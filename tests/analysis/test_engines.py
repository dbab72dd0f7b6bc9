"""Segmentation engines: the registry, the shared interface, and the classical engine's accuracy.

Accuracy floors are measured on synthetic frames (`inspectd.data.synth`, 512x512, seeds 300-302,
CLAHE as in the pipeline) and set with a margin below what the engine reached when written:

    threshold: otsu                    IoU pore 0.58-0.66, porosity error +0.3..+0.6 points,
                                       IoU unmelted 0.17-0.18 and the unmelted fraction
                                       over-estimated by +51..+53 points: the generator's
                                       lamellar matrix is as bright as the particles, so one
                                       Otsu split runs through the matrix
    default: otsu_upper, open 4 px     IoU melted 0.77-0.80, IoU unmelted 0.31-0.34,
                                       unmelted fraction error +3.6..+5.7 points

The generator is still being tuned; if it changes, re-measure before moving a floor.
The engine is timed by hand, never here (no wall-clock asserts on a shared 2-core machine).
"""

from __future__ import annotations

import logging
import sys
import textwrap

import cv2
import numpy as np
import pytest

from inspectd.analysis.engines import ENGINES, SegmentationEngine, create_engine
from inspectd.analysis.engines.classical import ClassicalEngine, upper_otsu_threshold
from inspectd.analysis.engines.registry import load_engines
from inspectd.analysis.preprocess import enhance
from inspectd.config import (
    ClassicalConfig,
    PreprocessConfig,
    SegmentConfig,
    SlicConfig,
)
from inspectd.data.synth import SynthParams, generate
from inspectd.errors import EngineError
from inspectd.types import MELTED, PORE, UNMELTED

SYNTH_SEEDS = (300, 301, 302)
SYNTH_SIZE = (512, 512)
# The classical defaults before they were re-derived on real micrographs (otsu_upper, heavy
# smoothing and opening): their known answers on the v2 generator stay checked.
V2_TUNED = {"threshold": "otsu_upper", "smooth_sigma_px": 2.0, "open_radius_px": 4, "close_radius_px": 2}


def _iou(predicted: np.ndarray, truth: np.ndarray, cls: int) -> float:
    a, b = predicted == cls, truth == cls
    union = np.count_nonzero(a | b)
    return np.count_nonzero(a & b) / union if union else 1.0


def _fraction_pct(mask: np.ndarray, cls: int) -> float:
    return 100.0 * np.count_nonzero(mask == cls) / mask.size


@pytest.fixture(scope="module")
def synth_frames():
    """(CLAHE-enhanced frame, truth mask) for a few seeded synthetic micrographs."""
    frames = []
    for seed in SYNTH_SEEDS:
        sample = generate(*SYNTH_SIZE, seed=seed)
        frames.append((enhance(sample.image, PreprocessConfig()), sample.mask))
    return frames


def _classical(**classical_kwargs) -> ClassicalEngine:
    engine = ClassicalEngine(SegmentConfig(classical=ClassicalConfig(**classical_kwargs)))
    engine.load()
    return engine


# --------------------------------------------------------------------------- registry


def test_registry_has_classical_and_every_engine_implements_the_interface():
    assert "classical" in ENGINES
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (48, 64), dtype=np.uint8)
    for key, engine_cls in ENGINES.items():
        assert issubclass(engine_cls, SegmentationEngine)
        assert engine_cls.KEY == key
        engine = create_engine(SegmentConfig(engine=key))
        assert isinstance(engine, engine_cls)
        assert engine.name == key
        engine.load()
        engine.load()  # idempotent
        engine.warm_up()
        assert isinstance(engine.backend, str) and engine.backend
        assert engine.model_hash is None or isinstance(engine.model_hash, str)
        for image in (frame, frame.astype(np.uint16) * 257):
            mask = engine.segment(image)
            assert mask.dtype == np.uint8
            assert mask.shape == image.shape
            assert set(np.unique(mask).tolist()) <= {MELTED, UNMELTED, PORE}
            assessed = engine.segment_assessed(image)  # the analyzer's call: the same mask, and a confidence
            assert np.array_equal(assessed.mask, mask)
            assert isinstance(assessed.confidence, float) and 0.0 <= assessed.confidence <= 1.0, key
        assert engine.envelope_path is not None and engine.envelope_path.is_file(), key


def test_unknown_engine_is_an_engine_error_naming_the_choices():
    with pytest.raises(EngineError) as excinfo:
        create_engine(SegmentConfig(engine="no-such-engine"))
    message = str(excinfo.value)
    assert "no-such-engine" in message
    for key in ENGINES:
        assert key in message


def test_plugin_with_missing_runtime_is_logged_and_skipped(tmp_path, monkeypatch, caplog):
    package = tmp_path / "fake_engine_plugins"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "broken.py").write_text(textwrap.dedent("""
        import a_runtime_that_is_not_installed_xyz
        from inspectd.analysis.engines.base import SegmentationEngine

        class BrokenEngine(SegmentationEngine):
            KEY = "broken-test-engine"
    """))
    (package / "working.py").write_text(textwrap.dedent("""
        import numpy as np
        from inspectd.analysis.engines.base import SegmentationEngine

        class ZeroEngine(SegmentationEngine):
            KEY = "zero-test-engine"

            def forward(self, prepared):
                return np.zeros(prepared.shape, np.uint8)
    """))
    monkeypatch.syspath_prepend(str(tmp_path))

    try:
        with caplog.at_level(logging.WARNING, logger="inspectd.plugins"):
            registry = load_engines("fake_engine_plugins")
        assert list(registry.failures) == ["fake_engine_plugins.broken"]
        failure = registry.failures["fake_engine_plugins.broken"]
        assert failure.missing == "a_runtime_that_is_not_installed_xyz"
        assert failure.keys == ("broken-test-engine",)
        assert "fake_engine_plugins.broken" in caplog.text and "a_runtime_that_is_not_installed_xyz" in caplog.text
        message = registry.describe_missing("broken-test-engine")
        assert "not usable here" in message and "a_runtime_that_is_not_installed_xyz" in message
        assert registry.classes["zero-test-engine"].__module__ == "fake_engine_plugins.working"
        assert "classical" not in registry.classes  # only what the scanned modules define
        engine = registry.classes["zero-test-engine"](SegmentConfig())
        assert engine.segment(np.ones((4, 5), np.uint8)).shape == (4, 5)
    finally:
        for name in [m for m in sys.modules if m.startswith("fake_engine_plugins")]:
            del sys.modules[name]


def test_engine_output_is_checked():
    class BadEngine(SegmentationEngine):
        KEY = ""  # not registered

        def forward(self, prepared):
            return np.zeros((2, 2), np.int32)

    with pytest.raises(EngineError, match="uint8"):
        BadEngine(SegmentConfig()).segment(np.zeros((4, 4), np.uint8))


@pytest.mark.parametrize(
    "bad_input",
    [np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4), np.float32), np.zeros((0, 4), np.uint8), [[1, 2]]],
)
def test_bad_engine_input_is_an_engine_error(bad_input):
    with pytest.raises(EngineError):
        create_engine(SegmentConfig()).segment(bad_input)


# --------------------------------------------------------------------------- classical


def test_classical_properties():
    engine = create_engine(SegmentConfig(engine="classical", backend="cpu"))
    assert engine.name == "classical"
    assert engine.backend == "cpu"
    assert engine.model_hash is None


def test_compact_dark_blob_is_a_pore_and_thin_cracks_stay_melted():
    image = np.full((200, 200), 140, np.uint8)
    for centre in ((40, 40), (150, 60), (60, 150)):
        cv2.circle(image, centre, 18, 235, -1)
    cv2.circle(image, (140, 150), 7, 8, -1)  # a pore
    cv2.line(image, (10, 110), (190, 100), 8, 1)  # a 1 px crack
    cv2.polylines(image, [np.array([[10, 185], [60, 175], [110, 190], [190, 170]])], False, 8, 2)
    mask = _classical().segment(image)
    assert mask[150, 140] == PORE
    assert np.count_nonzero(mask[140:161, 130:151] == PORE) > 0.8 * np.pi * 7**2
    assert np.count_nonzero(mask[95:115, :] == PORE) == 0  # the straight crack
    assert np.count_nonzero(mask[165:195, :] == PORE) == 0  # the bent crack
    assert mask[40, 40] == UNMELTED and mask[60, 150] == UNMELTED
    assert mask[120, 20] == MELTED


def test_uniform_frames_do_not_crash_and_black_is_not_porous():
    engine = _classical()
    for value in (0, 128, 255):
        mask = engine.segment(np.full((32, 32), value, np.uint8))
        assert mask.shape == (32, 32)
        assert not np.any(mask == PORE)


def test_single_otsu_accuracy_on_synthetic_frames(synth_frames):
    engine = _classical(threshold="otsu", open_radius_px=2)
    for enhanced, truth in synth_frames:
        mask = engine.segment(enhanced)
        assert _iou(mask, truth, PORE) >= 0.45
        assert _iou(mask, truth, UNMELTED) >= 0.12
        assert abs(_fraction_pct(mask, PORE) - _fraction_pct(truth, PORE)) <= 2.0
        # Known weakness of one Otsu split on this generator: over-estimates unmelted.
        unmelted_error_pct = _fraction_pct(mask, UNMELTED) - _fraction_pct(truth, UNMELTED)
        assert -5.0 <= unmelted_error_pct <= 65.0


def test_upper_otsu_is_closer_on_synthetic_frames(synth_frames):
    engine = _classical(**V2_TUNED)  # otsu_upper, open 4 px: made for the v2 generator's frames
    for enhanced, truth in synth_frames:
        mask = engine.segment(enhanced)
        assert _iou(mask, truth, MELTED) >= 0.6
        assert _iou(mask, truth, UNMELTED) >= 0.2
        assert _iou(mask, truth, PORE) >= 0.45
        unmelted_error_pct = _fraction_pct(mask, UNMELTED) - _fraction_pct(truth, UNMELTED)
        assert abs(unmelted_error_pct) <= 20.0
        assert abs(_fraction_pct(mask, UNMELTED) - _fraction_pct(truth, UNMELTED)) <= 15.0


def test_upper_otsu_threshold_splits_the_bright_side_again():
    image = np.repeat(np.repeat(np.array([[10, 100, 200]], np.uint8), 8, axis=1), 8, axis=0)
    assert upper_otsu_threshold(image, 10) == 100
    assert upper_otsu_threshold(image, 250) == 250  # nothing above: stays


def test_uint16_gives_nearly_the_same_mask_as_uint8(synth_frames):
    engine = _classical()
    for enhanced, _ in synth_frames[:2]:
        mask8 = engine.segment(enhanced)
        mask16 = engine.segment(enhanced.astype(np.uint16) * 257)
        assert np.mean(mask8 == mask16) >= 0.98
        for cls in (UNMELTED, PORE):
            assert abs(_fraction_pct(mask8, cls) - _fraction_pct(mask16, cls)) <= 1.0


def test_sixteen_bit_camera_frame_is_segmented_like_its_eight_bit_twin():
    """The same scene drawn at 8 and at 16 bits (own noise and rounding), segmented unenhanced.

    (Through CLAHE the twins differ: OpenCV's 16-bit CLAHE clips per 1/65536 bin, so with
    small tiles it hardly clips at all, and its output is not the 8-bit output x257.)
    """
    s8 = generate(256, 256, seed=310)
    s16 = generate(256, 256, seed=310, params=SynthParams(bit_depth=16))
    assert s16.image.dtype == np.uint16
    engine = _classical()
    mask8 = engine.segment(s8.image)
    mask16 = engine.segment(s16.image)
    assert np.mean(mask8 == mask16) >= 0.97
    assert abs(_iou(mask16, s16.mask, PORE) - _iou(mask8, s8.mask, PORE)) <= 0.05


@pytest.mark.parametrize("method", ["fixed", "adaptive"])
def test_other_threshold_methods_run(method, synth_frames):
    enhanced, _ = synth_frames[0]
    mask = _classical(threshold=method, fixed_threshold=180, adaptive_offset=-20).segment(enhanced)
    assert mask.shape == enhanced.shape
    assert 0.0 < _fraction_pct(mask, UNMELTED) < 80.0


def test_fixed_threshold_is_in_the_frames_grey_levels():
    image = np.full((40, 40), 150, np.uint8)
    assert not np.any(_classical(threshold="fixed", fixed_threshold=200).segment(image) == UNMELTED)
    assert np.all(_classical(threshold="fixed", fixed_threshold=100).segment(image) == UNMELTED)
    image16 = image.astype(np.uint16) * 257
    assert np.all(_classical(threshold="fixed", fixed_threshold=100 * 257).segment(image16) == UNMELTED)


def test_slic_vote_runs_and_returns_a_valid_mask(synth_frames):
    enhanced, truth = synth_frames[0]
    crop, crop_truth = enhanced[:160, :200], truth[:160, :200]
    engine = _classical(slic=SlicConfig(enabled=True, n_segments=120, compactness=20.0))
    mask = engine.segment(crop)
    assert mask.shape == crop.shape and mask.dtype == np.uint8
    assert set(np.unique(mask).tolist()) <= {MELTED, UNMELTED, PORE}
    # pores are laid over the vote at pixel level, so they survive big superpixels
    plain = _classical().segment(crop)
    assert np.array_equal(mask == PORE, plain == PORE)
    assert _iou(mask, crop_truth, PORE) > 0.3


def test_fast_slic_missing_is_an_engine_error_with_an_install_hint():
    pytest.importorskip("skimage")
    try:
        import fast_slic  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("fast_slic is installed here")
    engine = ClassicalEngine(SegmentConfig(classical=ClassicalConfig(
        slic=SlicConfig(enabled=True, implementation="fast_slic"))))
    with pytest.raises(EngineError, match="pip install"):
        engine.load()


def test_fast_slic_vote_agrees_with_the_skimage_vote_when_installed(synth_frames):
    pytest.importorskip("fast_slic")
    enhanced, truth = synth_frames[0]
    masks = {}
    for implementation in ("skimage", "fast_slic"):
        engine = ClassicalEngine(SegmentConfig(classical=ClassicalConfig(
            **V2_TUNED, slic=SlicConfig(enabled=True, implementation=implementation, n_segments=800, compactness=20))))
        engine.load()
        masks[implementation] = engine.segment(enhanced)
    fast, reference = masks["fast_slic"], masks["skimage"]
    assert fast.dtype == np.uint8 and set(np.unique(fast)) <= {MELTED, UNMELTED, PORE}
    assert np.array_equal(fast == PORE, reference == PORE)  # pores are laid back per pixel
    assert _iou(fast, reference, UNMELTED) > 0.4  # two SLIC implementations: different superpixels
    assert _iou(fast, truth, UNMELTED) >= 0.2


def test_real_tile_gives_a_plausible_mask(real_tile_path):
    image = cv2.imread(str(real_tile_path), cv2.IMREAD_GRAYSCALE)
    mask = _classical().segment(image)  # the tile is already CLAHE-enhanced
    assert mask.shape == image.shape
    assert 0.5 < _fraction_pct(mask, PORE) < 10.0
    assert 10.0 < _fraction_pct(mask, UNMELTED) < 90.0


def test_dark_is_strictly_below_the_level_for_8_and_16_bit_frames():
    from inspectd.analysis.engines.classical import _dark

    for dtype, top in ((np.uint8, 255), (np.uint16, 65535)):
        image = np.linspace(0, top, 300).astype(dtype).reshape(15, 20)
        for level in (-1.0, 0.0, 0.5, 1.0, 37.2, 100.0, float(top), top + 0.5, top * 3.0):
            dark = _dark(image, level)
            assert dark.dtype == np.uint8 and dark.shape == image.shape
            assert np.array_equal(dark > 0, image < level), (dtype, level)


def test_pores_are_laid_over_with_their_class_index():
    image = np.full((120, 120), 140, np.uint8)
    cv2.circle(image, (40, 40), 25, 235, -1)
    cv2.circle(image, (40, 40), 6, 5, -1)  # a pore inside a particle
    cv2.circle(image, (95, 90), 6, 5, -1)  # a pore in the matrix
    mask = _classical().segment(image)
    assert set(np.unique(mask).tolist()) == {MELTED, UNMELTED, PORE}
    assert mask[40, 40] == PORE and mask[90, 95] == PORE and mask[40, 20] == UNMELTED
