"""Every analysis carries `confidence` and `out_of_distribution`; a flagged frame is never a silent PASS.

The out-of-distribution targets, for both engines: pure noise, a photograph-like smooth scene
and inverted micrographs (the real tiles, v3 frames with bright particles at 8 and 16 bit, v2
frames) are flagged; held-out synthetic frames (seeds the envelopes were not fitted on: v3 at
256..1024 px, 8 and 16 bit, and for the classical engine v2 too) and the real tiles are not.
The classical engine is held to its shipped envelope (`scripts/build_envelopes.py`: v2 + v3
frames and the real tiles); the U-Net to an envelope fitted here on a small v3 set drawn as its
training set is (`V3_FIT_SETS`), so the test needs no v3 model card. The v3 sets also draw
particles darker than the matrix, which is what made inverted micrographs hard to tell
(`ood`'s `bright_line_excess`). Real frames, real files; nothing is mocked.
"""

from __future__ import annotations

import json
import logging

import cv2
import numpy as np
import pytest

from inspectd import config as config_module
from inspectd.analysis import ood
from inspectd.analysis.analyzer import Analyzer
from inspectd.analysis.engines.base import SegmentationEngine
from inspectd.analysis.engines.registry import create_engine
from inspectd.analysis.preprocess import enhance
from inspectd.analysis.trust import FrameAssessor
from inspectd.config import OodConfig, PreprocessConfig, SegmentConfig
from inspectd.data import synth
from inspectd.errors import ConfigError
from inspectd.training.envelopes import photograph_like, statistics_of_images
from inspectd.types import Frame, VerdictResult
from tests.conftest import SHARED_SAMPLES

ENGINE_KEYS = ("classical", "unet")
REAL_TILES = ("real_coating_tile_b", "real_coating_tile_c")
# Held out: none of these seeds drew a frame of any envelope (v2: 1001-1007, 3001-3012; v3:
# 2001-2004 (the U-Net's training sets), 4001-4008 (classical)). (n, width x height, seed, params)
HELDOUT_V2 = [
    (2, (320, 256), 9101, {}),
    (2, (1024, 768), 9102, {"unmelted_fraction": 0.25, "pore_fraction": 0.05}),
    (2, (1024, 768), 9103, {"bit_depth": 16, "unmelted_fraction": 0.12}),
    (1, (2560, 1920), 9104, {"pore_fraction": 0.08}),
]
HELDOUT_V3 = [
    (4, (256, 256), 9301, {}),
    (3, (512, 512), 9302, {}),
    (2, (1024, 768), 9303, {}),
    (2, (768, 1024), 9304, {}),
    (2, (512, 512), 9305, {"bit_depth": 16}),
    (2, (256, 256), 9306, {"bit_depth": 16}),
]
# The U-Net's envelope here: the first frames of each of scripts/train_bundled_model.sh's v3
# training sets (`inspectd synth --generator v3 --vary`; frame i of a set does not depend on
# its length) and, as there, the left 80 % of real tile b, plus tile c.
V3_FIT_SETS = [
    (32, (512, 512), 2001, {}),
    (12, (1024, 768), 2002, {}),
    (32, (256, 256), 2003, {}),
    (12, (1024, 768), 2004, {"bit_depth": 16}),
]


def real_tile(name: str) -> np.ndarray:
    path = SHARED_SAMPLES / f"{name}.png"
    if not path.is_file():
        pytest.skip(f"../shared/samples/{name}.png is not present")
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)


def inverted_v3(height: int, width: int, seed: int, bit_depth: int = 8) -> np.ndarray:
    """A v3 frame of the default look (bright particles, like the real tiles), inverted."""
    frame = synth.generate_v3(height, width, seed, synth.RealisticParams(bit_depth=bit_depth)).image
    return (65535 if bit_depth == 16 else 255) - frame


def out_of_distribution_frames() -> dict[str, object]:
    """name -> a callable drawing the frame (lazily: the real tiles skip where absent)."""
    rng = np.random.default_rng(5)
    return {
        "noise 256x256": lambda: rng.integers(0, 256, (256, 256), dtype=np.uint8),
        "noise 2560x1920": lambda: rng.integers(0, 256, (1920, 2560), dtype=np.uint8),
        "photograph-like": lambda: photograph_like(768, 1024),
        "inverted v2 1024x768": lambda: 255 - synth.generate(768, 1024, seed=3).image,
        "inverted v2 2560x1920": lambda: 255 - synth.generate(1920, 2560, seed=1).image,
        "inverted v3 1024x768": lambda: inverted_v3(768, 1024, seed=1),
        "inverted v3 256x256": lambda: inverted_v3(256, 256, seed=2),
        "inverted v3 16-bit 1024x768": lambda: inverted_v3(768, 1024, seed=6, bit_depth=16),
        "inverted real b": lambda: 255 - real_tile("real_coating_tile_b"),
        "inverted real c": lambda: 255 - real_tile("real_coating_tile_c"),
    }


def _write_sets(folder, generator: str, sets: list) -> list:
    """Each (n, (width, height), seed, params) set as `inspectd synth --generator G --vary` writes it; the paths."""
    paths = []
    for n, (width, height), seed, params in sets:
        params = synth.SynthParams(**params) if generator == "v2" else synth.RealisticParams(**params)
        paths += synth.write_dataset(folder / f"{generator}-{seed}", n, height, width, seed, params, vary=True,
                                     generator=generator)
    return paths


@pytest.fixture(scope="module")
def heldout_frames(tmp_path_factory) -> dict[str, list[tuple[str, np.ndarray]]]:
    """generator -> [(name, raw frame)] of the held-out sets."""
    folder = tmp_path_factory.mktemp("heldout")
    return {generator: [(f"{path.parent.name}/{path.stem}", cv2.imread(str(path), cv2.IMREAD_UNCHANGED))
                        for path in _write_sets(folder, generator, sets)]
            for generator, sets in (("v2", HELDOUT_V2), ("v3", HELDOUT_V3))}


@pytest.fixture(scope="module")
def v3_envelope_path(tmp_path_factory):
    """An envelope of `V3_FIT_SETS` and the real tiles (where present), as JSON."""
    folder = tmp_path_factory.mktemp("v3-fit")
    rows = statistics_of_images(_write_sets(folder, "v3", V3_FIT_SETS), PreprocessConfig())
    for name, width_share in (("real_coating_tile_b", 0.8), ("real_coating_tile_c", 1.0)):
        path = SHARED_SAMPLES / f"{name}.png"
        if path.is_file():
            tile = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
            part = tile[:, :tile.shape[1] - round((1.0 - width_share) * tile.shape[1])]
            rows += [ood.frame_statistics(part), ood.frame_statistics(enhance(part, PreprocessConfig(), backend="cpu"),
                                                                      part)]
    path = folder / "v3-envelope.json"
    path.write_text(json.dumps(ood.fit_envelope(rows, sources=["tests/analysis/test_trust.py V3_FIT_SETS"])))
    return path


@pytest.fixture(scope="module")
def assessors(v3_envelope_path) -> dict[str, FrameAssessor]:
    """The classical engine with its shipped envelope; the U-Net with the v3 envelope fitted here."""
    return {"classical": FrameAssessor(create_engine(SegmentConfig(engine="classical", backend="cpu")), OodConfig()),
            "unet": FrameAssessor(create_engine(SegmentConfig(engine="unet", backend="cpu")),
                                  OodConfig(envelope=v3_envelope_path))}


def _assess(assessor: FrameAssessor, raw: np.ndarray):
    return assessor.assess(raw, enhance(raw, PreprocessConfig(), backend="cpu"), confidence=None)


# --------------------------------------------------------------------------- the targets, both engines


@pytest.mark.parametrize("engine_key", ENGINE_KEYS)
@pytest.mark.parametrize("case", list(out_of_distribution_frames()))
def test_noise_photographs_and_inverted_micrographs_are_flagged(assessors, engine_key, case) -> None:
    assessment = _assess(assessors[engine_key], out_of_distribution_frames()[case]())
    assert assessment.out_of_distribution, (case, assessment)
    assert assessment.ood_distance > 1.0 and assessment.ood_reasons
    assert all(reason.split()[0] in ood.FEATURES for reason in assessment.ood_reasons)


@pytest.mark.parametrize(("engine_key", "generator"), [("classical", "v2"), ("classical", "v3"), ("unet", "v3")])
def test_heldout_synthetic_frames_are_not_flagged(assessors, heldout_frames, engine_key, generator) -> None:
    for name, raw in heldout_frames[generator]:
        assessment = _assess(assessors[engine_key], raw)
        assert not assessment.out_of_distribution, (name, assessment)


@pytest.mark.parametrize("engine_key", ENGINE_KEYS)
@pytest.mark.parametrize("tile", REAL_TILES)
def test_real_tiles_are_not_flagged(assessors, engine_key, tile) -> None:
    assessment = _assess(assessors[engine_key], real_tile(tile))
    assert not assessment.out_of_distribution, assessment


def test_thin_lines_lean_dark_whatever_the_particles_and_bright_when_inverted() -> None:
    # Particles darker than the matrix flip the histogram's shape, not the lines: outlines,
    # cracks and stringers stay dark, and only an inverted frame has them bright.
    dark_particles = synth.generate_v3(512, 512, 7, synth.RealisticParams(particle_contrast=-0.8)).image
    for frame in (dark_particles, synth.generate_v3(512, 512, 7, synth.RealisticParams()).image):
        upright, inverted = ood.frame_statistics(frame), ood.frame_statistics(255 - frame)
        assert upright["bright_line_excess"] < 0.0 < inverted["bright_line_excess"]
    flat = ood.frame_statistics(np.full((64, 64), 100, np.uint8))
    assert flat["bright_line_excess"] == 0.0  # no lines at all: no lean either way


def test_inversion_flips_the_raw_histogram_shape() -> None:
    raw = synth.generate(256, 320, seed=4).image
    upright, inverted = ood.frame_statistics(raw), ood.frame_statistics(255 - raw)
    assert upright["raw_skewness"] == pytest.approx(-inverted["raw_skewness"], abs=1e-9)
    assert upright["raw_tail_ratio"] == pytest.approx(-inverted["raw_tail_ratio"], abs=0.05)
    assert upright["raw_skewness"] < 0 < inverted["raw_skewness"]  # a micrograph's long tail is dark


# --------------------------------------------------------------------------- through the analyzer


def _analyzer(engine_key: str, action: str = "error", **trust) -> Analyzer:
    return Analyzer(config_module.parse_object({
        "segment": {"engine": engine_key, "backend": "cpu"},
        "rules": [{"metric": "porosity_pct", "op": "<=", "limit": 100.0}],
        "trust": {"ood": {"action": action, **trust}}}))


@pytest.fixture(scope="module")
def micrograph() -> np.ndarray:
    """A raw camera-like frame of the realistic generator (the bundled U-Net's kind of frame)."""
    return synth.generate_v3(384, 512, seed=21, params=synth.RealisticParams(enhance=False)).image


@pytest.mark.parametrize("engine_key", ENGINE_KEYS)
def test_every_analysis_carries_a_confidence_and_the_flag(engine_key, micrograph) -> None:
    analyzer = _analyzer(engine_key)
    result = analyzer.analyze(Frame(micrograph, "micrograph.png"))
    assert result.verdict.result is VerdictResult.PASS and result.verdict.warnings == ()
    assert result.assessment is not None and result.assessment.out_of_distribution is False
    assert 0.0 <= result.assessment.confidence <= 1.0
    assert "ood" in result.verdict.timings_ms
    noise = np.random.default_rng(1).integers(0, 256, micrograph.shape, dtype=np.uint8)
    flagged = analyzer.analyze(Frame(noise, "noise.png"))
    assert 0.0 <= flagged.assessment.confidence <= 1.0
    if engine_key == "unet":  # the network is far less decided on noise than on a micrograph
        assert flagged.assessment.confidence < result.assessment.confidence - 0.2


@pytest.mark.parametrize("engine_key", ENGINE_KEYS)
def test_action_error_makes_a_flagged_frame_an_error_naming_the_statistics(engine_key) -> None:
    noise = np.random.default_rng(2).integers(0, 256, (300, 400), dtype=np.uint8)
    result = _analyzer(engine_key, "error").analyze(Frame(noise, "noise.png"))
    assert result.verdict.result is VerdictResult.ERROR
    assert result.verdict.reason.startswith(f"out of distribution for the {engine_key} engine")
    assert "log2_gradient_energy" in result.verdict.reason
    assert result.assessment.out_of_distribution and result.measurements is None
    assert result.mask is not None and result.mask.shape == noise.shape  # kept for review, not measured


@pytest.mark.parametrize("engine_key", ENGINE_KEYS)
def test_action_warn_keeps_pass_or_fail_with_the_flag_and_a_warning(engine_key) -> None:
    inverted = 255 - synth.generate(384, 512, seed=22).image
    result = _analyzer(engine_key, "warn").analyze(Frame(inverted, "inverted.png"))
    assert result.verdict.result is VerdictResult.PASS  # the rule allows any porosity
    assert result.assessment.out_of_distribution
    (warning,) = result.verdict.warnings
    assert warning.startswith("warning: out of distribution") and "bright_line_excess" in warning  # white outlines
    assert result.measurements is not None and result.mask is not None
    failing = Analyzer(config_module.parse_object({
        "segment": {"engine": engine_key, "backend": "cpu"}, "trust": {"ood": {"action": "warn"}},
        "rules": [{"metric": "porosity_pct", "op": "<", "limit": 0.0}]})).analyze(Frame(inverted, "inverted.png"))
    assert failing.verdict.result is VerdictResult.FAIL and failing.verdict.warnings


def test_a_configured_envelope_replaces_the_engines_own(tmp_path) -> None:
    rng = np.random.default_rng(3)
    noise_frames = [rng.integers(0, 256, (200, 260), dtype=np.uint8) for _ in range(4)]
    envelope = ood.fit_envelope([ood.frame_statistics(frame) for frame in noise_frames], sources=["noise"])
    path = tmp_path / "noise-envelope.json"
    path.write_text(json.dumps(envelope))
    analyzer = _analyzer("classical", envelope=str(path))
    noise = rng.integers(0, 256, (200, 260), dtype=np.uint8)
    assert analyzer.analyze(Frame(noise, "noise.png")).assessment.out_of_distribution is False
    assert analyzer.analyze(Frame(synth.generate(200, 260, seed=2).image, "m.png")).assessment.out_of_distribution


def test_an_unusable_configured_envelope_stops_start_up(tmp_path) -> None:
    stale = ood.fit_envelope([{name: 0.0 for name in ood.FEATURES}])
    stale["statistics_version"] = "0"
    path = tmp_path / "stale.json"
    path.write_text(json.dumps(stale))
    with pytest.raises(ConfigError, match="rebuild it with scripts/build_envelopes.py"):
        _analyzer("classical", envelope=str(path))
    with pytest.raises(ConfigError, match="cannot read"):
        _analyzer("classical", envelope=str(tmp_path / "missing.json"))


def test_an_engine_without_an_envelope_falls_back_to_the_classical_one_with_a_warning(caplog) -> None:
    class CardlessEngine(SegmentationEngine):
        KEY = ""  # not registered

        def forward(self, prepared):
            return np.zeros(prepared.shape, np.uint8)

    with caplog.at_level(logging.WARNING, logger="inspectd.analysis.trust"):
        assessor = FrameAssessor(CardlessEngine(SegmentConfig()), OodConfig())
    assert assessor.envelope_origin.endswith("classical-envelope.json")
    assert "no training envelope" in caplog.text
    assert CardlessEngine(SegmentConfig()).segment_assessed(np.zeros((8, 8), np.uint8)).confidence is None


def test_envelopes_survive_json_and_refuse_other_versions(tmp_path) -> None:
    rows = [ood.frame_statistics(synth.generate(128, 160, seed=s).image) for s in range(3)]
    envelope = ood.fit_envelope(rows, sources=["three small frames"])
    path = tmp_path / "e.json"
    path.write_text(json.dumps(envelope))
    loaded = ood.load_envelope(path)
    assert ood.assess(rows[0], loaded) == ood.assess(rows[0], envelope)
    assert ood.assess(rows[0], loaded).out_of_distribution is False
    card = tmp_path / "card.json"
    card.write_text(json.dumps({"format": "inspectd-model-card/1", "envelope": None}))
    with pytest.raises(ConfigError, match="has no out-of-distribution envelope"):
        ood.load_envelope(card)
    with pytest.raises(ConfigError, match="not an out-of-distribution envelope"):
        ood.check_envelope({"format": "something else"}, "x.json")
