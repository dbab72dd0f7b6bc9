"""Segmentation scores: one confusion matrix, and IoU, Dice, precision, recall from it.

`inspectd evaluate`, training's validation, the int8 check of `inspectd quantize`, the
benchmark's accuracy and `scripts/heldout_metrics.py` all count pixels with
`confusion_matrix` (rows: truth, columns: predicted) and score them here, so a number
means the same wherever it is printed. A class absent from both truth and prediction has
no score: None in `class_scores` (JSON null), NaN in `iou_per_class` (for `np.nanmean`).

Training's partial labels (binary masks say only "not unmelted") add one truth row:
`label_confusion` counts it, `label_iou` scores with it.

Example:
    >>> truth = np.array([[0, 1], [1, 2]]); predicted = np.array([[0, 1], [2, 2]])
    >>> confusion = confusion_matrix(predicted, truth, 3)
    >>> confusion.tolist()
    [[1, 0, 0], [0, 1, 1], [0, 0, 1]]
    >>> iou_per_class(confusion).tolist(), pixel_accuracy(confusion)
    ([1.0, 0.5, 0.5], 0.75)
"""

from __future__ import annotations

import numpy as np

from inspectd.analysis.engines import unet_contract as contract
from inspectd.data.labelled import LabelledDataError
from inspectd.types import UNMELTED

METRIC_NAMES = ("iou", "dice", "precision", "recall")


def confusion_matrix(predicted: np.ndarray, truth: np.ndarray, n_classes: int,
                     *, n_truth_rows: int | None = None) -> np.ndarray:
    """`[truth, predicted]` pixel counts, int64 `[n_truth_rows or n_classes, n_classes]`.

    Values must lie in `0 .. n - 1`; arrays of different shapes are a `LabelledDataError`.

    Example:
        >>> confusion_matrix(np.array([0, 1, 1]), np.array([0, 0, 1]), 2).tolist()
        [[1, 1], [0, 1]]
    """
    if predicted.shape != truth.shape:
        msg = f"prediction {predicted.shape} and truth {truth.shape} differ in shape"
        raise LabelledDataError(msg)
    rows = n_classes if n_truth_rows is None else n_truth_rows
    index = truth.astype(np.int64).ravel() * n_classes + predicted.astype(np.int64).ravel()
    return np.bincount(index, minlength=rows * n_classes).reshape(rows, n_classes)


def _counts(confusion: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """True positives, false positives, false negatives per class (float64)."""
    tp = np.diag(confusion).astype(np.float64)
    fp = confusion.sum(0).astype(np.float64) - tp
    fn = confusion.sum(1).astype(np.float64) - tp
    return tp, fp, fn


def _ratio(numerator: float, denominator: float) -> float | None:
    return float(numerator / denominator) if denominator else None


def class_scores(confusion: np.ndarray) -> dict[int, dict[str, float | None]]:
    """Per class: IoU, Dice, precision, recall (None where undefined: the class is absent everywhere).

    Example:
        >>> truth = np.array([0, 0, 1, 1]); inverted = 1 - truth
        >>> class_scores(confusion_matrix(inverted, truth, 2))[1]["iou"]
        0.0
    """
    tp, fp, fn = _counts(confusion)
    return {cls: {"iou": _ratio(tp[cls], tp[cls] + fp[cls] + fn[cls]),
                  "dice": _ratio(2 * tp[cls], 2 * tp[cls] + fp[cls] + fn[cls]),
                  "precision": _ratio(tp[cls], tp[cls] + fp[cls]),
                  "recall": _ratio(tp[cls], tp[cls] + fn[cls])}
            for cls in range(confusion.shape[0])}


def iou_per_class(confusion: np.ndarray) -> np.ndarray:
    """IoU of each class as an array; NaN for a class absent from truth and prediction.

    Example:
        >>> iou_per_class(np.array([[2, 0], [1, 1]])).round(3).tolist()
        [0.667, 0.5]
    """
    tp, fp, fn = _counts(confusion)
    union = tp + fp + fn
    return np.where(union > 0, tp / np.maximum(union, 1), np.nan)


def pixel_accuracy(confusion: np.ndarray) -> float:
    """Share of pixels on the diagonal (0.0 for an empty matrix).

    Example:
        >>> pixel_accuracy(np.array([[3, 1], [0, 4]]))
        0.875
    """
    total = confusion.sum()
    return float(np.trace(confusion) / total) if total else 0.0


def fraction_pct(labels: np.ndarray, cls: int) -> float:
    """Area percentage of class `cls` in a label mask.

    Example:
        >>> fraction_pct(np.array([[0, 1], [1, 1]]), 1)
        75.0
    """
    return 100.0 * float(np.count_nonzero(labels == cls)) / labels.size


def label_confusion(predicted: np.ndarray, labels: np.ndarray, n_classes: int = contract.N_CLASSES) -> np.ndarray:
    """`confusion_matrix` of training labels: `[n_classes + 1, n_classes]`, the last row counting
    the NOT_UNMELTED pixels; IGNORE pixels are not counted.

    >>> label_confusion(np.array([0, 1, 2, 1, 2]), np.array([0, 1, 3, 3, 255])).tolist()
    [[1, 0, 0], [0, 1, 0], [0, 0, 0], [0, 1, 1]]
    """
    scored = labels != contract.IGNORE
    rows = np.where(labels == contract.NOT_UNMELTED, n_classes, labels)
    return confusion_matrix(predicted[scored], rows[scored], n_classes, n_truth_rows=n_classes + 1)


def label_iou(confusion: np.ndarray) -> np.ndarray:
    """IoU per class from `label_confusion`; NaN for a class absent from truth and prediction.

    A NOT_UNMELTED pixel is exact evidence about unmelted only (predicting it unmelted is a
    false positive) and none about melted vs pore: those IoUs count only fully labelled
    pixels, so binary labels can neither reward nor punish the melted/pore split.

    >>> label_iou(np.array([[2, 0, 0], [0, 3, 0], [0, 0, 0], [1, 1, 0]])).round(3).tolist()
    [1.0, 0.75, nan]
    >>> label_iou(np.array([[0, 0, 0], [1, 3, 0], [0, 0, 0], [5, 1, 2]])).round(3).tolist()  # binary labels
    [nan, 0.6, nan]
    """
    exact, partial = confusion[:-1], confusion[-1]
    overlap = np.diag(exact).astype(np.float64)
    predicted = exact.sum(0).astype(np.float64)
    if predicted.size > UNMELTED:
        predicted[UNMELTED] += partial[UNMELTED]
    labelled = exact.sum(1)
    union = predicted + labelled - overlap
    # Beside binary labels, a class no pixel is labelled with (melted, pore) is not scored.
    unscored = (labelled == 0) & (partial.sum() > 0)
    unscored[min(UNMELTED, unscored.size - 1)] = False
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((union > 0) & ~unscored, overlap / np.maximum(union, 1), np.nan)


__all__ = ["METRIC_NAMES", "class_scores", "confusion_matrix", "fraction_pct", "iou_per_class",
           "label_confusion", "label_iou", "pixel_accuracy"]
