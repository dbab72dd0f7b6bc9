"""The bundled model `inspectd/models/unet-coating-v1.onnx` and its card (no torch needed)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

import inspectd
from inspectd.config import PreprocessConfig
from inspectd.preprocess import enhance
from inspectd.synth import SynthParams, generate
from inspectd.types import UNMELTED
from inspectd.unet import contract

MODELS = Path(inspectd.__file__).parent / "models"
MODEL_PATH = MODELS / contract.BUNDLED_MODEL
CARD_PATH = MODELS / contract.BUNDLED_CARD


@pytest.fixture(scope="module")
def session() -> ort.InferenceSession:
    return ort.InferenceSession(str(MODEL_PATH), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def card() -> dict:
    return json.loads(CARD_PATH.read_text(encoding="utf-8"))


def test_bundled_model_has_the_contract_names_and_dynamic_size(session: ort.InferenceSession) -> None:
    (model_input,), (model_output,) = session.get_inputs(), session.get_outputs()
    assert model_input.name == contract.INPUT_NAME and model_output.name == contract.OUTPUT_NAME
    assert model_input.type == "tensor(float)"
    batch, channels, height, width = model_input.shape
    assert channels == 1 and all(isinstance(d, str) for d in (batch, height, width))
    assert model_output.shape[1] == contract.N_CLASSES
    for shape in [(1, 1, 48, 80), (2, 1, 64, 32)]:
        (logits,) = session.run(None, {contract.INPUT_NAME: np.zeros(shape, np.float32)})
        assert logits.shape == (shape[0], contract.N_CLASSES, shape[2], shape[3])


def test_card_sha256_matches_the_file(card: dict) -> None:
    digest = hashlib.sha256(MODEL_PATH.read_bytes()).hexdigest()
    assert card["file"]["sha256"] == digest
    assert card["file"]["name"] == contract.BUNDLED_MODEL
    assert card["file"]["bytes"] == MODEL_PATH.stat().st_size < 10_000_000


def test_card_records_architecture_training_and_targets(card: dict) -> None:
    arch = card["architecture"]
    assert 0.5e6 <= arch["parameters"] <= 4e6 and arch["gflops_per_512x512"] > 0
    assert card["contract"]["input"]["name"] == contract.INPUT_NAME
    assert "train --images" in card["training"]["train_command"]
    assert card["training"]["data"]["mask_convention"] == "class-index"
    heldout = card["heldout"]["engines"]
    unet, classical = heldout["unet@1"], heldout["classical"]
    assert unet["iou_unmelted"] >= 0.90
    for key in ("iou_melted", "iou_unmelted", "iou_pore"):
        assert unet[key] > classical[key]


def test_bundled_model_segments_an_unseen_generated_frame(session: ort.InferenceSession) -> None:
    # A seed and parameters outside the training sets; a 16-bit frame through the pipeline CLAHE.
    sample = generate(320, 384, seed=770_001, params=SynthParams(unmelted_fraction=0.25, pore_fraction=0.05,
                                                                 bit_depth=16, lamella_angle_deg=30.0))
    inputs = contract.normalise(enhance(sample.image, PreprocessConfig()))
    (logits,) = session.run(None, {contract.INPUT_NAME: inputs})
    predicted = logits[0].argmax(0)
    truth = sample.mask
    overlap = np.count_nonzero((predicted == UNMELTED) & (truth == UNMELTED))
    union = np.count_nonzero((predicted == UNMELTED) | (truth == UNMELTED))
    assert overlap / union > 0.8
