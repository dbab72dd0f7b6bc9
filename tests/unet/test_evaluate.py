"""`inspectd evaluate`: metric functions on synthetic masks, label conventions, stem matching, reports."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from inspectd import cli
from inspectd.analysis.engines.base import SegmentationEngine
from inspectd.analysis.preprocess import enhance
from inspectd.config import Config
from inspectd.data import synth
from inspectd.data.labelled import (
    LabelledDataError,
    MaskConvention,
    find_pairs,
    mask_conventions,
    to_class_index,
)
from inspectd.data.scores import class_scores, confusion_matrix, pixel_accuracy
from inspectd.reports.evaluate import (
    EvaluationError,
    evaluate_set,
    fold_prediction,
    label_mode,
    markdown_table,
    summarise,
)
from inspectd.types import MELTED, PORE, UNMELTED

# --------------------------------------------------------------------------- metric functions


def _random_classes(seed: int, shape=(64, 80)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 3, shape).astype(np.uint8)


def test_perfect_prediction_scores_one_everywhere():
    truth = _random_classes(1)
    confusion = confusion_matrix(truth, truth, 3)
    scores = class_scores(confusion)
    for cls in (MELTED, UNMELTED, PORE):
        assert scores[cls] == {"iou": 1.0, "dice": 1.0, "precision": 1.0, "recall": 1.0}
    assert pixel_accuracy(confusion) == 1.0
    assert confusion.sum() == truth.size


def test_inverted_binary_prediction_scores_zero():
    truth = (np.random.default_rng(2).random((50, 70)) > 0.6).astype(np.uint8)
    inverted = 1 - truth
    scores = class_scores(confusion_matrix(inverted, truth, 2))
    for cls in (0, 1):
        assert scores[cls] == {"iou": 0.0, "dice": 0.0, "precision": 0.0, "recall": 0.0}
    assert pixel_accuracy(confusion_matrix(inverted, truth, 2)) == 0.0


def test_scores_match_hand_counts():
    truth = np.array([[1, 1, 1, 1, 0, 0, 0, 0, 0, 0]], np.uint8)
    predicted = np.array([[1, 1, 1, 0, 1, 1, 0, 0, 0, 0]], np.uint8)
    # unmelted: TP 3, FN 1, FP 2 -> IoU 3/6, Dice 6/9, precision 3/5, recall 3/4
    scores = class_scores(confusion_matrix(predicted, truth, 2))[1]
    assert scores["iou"] == pytest.approx(0.5)
    assert scores["dice"] == pytest.approx(6 / 9)
    assert scores["precision"] == pytest.approx(0.6)
    assert scores["recall"] == pytest.approx(0.75)
    assert pixel_accuracy(confusion_matrix(predicted, truth, 2)) == pytest.approx(0.7)


def test_absent_class_has_undefined_scores_not_zero():
    truth = np.zeros((8, 8), np.uint8)
    scores = class_scores(confusion_matrix(truth, truth, 3))
    assert scores[PORE] == {"iou": None, "dice": None, "precision": None, "recall": None}
    assert scores[MELTED]["iou"] == 1.0


def test_confusion_matrix_refuses_different_shapes():
    with pytest.raises(LabelledDataError, match="differ in shape"):
        confusion_matrix(np.zeros((4, 4)), np.zeros((4, 5)), 3)


# --------------------------------------------------------------------------- label conventions


def _set_mode(*value_sets: set[int]) -> str:
    pairs = [None] * len(value_sets)
    return label_mode(mask_conventions(pairs, list(value_sets))[1])


def test_label_modes_follow_the_training_conventions():
    assert _set_mode({0, 1}) == "binary"
    assert _set_mode({0, 255}, {0}) == "binary"
    assert _set_mode({0, 1}, {0, 1, 2}) == "classes"
    binary01 = to_class_index(np.array([[0, 1, 1]], np.uint8), MaskConvention.BINARY_0_1)
    binary255 = to_class_index(np.array([[0, 255, 255]], np.uint8), MaskConvention.BINARY_0_255)
    assert binary01.tolist() == binary255.tolist() == [[0, 1, 1]]
    assert to_class_index(np.array([[0, 1, 2]], np.uint16), MaskConvention.CLASS_INDEX).dtype == np.uint8


@pytest.mark.parametrize("value_sets", [[{0, 128}], [{0, 1, 255}], [{0, 3}], [{0, 1}, {0, 255}]], ids=str)
def test_values_outside_one_convention_are_refused(value_sets):
    pairs = [type("Pair", (), {"mask_path": Path(f"m{i}.png")})() for i in range(len(value_sets))]
    with pytest.raises(LabelledDataError, match="expected|mix"):
        mask_conventions(pairs, value_sets)


def test_class_indices_beside_binary_255_train_together_but_are_not_scored_as_one_set():
    with pytest.raises(EvaluationError, match="an evaluation scores one convention"):
        _set_mode({0, 1, 2}, {0, 255})


def test_binary_mode_folds_melted_and_pores_into_the_rest():
    mask = np.array([[MELTED, UNMELTED, PORE]], np.uint8)
    assert fold_prediction(mask, "binary").tolist() == [[0, 1, 0]]
    assert fold_prediction(mask, "classes") is mask


# --------------------------------------------------------------------------- stem matching


def _write_png(path: Path, array: np.ndarray) -> Path:
    assert cv2.imwrite(str(path), array)
    return path


def test_masks_match_by_stem_with_or_without_the_mask_suffix(tmp_path):
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    pixels = np.full((20, 20), 100, np.uint8)
    for stem in ("a", "b", "c", "d"):
        _write_png(images / f"{stem}.png", pixels)
    _write_png(masks / "a.png", np.zeros((20, 20), np.uint8))
    _write_png(masks / "b_mask.png", np.zeros((20, 20), np.uint8))
    _write_png(masks / "c_mask.tif", np.zeros((20, 20), np.uint8))
    (images / "notes.txt").write_text("not an image")
    pairs = find_pairs(images, masks)
    assert [(p.sample_id, p.mask_path.name) for p in pairs] == [("a", "a.png"), ("b", "b_mask.png"), ("c", "c_mask.tif")]


def test_synth_layout_with_masks_beside_images_pairs_each_image_once(tmp_path):
    synth.write_dataset(tmp_path, 2, 32, 48, seed=1)
    pairs = find_pairs(tmp_path, tmp_path)
    assert [(p.image_path.name, p.mask_path.name) for p in pairs] == [
        ("synth_0000.png", "synth_0000_mask.png"), ("synth_0001.png", "synth_0001_mask.png")]


def test_no_pair_at_all_is_an_evaluation_error(tmp_path):
    _write_png(tmp_path / "a.png", np.zeros((20, 20), np.uint8))
    with pytest.raises(LabelledDataError, match="has a mask"):
        find_pairs(tmp_path, tmp_path)
    with pytest.raises(LabelledDataError, match="is not a folder"):
        find_pairs(tmp_path / "missing", tmp_path)


# --------------------------------------------------------------------------- evaluate_set with oracle engines


class _OracleEngine(SegmentationEngine):
    """Returns the stored truth (or its inverse) for an enhanced frame it has seen before (unregistered)."""

    KEY = ""

    def __init__(self, truths: dict[str, np.ndarray], name: str, invert: bool = False) -> None:
        super().__init__(Config().segment)
        self.truths = truths
        self._name = name
        self.invert = invert

    @property
    def name(self) -> str:
        return self._name

    def forward(self, prepared: np.ndarray) -> np.ndarray:
        truth = self.truths[hashlib.sha256(prepared.tobytes()).hexdigest()]
        if not self.invert:
            return truth
        return np.where(truth == UNMELTED, MELTED, UNMELTED).astype(np.uint8)


def _dataset(tmp_path: Path, binary: bool) -> tuple[list, dict[str, np.ndarray]]:
    """Synthetic images with masks (class indices, or 0/255 unmelted); oracle truths keyed by enhanced frame."""
    cfg = Config()
    truths = {}
    for index in range(3):
        sample = synth.generate(96, 128, seed=40 + index)
        _write_png(tmp_path / f"img{index}.png", sample.image)
        mask = (sample.mask == UNMELTED).astype(np.uint8) * 255 if binary else sample.mask
        _write_png(tmp_path / f"img{index}_mask.png", mask)
        enhanced = enhance(sample.image, cfg.preprocess, backend="cpu")
        truths[hashlib.sha256(enhanced.tobytes()).hexdigest()] = sample.mask
    return find_pairs(tmp_path, tmp_path), truths


def test_oracle_scores_one_and_inverse_scores_zero_in_binary_mode(tmp_path):
    pairs, truths = _dataset(tmp_path, binary=True)
    engines = [_OracleEngine(truths, "oracle"), _OracleEngine(truths, "inverse", invert=True)]
    results, mode = evaluate_set(engines, pairs, Config())
    assert mode == "binary"
    oracle, inverse = (summarise(r, mode) for r in results)
    assert set(oracle["classes"]) == {"rest", "unmelted"}
    assert oracle["classes"]["unmelted"]["pooled"]["iou"] == 1.0
    assert oracle["classes"]["unmelted"]["per_image_mean"]["iou"] == 1.0
    assert oracle["pixel_accuracy"]["pooled"] == 1.0
    assert oracle["fraction_errors"]["unmelted_pct"]["mean_abs_error_pct_points"] == 0.0
    assert "porosity_pct" not in oracle["fraction_errors"]  # binary labels carry no pores
    assert inverse["classes"]["unmelted"]["pooled"]["iou"] == 0.0
    assert inverse["classes"]["rest"]["pooled"]["iou"] == 0.0
    assert inverse["pixel_accuracy"]["pooled"] == 0.0
    assert len(oracle["images"]) == 3


def test_class_index_set_scores_all_three_classes_and_fraction_errors(tmp_path):
    pairs, truths = _dataset(tmp_path, binary=False)

    class _NoPores(_OracleEngine):
        def forward(self, prepared):
            mask = super().forward(prepared).copy()
            mask[mask == PORE] = MELTED
            return mask

    results, mode = evaluate_set([_OracleEngine(truths, "oracle"), _NoPores(truths, "no-pores")], pairs, Config())
    assert mode == "classes"
    oracle, no_pores = (summarise(r, mode) for r in results)
    assert {name: oracle["classes"][name]["pooled"]["iou"] for name in ("melted", "unmelted", "pore")} == {
        "melted": 1.0, "unmelted": 1.0, "pore": 1.0}
    assert no_pores["classes"]["pore"]["pooled"]["recall"] == 0.0
    porosity = no_pores["fraction_errors"]["porosity_pct"]
    assert porosity["mean_predicted_pct"] == 0.0
    assert porosity["mean_signed_error_pct_points"] == pytest.approx(-porosity["mean_true_pct"])
    assert porosity["mean_abs_error_pct_points"] == pytest.approx(porosity["mean_true_pct"])
    table = markdown_table([oracle, no_pores], mode)
    assert table.splitlines()[0] == "| Metric | oracle | no-pores |"
    assert "| IoU pore | 1.000 | 0.000 |" in table


# --------------------------------------------------------------------------- the command


@pytest.fixture(scope="module")
def unet_config(tmp_path_factory):
    pytest.importorskip("onnx")
    from tests.unet.random_unet import build_unet, save

    folder = tmp_path_factory.mktemp("eval_model")
    model = save(build_unet(base_channels=4, seed=3), folder / "random.onnx")
    config_path = folder / "config.yaml"
    config_path.write_text(f"segment:\n  backend: cpu\n  unet:\n    model: {model}\n    tile_px: 128\n"
                           "    overlap_px: 16\n")
    return config_path


def test_evaluate_command_writes_parseable_reports_for_both_engines(tmp_path, unet_config, capsys):
    data = tmp_path / "data"
    synth.write_dataset(data, 2, 96, 160, seed=11)
    out = tmp_path / "out"
    code = cli.main(["evaluate", "--images", str(data), "--masks", str(data), "--engines", "classical,unet",
                     "--out", str(out), "--config", str(unet_config)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "IoU unmelted" in printed and "classical" in printed and "unet" in printed

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_images"] == 2 and metrics["label_mode"] == "classes"
    assert set(metrics["engines"]) == {"classical", "unet"}
    for summary in metrics["engines"].values():
        for cls in ("melted", "unmelted", "pore"):
            iou = summary["classes"][cls]["pooled"]["iou"]
            assert iou is None or 0.0 <= iou <= 1.0
        assert 0.0 <= summary["pixel_accuracy"]["pooled"] <= 1.0
        assert summary["ms_per_image"]["mean"] > 0
        assert len(summary["images"]) == 2
        assert np.array(summary["confusion_matrix"]["counts"]).sum() == 2 * 96 * 160
        assert summary["backend"] == "cpu"
    assert re.fullmatch(r"[0-9a-f]{64}", metrics["engines"]["unet"]["model_hash"])
    assert metrics["engines"]["classical"]["model_hash"] is None

    report_md = (out / "report.md").read_text()
    assert "| Metric | classical | unet |" in report_md
    html = (out / "report.html").read_text()
    assert "<table>" in html and "IoU pore" in html
    sources = re.findall(r'src="([^"]+)"', html)
    assert len(sources) == 2 * 4  # image, truth, classical, unet per image
    for src in sources:
        picture = cv2.imread(str(out / src))
        assert picture is not None and picture.shape[1] == 160


def test_evaluate_command_on_binary_masks_in_their_own_folder(tmp_path, capsys):
    images, masks = tmp_path / "images", tmp_path / "masks"
    synth.write_dataset(images, 2, 64, 96, seed=12, masks_dir=masks)
    for mask_path in masks.glob("*.png"):
        mask = cv2.imread(str(mask_path), cv2.IMREAD_UNCHANGED)
        _write_png(mask_path, (mask == UNMELTED).astype(np.uint8) * 255)
    out = tmp_path / "out"
    code = cli.main(["evaluate", "--images", str(images), "--masks", str(masks), "--engines", "classical",
                     "--out", str(out), "--no-overlays"])
    assert code == 0
    assert "binary" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["label_mode"] == "binary"
    assert set(metrics["engines"]["classical"]["classes"]) == {"rest", "unmelted"}
    assert 'src="' not in (out / "report.html").read_text()


def test_evaluate_command_refuses_bad_input_with_exit_code_2(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    _write_png(data / "a.png", np.full((32, 32), 100, np.uint8))
    _write_png(data / "a_mask.png", np.zeros((16, 32), np.uint8))
    code = cli.main(["evaluate", "--images", str(data), "--masks", str(data), "--engines", "classical",
                     "--out", str(tmp_path / "out")])
    assert code == 2
    assert "is 32x16 but image a.png is 32x32" in capsys.readouterr().err
    code = cli.main(["evaluate", "--images", str(data), "--masks", str(data), "--engines", "no-such-engine",
                     "--out", str(tmp_path / "out")])
    assert code == 2
    assert "unknown segmentation engine 'no-such-engine'" in capsys.readouterr().err
