"""The bundled model `inspectd/models/unet-coating-v3.onnx`, its int8 twin and their card (no torch needed)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

import inspectd
from inspectd.analysis import ood
from inspectd.analysis.engines import create_engine
from inspectd.analysis.engines import unet as unet_module
from inspectd.analysis.engines import unet_contract as contract
from inspectd.analysis.engines.cpu_int8 import int8_dot_product
from inspectd.analysis.preprocess import enhance
from inspectd.config import PreprocessConfig, SegmentConfig, UnetConfig
from inspectd.data.scores import confusion_matrix, iou_per_class
from inspectd.data.synth import RealisticParams, generate_v3, vary_realistic, write_dataset
from inspectd.training.envelopes import statistics_of_frame
from inspectd.training.quantize import mask_agreement
from inspectd.types import MELTED, UNMELTED

REPO = Path(__file__).resolve().parents[2]
MODELS = Path(inspectd.__file__).parent / "models"
MODEL_PATH = MODELS / contract.BUNDLED_MODEL
INT8_PATH = MODELS / contract.BUNDLED_INT8_MODEL
CARD_PATH = MODELS / contract.BUNDLED_CARD


@pytest.fixture(scope="module")
def card() -> dict:
    return json.loads(CARD_PATH.read_text(encoding="utf-8"))


@pytest.mark.parametrize("path", [MODEL_PATH, INT8_PATH], ids=["fp32", "int8"])
def test_bundled_models_have_the_contract_names_and_dynamic_size(path: Path) -> None:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (model_input,), (model_output,) = session.get_inputs(), session.get_outputs()
    assert model_input.name == contract.INPUT_NAME and model_output.name == contract.AFFINE_OUTPUT_NAME
    assert model_input.type == "tensor(float)"
    batch, channels, height, width = model_input.shape
    assert channels == 1 and all(isinstance(d, str) for d in (batch, height, width))
    for shape in [(1, 1, 64, 96), (2, 1, 96, 32)]:
        (pairs,) = session.run(None, {contract.INPUT_NAME: np.zeros(shape, np.float32)})
        assert pairs.shape == (shape[0], 2 * contract.N_CLASSES, shape[2] // 4, shape[3] // 4)


def test_card_sha256_matches_the_files(card: dict) -> None:
    for record, path in ((card["file"], MODEL_PATH), (card["int8"]["file"], INT8_PATH)):
        assert record["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert record["name"] == path.name
        assert record["bytes"] == path.stat().st_size < 10_000_000


def test_card_contract_is_what_the_files_do(card: dict) -> None:
    """Names, classes, output stride and dynamic axes, read from the ONNX files, not from the card."""
    for path in (MODEL_PATH, INT8_PATH):
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        (model_input,), (model_output,) = session.get_inputs(), session.get_outputs()
        assert card["contract"]["input"]["name"] == model_input.name
        assert card["contract"]["output"]["name"] == model_output.name
        (pairs,) = session.run(None, {model_input.name: np.zeros((1, 1, 64, 96), np.float32)})
        assert card["architecture"]["output_stride"] == 64 // pairs.shape[2] == 96 // pairs.shape[3]
        assert card["architecture"]["n_classes"] == pairs.shape[1] // 2 == len(card["contract"]["output"]["classes"])
        assert len(card["file"]["dynamic_axes"]) == sum(isinstance(d, str) for d in model_input.shape)
    assert "train --images" in card["training"]["train_command"]
    assert "--oversample 'real_*=" in card["training"]["train_command"]  # the real labelled field trained too


def test_card_envelope_bounds_follow_from_its_fit_and_hold_a_training_frame(card: dict) -> None:
    envelope = ood.check_envelope(card["envelope"], "the bundled card")
    for name, bounds in envelope["features"].items():
        low, high, centre = bounds["fit_min"], bounds["fit_max"], bounds["centre"]
        widen = envelope["margin"] * (high - low)
        assert bounds["lower"] == pytest.approx(min(low - widen, centre - ood.MIN_HALF_WIDTH)), name
        assert bounds["upper"] == pytest.approx(max(high + widen, centre + ood.MIN_HALF_WIDTH)), name
    # The first frame of the first training set (scripts/train_bundled_model.sh: a8, 512x512, seed 2001)
    # was one of the frames the envelope was fitted on: each statistic lies inside the fitted range.
    sample_seed = int(np.random.SeedSequence([2001, 0]).generate_state(1)[0])
    frame = generate_v3(512, 512, sample_seed, vary_realistic(sample_seed, RealisticParams(), None)).image
    statistics = statistics_of_frame(frame, PreprocessConfig(**card["preprocess"]))
    for name, bounds in envelope["features"].items():
        assert bounds["fit_min"] - 1e-6 <= statistics[name] <= bounds["fit_max"] + 1e-6, name
    assert not ood.assess(statistics, envelope).out_of_distribution


def _heldout_subset(n: int) -> list:
    """The first `n` frames of the card's 256x256 held-out set (j8: seed 9003, v3, varied looks)."""
    frames = []
    for index in range(n):
        sample_seed = int(np.random.SeedSequence([9003, index]).generate_state(1)[0])
        frames.append(generate_v3(256, 256, sample_seed, vary_realistic(sample_seed, RealisticParams(), None)))
    return frames


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_heldout_claims_hold_on_a_subset_recomputed_here(card: dict, precision: str) -> None:
    """The card's held-out claim, recomputed on 12 of its frames: the U-Net beats the classical
    engine on melted and unmelted, and its unmelted IoU is near the card's pooled figure."""
    engines = {"classical": create_engine(SegmentConfig(engine="classical")),
               "unet@1": create_engine(SegmentConfig(engine="unet", backend="cpu",
                                                     unet=UnetConfig(precision=precision)))}
    confusion = {name: np.zeros((3, 3), np.int64) for name in engines}
    for sample in _heldout_subset(12):
        enhanced = enhance(sample.image, PreprocessConfig())
        for name, engine in engines.items():
            confusion[name] += confusion_matrix(engine.segment(enhanced), sample.mask, 3)
    unet, classical = iou_per_class(confusion["unet@1"]), iou_per_class(confusion["classical"])
    assert unet[MELTED] > classical[MELTED] and unet[UNMELTED] > classical[UNMELTED]
    heldout = card["heldout"] if precision == "fp32" else card["int8"]["heldout"]
    assert unet[UNMELTED] == pytest.approx(heldout["synthetic_v3"]["engines"]["unet@1"]["iou_unmelted"], abs=0.05)


@pytest.mark.slow
def test_heldout_figures_recomputed_on_the_whole_set(card: dict, tmp_path: Path) -> None:
    """The whole held-out set regenerated as scripts/train_bundled_model.sh writes it, scored by
    scripts/heldout_metrics.py: the classical engine's figures exactly, the U-Net's to 0.005."""
    images, masks = tmp_path / "images", tmp_path / "masks"
    for name, n, (width, height), seed, bit_depth in (("h8", 24, (512, 512), 9001, 8), ("i8", 12, (1024, 768), 9002, 8),
                                                      ("j8", 24, (256, 256), 9003, 8),
                                                      ("k16", 8, (1024, 768), 9004, 16)):
        folder = tmp_path / name
        write_dataset(folder / "images", n, height, width, seed, params=RealisticParams(bit_depth=bit_depth),
                      vary=True, masks_dir=folder / "masks", generator="v3")
        for kind, target in (("images", images), ("masks", masks)):
            target.mkdir(exist_ok=True)
            for path in (folder / kind).glob("*.png"):
                path.rename(target / f"{name}_{path.name}")
    spec = importlib.util.spec_from_file_location("heldout_metrics", REPO / "scripts" / "heldout_metrics.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "synthetic.json"
    assert script.main(["--onnx", str(MODEL_PATH), "--scales", "1.0", "--images", str(images),
                        "--masks", str(masks), "--json", str(out)]) == 0
    measured = json.loads(out.read_text())
    claimed = card["heldout"]["synthetic_v3"]
    assert measured["images"] == claimed["images"]
    for engine, tolerance in (("classical", 1e-4), ("unet@1", 0.005)):
        for key in ("iou_melted", "iou_unmelted", "iou_pore", "pixel_accuracy"):
            assert measured["engines"][engine][key] == pytest.approx(claimed["engines"][engine][key], abs=tolerance)


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_bundled_model_segments_an_unseen_generated_frame(precision: str) -> None:
    # A seed and parameters outside the training sets; a raw 16-bit frame through the pipeline CLAHE.
    sample = generate_v3(320, 384, seed=770_001, params=RealisticParams(particle_fraction=0.35, bit_depth=16,
                                                                         enhance=False, lamella_angle_deg=30.0))
    engine = create_engine(SegmentConfig(engine="unet", backend="cpu", unet=UnetConfig(precision=precision)))
    predicted = engine.segment(enhance(sample.image, PreprocessConfig()))
    assert engine.model_path.name == (contract.BUNDLED_INT8_MODEL if precision == "int8" else contract.BUNDLED_MODEL)
    truth = sample.mask
    overlap = np.count_nonzero((predicted == UNMELTED) & (truth == UNMELTED))
    union = np.count_nonzero((predicted == UNMELTED) | (truth == UNMELTED))
    assert overlap / union > 0.8


def test_int8_file_agrees_with_fp32_on_this_cpu() -> None:
    """The card's agreement was measured on the CPU that made the file; ONNX Runtime's int8
    arithmetic differs between CPUs (AVX2 alone saturated 8-bit weights), so check it here too."""
    sample = generate_v3(384, 512, seed=770_002, params=RealisticParams(enhance=False))
    assert mask_agreement(MODEL_PATH, INT8_PATH, [enhance(sample.image, PreprocessConfig())]) >= 0.98


def test_auto_precision_runs_int8_only_on_a_cpu_with_8bit_dot_products(caplog) -> None:
    has_dot_product, reason = int8_dot_product()
    engine = create_engine(SegmentConfig(engine="unet", backend="cpu"))
    unet_module._log_precision_once.cache_clear()  # logged once per process: an earlier test may have had it
    with caplog.at_level(logging.INFO, logger="inspectd.analysis.engines.unet"):
        engine.load()
    assert engine.model_path == (INT8_PATH if has_dot_product else MODEL_PATH)
    choice = "int8" if has_dot_product else "fp32"
    assert f"precision auto: the {choice} model on the CPU ({reason})" in caplog.text
