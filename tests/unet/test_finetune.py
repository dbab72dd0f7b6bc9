"""Few-shot adaptation: `inspectd train --init bundled|PATH` on tiny data, seconds on a CPU.

What a user gets from one labelled field: the loss falls, `--out` holds a ready
`model.onnx` (+ card, + int8 twin when it agrees) that `inspectd analyze --model` runs.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")

from inspectd import cli  # noqa: E402
from inspectd.analysis.engines import create_engine  # noqa: E402
from inspectd.analysis.engines import unet_contract as contract  # noqa: E402
from inspectd.analysis.engines.unet import bundled_model_path, file_sha256  # noqa: E402
from inspectd.config import SegmentConfig, UnetConfig  # noqa: E402
from inspectd.data.labelled import LabelledImage, MaskConvention, to_training_labels  # noqa: E402
from inspectd.data.synth import generate_v3  # noqa: E402
from inspectd.errors import ConfigError  # noqa: E402
from inspectd.training.export import export_onnx  # noqa: E402
from inspectd.training.model import UNet  # noqa: E402
from inspectd.training.onnx_import import model_from_onnx  # noqa: E402
from inspectd.training.train import (  # noqa: E402
    UNMARKED_IS_MATRIX_PRIOR,
    label_iou,
    segmentation_loss,
    split_within,
)
from inspectd.types import UNMELTED  # noqa: E402


@pytest.fixture(scope="module")
def one_field(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """One labelled 128x160 field in the seed's binary convention (255 = unmelted)."""
    root = tmp_path_factory.mktemp("field")
    (root / "images").mkdir()
    (root / "masks").mkdir()
    sample = generate_v3(128, 160, seed=4242)
    cv2.imwrite(str(root / "images" / "field.png"), sample.image)
    cv2.imwrite(str(root / "masks" / "field.png"), np.where(sample.mask == UNMELTED, 255, 0).astype(np.uint8))
    return root / "images", root / "masks"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("init") / "tiny.onnx"
    torch.manual_seed(0)
    export_onnx(UNet(widths=(4, 8, 16), output_stride=4), path)
    return path


def _train(images: Path, masks: Path, out: Path, init: str, *extra: str) -> int:
    return cli.main(["train", "--init", init, "--images", str(images), "--masks", str(masks), "--out", str(out),
                     "--epochs", "4", "--tiles-per-epoch", "16", "--batch-size", "4", "--tile", "64", "--lr", "0.01",
                     "--quiet", *extra])


def test_fine_tuning_one_field_writes_a_model_that_runs(one_field, tiny_model, tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    assert _train(*one_field, out, str(tiny_model)) == 0
    printed = capsys.readouterr()
    assert "one labelled image: split inside it" in printed.err
    history = json.loads((out / "history.json").read_text())
    losses = [row["train_loss"] for row in history["epochs"]]
    assert losses[-1] < losses[0]
    assert history["data"]["train_ids"] == ["field[x<128]"] and history["data"]["val_ids"] == ["field[x>=128]"]

    card = json.loads((out / "model.json").read_text())
    assert card["file"]["sha256"] == file_sha256(out / "model.onnx")
    assert card["init"]["sha256"] == file_sha256(tiny_model)
    assert card["architecture"]["widths"] == [4, 8, 16] and card["architecture"]["output_stride"] == 4
    assert card["envelope"] is not None and card["training"]["data"]["mask_convention"] == "binary-0-255"
    assert ("written" not in card["int8"]) == (out / "model.int8.onnx").is_file()

    engine = create_engine(SegmentConfig(engine="unet", backend="cpu", unet=UnetConfig(model=out / "model.onnx")))
    field = cv2.imread(str(one_field[0] / "field.png"), cv2.IMREAD_GRAYSCALE)
    mask = engine.segment(field)
    assert mask.shape == field.shape and set(np.unique(mask).tolist()) <= {0, 1, 2}

    analysed = tmp_path / "analysed"
    code = cli.main(["analyze", str(one_field[0] / "field.png"), "--model", str(out / "model.onnx"),
                     "--out", str(analysed), "--quiet"])
    record = json.loads((analysed / "field.json").read_text())
    assert code in (0, 1, 3) and record["engine"]["name"] == "unet"
    assert record["engine"]["model_hash"] == card["file"]["sha256"]


def test_fine_tuning_from_the_bundled_model(one_field, tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert _train(*one_field, out, "bundled", "--epochs", "1") == 0
    card = json.loads((out / "model.json").read_text())
    bundled = bundled_model_path("fp32")
    assert card["init"]["sha256"] == file_sha256(bundled)
    assert card["architecture"]["widths"] == json.loads(bundled.with_suffix(".json").read_text())["architecture"]["widths"]


def test_missing_init_model_is_a_usage_error(one_field, tmp_path: Path, capsys) -> None:
    assert _train(*one_field, tmp_path / "run", str(tmp_path / "nope.onnx")) == 2
    assert "no such model file" in capsys.readouterr().err


def test_model_from_onnx_reproduces_the_file(tiny_model) -> None:
    import onnxruntime as ort

    model = model_from_onnx(tiny_model).eval()
    inputs = np.random.default_rng(1).standard_normal((2, 1, 64, 96), dtype=np.float32)
    session = ort.InferenceSession(str(tiny_model), providers=["CPUExecutionProvider"])
    (expected,) = session.run(None, {contract.INPUT_NAME: inputs})
    with torch.no_grad():
        actual = model.affine(torch.from_numpy(inputs)).numpy()
    assert np.abs(actual - expected).max() < 1e-4


def test_a_file_that_is_not_an_inspectd_unet_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "not.onnx"
    path.write_bytes(b"not a model")
    with pytest.raises(ConfigError, match="cannot read it as an ONNX model"):
        model_from_onnx(path)


def test_binary_zeros_say_not_unmelted_and_lean_to_matrix() -> None:
    """A binary label's 0 is "melted or pore": calling it unmelted costs the full loss, calling
    it a pore only the weak matrix prior."""
    labels = torch.from_numpy(to_training_labels(np.zeros((2, 2), np.uint8), MaskConvention.BINARY_0_255)[None])
    assert int(labels.unique()) == contract.NOT_UNMELTED
    weights = torch.ones(3)

    def loss_of(cls: int) -> float:
        logits = torch.zeros(1, 3, 2, 2)
        logits[:, cls] = 8.0
        return float(segmentation_loss(logits, labels.long(), weights, 0.0))

    assert loss_of(0) < loss_of(2) < loss_of(UNMELTED)
    assert loss_of(2) - loss_of(0) == pytest.approx(UNMARKED_IS_MATRIX_PRIOR * 8.0, rel=0.01)
    assert loss_of(UNMELTED) > 7.0


def test_binary_labels_score_unmelted_only() -> None:
    confusion = np.array([[0, 0, 0], [1, 3, 0], [0, 0, 0], [5, 1, 2]])  # rows: melted, unmelted, pore, not-unmelted
    ious = label_iou(confusion)
    assert ious[UNMELTED] == pytest.approx(3 / 5) and np.isnan(ious[0]) and np.isnan(ious[2])


def test_one_field_is_split_into_a_training_part_and_an_unseen_strip() -> None:
    field = LabelledImage("f", np.zeros((300, 200), np.float32), np.zeros((300, 200), np.uint8))
    train_part, val_part = split_within(field, 0.2)
    assert train_part.mask.shape == (240, 200) and val_part.mask.shape == (300, 200)  # the strip in its context
    assert (val_part.mask[:240] == contract.IGNORE).all() and (val_part.mask[240:] == 0).all()
    assert (train_part.sample_id, val_part.sample_id) == ("f[y<240]", "f[y>=240]")
