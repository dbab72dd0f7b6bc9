"""`inspectd train` end to end on tiny generated data: a few steps, seconds on a CPU."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from inspectd import cli  # noqa: E402
from inspectd.data.synth import write_dataset  # noqa: E402
from inspectd.training.train import (  # noqa: E402
    TrainSettings,
    calibrate_logit_bias,
    load_checkpoint,
    segmentation_loss,
    train,
)
from inspectd.types import UNMELTED  # noqa: E402

TINY = {"epochs": 4, "batch_size": 4, "lr": 0.01, "tile_px": 64, "tiles_per_epoch": 16,
        "val_fraction": 0.34, "seed": 0, "widths": (4, 8, 16)}


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("tiny")
    write_dataset(root / "images", n=6, height=96, width=112, seed=11, vary=True, masks_dir=root / "masks")
    return root / "images", root / "masks"


@pytest.fixture(scope="module")
def tiny_run(tiny_set, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("run")
    return train(TrainSettings(*tiny_set, out, **TINY), progress=False)


def test_training_smoke_loss_decreases_and_files_are_written(tiny_run) -> None:
    losses = [row["train_loss"] for row in tiny_run.history]
    assert len(losses) == TINY["epochs"]
    assert losses[-1] < losses[0]
    out = tiny_run.out_dir
    assert {p.name for p in out.iterdir()} >= {"best.pt", "last.pt", "history.json", "curve.png"}
    curve = cv2.imread(str(out / "curve.png"))
    assert curve is not None and curve.shape == (420, 960, 3)
    history = json.loads((out / "history.json").read_text())
    assert [row["epoch"] for row in history["epochs"]] == [1, 2, 3, 4]
    assert history["best_epoch"] == tiny_run.best_epoch
    for row in history["epochs"]:
        assert 0.0 <= row["val_iou_mean"] <= 1.0 and row["val_loss"] > 0


def test_best_checkpoint_is_the_best_validation_epoch(tiny_run) -> None:
    best = max(tiny_run.history, key=lambda row: row["val_iou_mean"])
    assert tiny_run.best_epoch == best["epoch"]
    model, checkpoint = load_checkpoint(tiny_run.out_dir / "best.pt")
    assert checkpoint["epoch"] == best["epoch"]
    assert checkpoint["metrics"]["val_iou_mean"] == pytest.approx(best["val_iou_mean"])
    assert model.widths == TINY["widths"] and not model.training
    _, last = load_checkpoint(tiny_run.out_dir / "last.pt")
    assert last["epoch"] == TINY["epochs"]


def test_validation_images_are_never_trained_on(tiny_run) -> None:
    history = json.loads((tiny_run.out_dir / "history.json").read_text())
    train_ids, val_ids = history["data"]["train_ids"], history["data"]["val_ids"]
    assert train_ids == tiny_run.train_ids and val_ids == tiny_run.val_ids
    assert set(train_ids).isdisjoint(val_ids) and len(train_ids) + len(val_ids) == 6
    assert len(val_ids) == 2


def test_training_is_seeded(tiny_set, tiny_run, tmp_path: Path) -> None:
    again = train(TrainSettings(*tiny_set, tmp_path, **TINY), progress=False)
    assert [r["train_loss"] for r in again.history] == pytest.approx([r["train_loss"] for r in tiny_run.history])
    first = torch.load(tiny_run.out_dir / "last.pt", weights_only=False)["state_dict"]
    second = torch.load(tmp_path / "last.pt", weights_only=False)["state_dict"]
    for key, tensor in first.items():
        torch.testing.assert_close(second[key], tensor)


def test_loss_is_lower_for_the_right_answer() -> None:
    targets = torch.tensor([[[0, 1], [2, 1]]])
    right = torch.nn.functional.one_hot(targets, 3).permute(0, 3, 1, 2).float() * 8.0
    weights = torch.tensor([0.5, 1.0, 2.0])
    assert segmentation_loss(right, targets, weights, 0.5) < segmentation_loss(-right, targets, weights, 0.5)


def test_cli_train_states_the_binary_255_convention(tiny_set, tmp_path: Path, capsys) -> None:
    images_dir, masks_dir = tiny_set
    binary_dir = tmp_path / "binary"
    binary_dir.mkdir()
    for mask_path in masks_dir.glob("*.png"):
        mask = cv2.imread(str(mask_path), cv2.IMREAD_UNCHANGED)
        cv2.imwrite(str(binary_dir / mask_path.name), np.where(mask == UNMELTED, 255, 0).astype(np.uint8))
    code = cli.main(["train", "--images", str(images_dir), "--masks", str(binary_dir), "--out",
                     str(tmp_path / "run"), "--epochs", "1", "--batch-size", "2", "--tile", "32",
                     "--tiles-per-epoch", "4", "--widths", "4,8,16", "--quiet"])
    captured = capsys.readouterr()
    assert code == 0
    assert "binary {0, 255}: 255 = unmelted" in captured.err
    assert "mask convention binary-0-255" in captured.out
    _, checkpoint = load_checkpoint(tmp_path / "run" / "best.pt")
    assert checkpoint["data"]["mask_convention"] == "binary-0-255"
    assert checkpoint["train"]["command"].startswith("inspectd train --images")


def test_cli_train_bad_masks_is_a_usage_error(tiny_set, tmp_path: Path, capsys) -> None:
    images_dir, masks_dir = tiny_set
    for mask_path in masks_dir.glob("*.png"):
        cv2.imwrite(str(tmp_path / mask_path.name), np.full((96, 112), 77, np.uint8))
    code = cli.main(["train", "--images", str(images_dir), "--masks", str(tmp_path), "--out",
                     str(tmp_path / "run"), "--epochs", "1", "--quiet"])
    assert code == 2
    assert "[77]" in capsys.readouterr().err


def test_best_checkpoint_is_calibrated_on_validation(tiny_run) -> None:
    _, checkpoint = load_checkpoint(tiny_run.out_dir / "best.pt")
    calibration = checkpoint["calibration"]
    assert calibration["val_ids"] == tiny_run.val_ids
    assert calibration["metrics_after"]["val_iou_mean"] >= calibration["metrics_before"]["val_iou_mean"]
    assert tiny_run.best_metrics == calibration["metrics_after"]


def test_calibration_undoes_a_known_logit_shift() -> None:
    rng = np.random.default_rng(0)
    masks, logits = [], []
    for _ in range(3):
        mask = rng.integers(0, 3, size=(40, 40))
        clean = np.eye(3, dtype=np.float32)[mask].transpose(2, 0, 1) * 2.0
        noisy = clean + rng.normal(0, 0.8, clean.shape).astype(np.float32)
        noisy[2] += 1.0  # pores over-predicted, as class weighting does
        masks.append(mask)
        logits.append(noisy)
    offsets, before, after = calibrate_logit_bias(logits, masks)
    assert offsets[0] == 0.0 and -1.5 <= offsets[2] <= -0.5
    assert after["val_iou_pore"] > before["val_iou_pore"]


def test_cli_train_with_a_fixed_validation_set_and_oversampling(tiny_set, tmp_path: Path) -> None:
    images_dir, masks_dir = tiny_set
    val_root = tmp_path / "val"
    write_dataset(val_root / "images", n=2, height=96, width=112, seed=99, vary=True, masks_dir=val_root / "masks")
    out = tmp_path / "run"
    code = cli.main(["train", "--images", str(images_dir), "--masks", str(masks_dir), "--val-images",
                     str(val_root / "images"), "--val-masks", str(val_root / "masks"), "--oversample", "synth_0001=5",
                     "--out", str(out), "--epochs", "1", "--batch-size", "2", "--tile", "32", "--tiles-per-epoch",
                     "4", "--widths", "4,8,16", "--quiet"])
    assert code == 0
    history = json.loads((out / "history.json").read_text())
    assert history["data"]["val_ids"] == ["synth_0000", "synth_0001"]  # the fixed set's own stems
    assert len(history["data"]["train_ids"]) == 6  # every --images image trains
    assert history["settings"]["oversample"] == [["synth_0001", 5.0]]
    assert "--oversample synth_0001=5" in history["settings"]["command"]
    assert (out / "model.onnx").is_file() and (out / "model.json").is_file()
