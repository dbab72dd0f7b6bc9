"""Engine accuracy against labelled micrographs: the seed's "traditional vs deep learning" table.

Why: the only honest way to choose between the classical engine and the U-Net (or between
two U-Nets) is to run both over the same labelled images, through the same preprocessing
as the daemon (`inspectd.analysis.preprocess.enhance`), and count pixels.

Labels. Masks are matched to images by file stem: `<stem>.png` or `<stem>_mask.png` (PNG,
TIFF or BMP) in the masks folder; files named `*_mask.*` are never taken as images, so
`inspectd synth` output (masks beside images) works with `--images D --masks D`. A mask
set is read in one of two modes, decided over the whole set:
- `classes`: some mask holds the value 2; every mask is class indices (0 melted,
  1 unmelted, 2 pore).
- `binary` (the seed's labels): no mask holds a 2; {0, 1} means 1 = unmelted, {0, 255}
  means 255 = unmelted, 0 = everything else. Only unmelted vs the rest can be compared,
  so predictions are folded the same way (melted and pore -> rest) and porosity is not scored.
Any other value, or 255 in a class-index set, is an `EvaluationError` naming the file.

Metrics, per class: IoU, Dice, precision and recall from one confusion matrix summed over
every pixel of the set ("pooled", big images weigh more), and the mean of the per-image
values over the images where the class occurs in the truth or the prediction ("per-image
mean"); pixel accuracy both ways; fraction errors (predicted minus true unmelted % and
porosity % per image: mean absolute and mean signed); segmentation time per image, ms.

Example:
    >>> import numpy as np
    >>> truth = np.array([[0, 1], [1, 2]], np.uint8)
    >>> scores = class_scores(confusion_matrix(truth, truth, 3))
    >>> [round(scores[c]["iou"], 3) for c in range(3)]
    [1.0, 1.0, 1.0]
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from inspectd.analysis.decode import decode_file
from inspectd.analysis.engines.base import SegmentationEngine
from inspectd.analysis.preprocess import enhance
from inspectd.config import Config
from inspectd.errors import InspectdError
from inspectd.types import CLASS_NAMES, PORE, UNMELTED

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".bmp", ".jpg", ".jpeg")
MASK_SUFFIXES = (".png", ".tif", ".tiff", ".bmp")
MASK_STEM_SUFFIX = "_mask"
LABEL_MODE_CLASSES = "classes"
LABEL_MODE_BINARY = "binary"
# In binary mode the two compared classes are "rest" (0) and "unmelted" (1).
BINARY_CLASS_NAMES = {0: "rest", 1: "unmelted"}
METRIC_NAMES = ("iou", "dice", "precision", "recall")


class EvaluationError(InspectdError):
    """The image/mask set cannot be evaluated (no pairs, unreadable or ambiguous masks)."""


@dataclass(frozen=True)
class LabelledImage:
    stem: str
    image_path: Path
    mask_path: Path


@dataclass
class EngineResult:
    """Everything measured for one engine over the set."""

    name: str
    backend: str
    model_hash: str | None
    confusion: np.ndarray
    per_image: list[dict[str, Any]] = field(default_factory=list)


# --------------------------------------------------------------------------- pairing and labels


def match_pairs(images_dir: Path, masks_dir: Path) -> list[LabelledImage]:
    """Image files of `images_dir` with their masks in `masks_dir`, by stem, sorted by stem.

    Images without a mask are skipped with a warning; no pair at all is an `EvaluationError`.
    """
    if not images_dir.is_dir() or not masks_dir.is_dir():
        missing = images_dir if not images_dir.is_dir() else masks_dir
        msg = f"{missing} is not a folder"
        raise EvaluationError(msg)
    masks = {p.name.lower(): p for p in masks_dir.iterdir() if p.is_file() and p.suffix.lower() in MASK_SUFFIXES}
    pairs, unmatched = [], []
    for image_path in sorted(images_dir.iterdir()):
        if not image_path.is_file() or image_path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        if image_path.stem.endswith(MASK_STEM_SUFFIX):
            continue
        mask_path = _find_mask(image_path, masks)
        if mask_path is None:
            unmatched.append(image_path.name)
            continue
        pairs.append(LabelledImage(image_path.stem, image_path, mask_path))
    if unmatched:
        logger.warning("%d image(s) without a mask skipped: %s", len(unmatched), ", ".join(unmatched[:10]))
    if not pairs:
        msg = (f"no image in {images_dir} has a mask in {masks_dir} (expected <stem>.png or <stem>_mask.png "
               f"for image <stem>.<ext>)")
        raise EvaluationError(msg)
    return pairs


def _find_mask(image_path: Path, masks: dict[str, Path]) -> Path | None:
    for stem in (image_path.stem, image_path.stem + MASK_STEM_SUFFIX):
        for suffix in MASK_SUFFIXES:
            candidate = masks.get((stem + suffix).lower())
            if candidate is not None and candidate.resolve() != image_path.resolve():
                return candidate
    return None


def read_mask_values(path: Path) -> np.ndarray:
    """The mask file as a 2-D integer array of raw values (grey; a colour file with equal channels)."""
    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if raw is None:
        msg = f"mask {path} cannot be read as an image"
        raise EvaluationError(msg)
    if raw.ndim == 3:
        channels = raw[..., :3]
        if not (np.array_equal(channels[..., 0], channels[..., 1]) and np.array_equal(channels[..., 0], channels[..., 2])):
            msg = f"mask {path} is a colour image; masks must be grey class indices or 0/255"
            raise EvaluationError(msg)
        raw = channels[..., 0]
    return raw


def label_mode(value_sets: Sequence[set[int]]) -> str:
    """`classes` when any mask holds a 2, else `binary` (see the module docstring).

    Example:
        >>> label_mode([{0, 1}, {0, 1, 2}]), label_mode([{0, 1}, {0, 255}])
        ('classes', 'binary')
    """
    return LABEL_MODE_CLASSES if any(PORE in values for values in value_sets) else LABEL_MODE_BINARY


def to_labels(values: np.ndarray, mode: str, source: str = "mask") -> np.ndarray:
    """Raw mask values -> uint8 labels: class indices (`classes`) or 0 rest / 1 unmelted (`binary`).

    Example:
        >>> import numpy as np
        >>> to_labels(np.array([[0, 255]]), "binary").tolist()
        [[0, 1]]
    """
    present = {int(v) for v in np.unique(values)}
    allowed = {0, 1, 2} if mode == LABEL_MODE_CLASSES else {0, 1, 255}
    if not present <= allowed or (mode == LABEL_MODE_BINARY and {1, 255} <= present):
        msg = (f"{source} holds values {sorted(present)}; expected class indices {{0, 1, 2}} or binary labels "
               f"{{0, 1}} / {{0, 255}} (and every mask of a set in one convention)")
        raise EvaluationError(msg)
    if mode == LABEL_MODE_BINARY:
        return (values > 0).astype(np.uint8)
    return values.astype(np.uint8)


def fold_prediction(mask: np.ndarray, mode: str) -> np.ndarray:
    """An engine's class-index mask in the labels' terms (binary mode: unmelted -> 1, the rest -> 0)."""
    if mode == LABEL_MODE_BINARY:
        return (mask == UNMELTED).astype(np.uint8)
    return mask


# --------------------------------------------------------------------------- metrics


def confusion_matrix(predicted: np.ndarray, truth: np.ndarray, n_classes: int) -> np.ndarray:
    """`[truth, predicted]` pixel counts (int64, n_classes x n_classes).

    Example:
        >>> import numpy as np
        >>> confusion_matrix(np.array([0, 1, 1]), np.array([0, 0, 1]), 2).tolist()
        [[1, 1], [0, 1]]
    """
    if predicted.shape != truth.shape:
        msg = f"prediction {predicted.shape} and truth {truth.shape} differ in shape"
        raise EvaluationError(msg)
    index = truth.astype(np.int64).ravel() * n_classes + predicted.astype(np.int64).ravel()
    return np.bincount(index, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def _ratio(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator else None


def class_scores(confusion: np.ndarray) -> dict[int, dict[str, float | None]]:
    """Per class: IoU, Dice, precision, recall (None where undefined: the class is absent everywhere).

    Example:
        >>> import numpy as np
        >>> truth = np.array([0, 0, 1, 1]); inverted = 1 - truth
        >>> class_scores(confusion_matrix(inverted, truth, 2))[1]["iou"]
        0.0
    """
    scores = {}
    for cls in range(confusion.shape[0]):
        tp = float(confusion[cls, cls])
        fp = float(confusion[:, cls].sum()) - tp
        fn = float(confusion[cls, :].sum()) - tp
        scores[cls] = {
            "iou": _ratio(tp, tp + fp + fn),
            "dice": _ratio(2 * tp, 2 * tp + fp + fn),
            "precision": _ratio(tp, tp + fp),
            "recall": _ratio(tp, tp + fn),
        }
    return scores


def pixel_accuracy(confusion: np.ndarray) -> float:
    total = confusion.sum()
    return float(np.trace(confusion) / total) if total else 0.0


def fraction_pct(labels: np.ndarray, cls: int) -> float:
    """Area percentage of class `cls` in a label mask."""
    return 100.0 * float(np.count_nonzero(labels == cls)) / labels.size


def _mean(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else None


def class_names(mode: str) -> dict[int, str]:
    return dict(CLASS_NAMES) if mode == LABEL_MODE_CLASSES else dict(BINARY_CLASS_NAMES)


def summarise(result: EngineResult, mode: str) -> dict[str, Any]:
    """The JSON-ready summary of one engine: pooled and per-image-mean scores, fraction errors, timing."""
    names = class_names(mode)
    pooled = class_scores(result.confusion)
    per_class: dict[str, Any] = {}
    for cls, name in names.items():
        per_image_mean = {m: _mean([img["classes"][name][m] for img in result.per_image]) for m in METRIC_NAMES}
        per_class[name] = {"pooled": pooled[cls], "per_image_mean": per_image_mean}
    fraction_errors: dict[str, Any] = {}
    fraction_keys = [("unmelted_pct", "unmelted")] + ([("porosity_pct", "pore")] if mode == LABEL_MODE_CLASSES else [])
    for key, _ in fraction_keys:
        signed = [img["fractions"][key]["predicted"] - img["fractions"][key]["true"] for img in result.per_image]
        fraction_errors[key] = {
            "mean_abs_error_pct_points": float(np.mean(np.abs(signed))),
            "mean_signed_error_pct_points": float(np.mean(signed)),
            "mean_true_pct": float(np.mean([img["fractions"][key]["true"] for img in result.per_image])),
            "mean_predicted_pct": float(np.mean([img["fractions"][key]["predicted"] for img in result.per_image])),
        }
    return {
        "engine": result.name,
        "backend": result.backend,
        "model_hash": result.model_hash,
        "classes": per_class,
        "pixel_accuracy": {
            "pooled": pixel_accuracy(result.confusion),
            "per_image_mean": _mean([img["pixel_accuracy"] for img in result.per_image]),
        },
        "fraction_errors": fraction_errors,
        "ms_per_image": {
            "mean": float(np.mean([img["segment_ms"] for img in result.per_image])),
            "median": float(np.median([img["segment_ms"] for img in result.per_image])),
        },
        "confusion_matrix": {"rows": "truth", "columns": "predicted", "labels": list(names.values()),
                             "counts": result.confusion.tolist()},
        "images": result.per_image,
    }


def image_record(stem: str, predicted: np.ndarray, truth: np.ndarray, mode: str, segment_ms: float) -> dict[str, Any]:
    """Per-image scores (None where a class is in neither mask), fractions and timing."""
    names = class_names(mode)
    confusion = confusion_matrix(predicted, truth, len(names))
    scores = class_scores(confusion)
    fractions = {"unmelted_pct": {"true": fraction_pct(truth, UNMELTED), "predicted": fraction_pct(predicted, UNMELTED)}}
    if mode == LABEL_MODE_CLASSES:
        fractions["porosity_pct"] = {"true": fraction_pct(truth, PORE), "predicted": fraction_pct(predicted, PORE)}
    return {
        "stem": stem,
        "classes": {names[cls]: scores[cls] for cls in names},
        "pixel_accuracy": pixel_accuracy(confusion),
        "fractions": fractions,
        "segment_ms": round(segment_ms, 3),
    }


# --------------------------------------------------------------------------- running


@dataclass(frozen=True)
class EvaluatedImage:
    """One image as every engine saw it, for overlays: enhanced frame, truth labels, raw masks."""

    item: LabelledImage
    enhanced: np.ndarray
    truth: np.ndarray
    masks: dict[str, np.ndarray]


def detect_label_mode(pairs: Sequence[LabelledImage]) -> str:
    """Read every mask once and decide the set's label mode (see `label_mode`)."""
    return label_mode([{int(v) for v in np.unique(read_mask_values(pair.mask_path))} for pair in pairs])


def load_image(pair: LabelledImage, cfg: Config, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """(enhanced frame, truth labels) of one pair, decoded and enhanced exactly as the daemon does."""
    frames = decode_file(pair.image_path, max_pixels=cfg.input.max_pixels, max_file_bytes=cfg.input.max_file_bytes)
    if len(frames) > 1:
        logger.warning("%s has %d fields; only the first is evaluated", pair.image_path.name, len(frames))
    pixels = frames[0].pixels
    raw_mask = read_mask_values(pair.mask_path)
    if raw_mask.shape != pixels.shape:
        msg = (f"mask {pair.mask_path} is {raw_mask.shape[1]}x{raw_mask.shape[0]} but image {pair.image_path.name} "
               f"is {pixels.shape[1]}x{pixels.shape[0]}")
        raise EvaluationError(msg)
    truth = to_labels(raw_mask, mode, source=f"mask {pair.mask_path}")
    return enhance(pixels, cfg.preprocess, backend="cpu"), truth


def evaluate_set(engines: Sequence[SegmentationEngine], pairs: Sequence[LabelledImage], cfg: Config,
                 on_image: Callable[[EvaluatedImage], None] | None = None,
                 progress: Callable[[int], None] | None = None) -> tuple[list[EngineResult], str]:
    """Run every loaded engine over every pair (one image in memory at a time); returns results and label mode."""
    mode = detect_label_mode(pairs)
    n_classes = len(class_names(mode))
    results = [EngineResult(e.name, e.backend, e.model_hash, np.zeros((n_classes, n_classes), np.int64))
               for e in engines]
    for pair in pairs:
        enhanced, truth = load_image(pair, cfg, mode)
        masks = {}
        for engine, result in zip(engines, results, strict=True):
            start = time.perf_counter()
            mask = engine.segment(enhanced)
            segment_ms = (time.perf_counter() - start) * 1000.0
            predicted = fold_prediction(mask, mode)
            result.confusion += confusion_matrix(predicted, truth, n_classes)
            result.per_image.append(image_record(pair.stem, predicted, truth, mode, segment_ms))
            masks[engine.name] = mask
        if on_image is not None:
            on_image(EvaluatedImage(pair, enhanced, truth, masks))
        if progress is not None:
            progress(1)
    return results, mode


# --------------------------------------------------------------------------- tables


def table_rows(summaries: Sequence[dict[str, Any]], mode: str, *, statistic: str = "pooled") -> list[list[str]]:
    """Rows `[metric, engine 1, engine 2, ...]` of the comparison table (the seed's layout).

    `statistic` is `pooled` (all pixels of the set; with the fraction errors, timing and
    backend rows) or `per_image_mean` (the class scores and pixel accuracy only).
    """
    names = list(class_names(mode).values())
    rows: list[list[str]] = []
    for metric, label in (("iou", "IoU"), ("dice", "Dice"), ("precision", "Precision"), ("recall", "Recall")):
        for name in names:
            rows.append([f"{label} {name}"] + [_fmt(s["classes"][name][statistic][metric]) for s in summaries])
    rows.append(["Pixel accuracy"] + [_fmt(s["pixel_accuracy"][statistic]) for s in summaries])
    if statistic != "pooled":
        return rows
    for key, label in (("unmelted_pct", "Unmelted %"), ("porosity_pct", "Porosity %")):
        if key not in summaries[0]["fraction_errors"]:
            continue
        rows.append([f"{label} error, mean abs (points)"]
                    + [_fmt(s["fraction_errors"][key]["mean_abs_error_pct_points"], 2) for s in summaries])
        rows.append([f"{label} error, mean signed (points)"]
                    + [_fmt(s["fraction_errors"][key]["mean_signed_error_pct_points"], 2, signed=True) for s in summaries])
    rows.append(["ms per image (mean)"] + [_fmt(s["ms_per_image"]["mean"], 1) for s in summaries])
    rows.append(["Backend"] + [s["backend"] for s in summaries])
    return rows


def markdown_table(summaries: Sequence[dict[str, Any]], mode: str, *, statistic: str = "pooled") -> str:
    """The comparison as a Markdown table, metrics down, engines across.

    Example:
        >>> s = {"classes": {"rest": {"pooled": {"iou": 1.0, "dice": 1.0, "precision": 1.0, "recall": 1.0}},
        ...     "unmelted": {"pooled": {"iou": 0.5, "dice": 0.67, "precision": None, "recall": 0.5}}},
        ...     "pixel_accuracy": {"pooled": 0.9}, "fraction_errors": {}, "ms_per_image": {"mean": 12.0},
        ...     "backend": "cpu", "engine": "unet"}
        >>> markdown_table([s], "binary").splitlines()[:3]
        ['| Metric | unet |', '| --- | ---: |', '| IoU rest | 1.000 |']
    """
    header = ["Metric"] + [s["engine"] for s in summaries]
    lines = ["| " + " | ".join(header) + " |", "| --- |" + " ---: |" * len(summaries)]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(summaries, mode, statistic=statistic)]
    return "\n".join(lines)


def text_table(summaries: Sequence[dict[str, Any]], mode: str) -> str:
    """The pooled comparison as aligned plain text, for the terminal."""
    header = ["metric"] + [s["engine"] for s in summaries]
    rows = [header] + table_rows(summaries, mode)
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [row[0].ljust(widths[0]) + "".join("  " + cell.rjust(w) for cell, w in zip(row[1:], widths[1:], strict=True))
             for row in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def _fmt(value: float | None, digits: int = 3, *, signed: bool = False) -> str:
    if value is None:
        return "–"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"
