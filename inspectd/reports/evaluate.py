"""Engine accuracy against labelled micrographs: the seed's "traditional vs deep learning" table.

Why: the only honest way to choose between the classical engine and the U-Net (or between
two U-Nets) is to run both over the same labelled images, through the same preprocessing
as the daemon (`inspectd.analysis.preprocess.enhance`), and count pixels.

Labels. Pairs and mask conventions are `inspectd.data.labelled`'s, as in training: masks
are matched to images by file stem (`<stem>.png` or `<stem>_mask.png`, PNG, TIFF or BMP);
files named `*_mask.*` are never taken as images, so `inspectd synth` output (masks beside
images) works with `--images D --masks D`. The set's convention gives one of two modes:
- `classes`: class indices (0 melted, 1 unmelted, 2 pore).
- `binary` (the seed's labels, {0, 1} with 1 = unmelted or {0, 255} with 255 = unmelted,
  0 = everything else): only unmelted vs the rest can be compared, so predictions are
  folded the same way (melted and pore -> rest) and porosity is not scored.
Any other value, binary {0, 1} beside {0, 255}, or 255 beside class indices (which training
accepts, but which cannot be scored as one set) is a `LabelledDataError`.

Metrics (`inspectd.data.scores`), per class: IoU, Dice, precision and recall from one confusion matrix summed over
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
from typing import Any

import numpy as np

from inspectd.analysis.decode import decode_file
from inspectd.analysis.engines.base import SegmentationEngine
from inspectd.analysis.preprocess import enhance
from inspectd.config import Config
from inspectd.data.labelled import (
    LabelledDataError,
    LabelledPair,
    MaskConvention,
    detect_set_convention,
    read_mask,
    to_class_index,
)
from inspectd.data.scores import (
    METRIC_NAMES,
    class_scores,
    confusion_matrix,
    fraction_pct,
    pixel_accuracy,
)
from inspectd.types import CLASS_NAMES, PORE, UNMELTED

logger = logging.getLogger(__name__)

LABEL_MODE_CLASSES = "classes"
LABEL_MODE_BINARY = "binary"
# In binary mode the two compared classes are "rest" (0) and "unmelted" (1).
BINARY_CLASS_NAMES = {0: "rest", 1: "unmelted"}


class EvaluationError(LabelledDataError):
    """The image/mask set cannot be evaluated (masks that do not fit their images, a mixed set)."""


@dataclass
class EngineResult:
    """Everything measured for one engine over the set."""

    name: str
    backend: str
    model_hash: str | None
    confusion: np.ndarray
    per_image: list[dict[str, Any]] = field(default_factory=list)


# --------------------------------------------------------------------------- labels


def label_mode(convention: MaskConvention) -> str:
    """The evaluation mode of a set's mask convention (a mixed set cannot be scored as one).

    Example:
        >>> label_mode(MaskConvention.CLASS_INDEX), label_mode(MaskConvention.BINARY_0_255)
        ('classes', 'binary')
    """
    if convention is MaskConvention.MIXED:
        msg = (f"masks mix {MaskConvention.MIXED.describe()}: an evaluation scores one convention; "
               "evaluate the class-index and the binary masks as two sets")
        raise EvaluationError(msg)
    return LABEL_MODE_BINARY if convention.is_binary else LABEL_MODE_CLASSES


def fold_prediction(mask: np.ndarray, mode: str) -> np.ndarray:
    """An engine's class-index mask in the labels' terms (binary mode: unmelted -> 1, the rest -> 0)."""
    if mode == LABEL_MODE_BINARY:
        return (mask == UNMELTED).astype(np.uint8)
    return mask


# --------------------------------------------------------------------------- metrics


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

    item: LabelledPair
    enhanced: np.ndarray
    truth: np.ndarray
    masks: dict[str, np.ndarray]


def load_image(pair: LabelledPair, cfg: Config, convention: MaskConvention) -> tuple[np.ndarray, np.ndarray]:
    """(enhanced frame, truth labels) of one pair, decoded and enhanced exactly as the daemon does."""
    frames = decode_file(pair.image_path, max_pixels=cfg.input.max_pixels, max_file_bytes=cfg.input.max_file_bytes)
    if len(frames) > 1:
        logger.warning("%s has %d fields; only the first is evaluated", pair.image_path.name, len(frames))
    pixels = frames[0].pixels
    raw_mask = read_mask(pair.mask_path)
    if raw_mask.shape != pixels.shape:
        msg = (f"mask {pair.mask_path} is {raw_mask.shape[1]}x{raw_mask.shape[0]} but image {pair.image_path.name} "
               f"is {pixels.shape[1]}x{pixels.shape[0]}")
        raise EvaluationError(msg)
    truth = to_class_index(raw_mask, convention)  # binary: 0 rest, 1 unmelted
    return enhance(pixels, cfg.preprocess, backend="cpu"), truth


def evaluate_set(engines: Sequence[SegmentationEngine], pairs: Sequence[LabelledPair], cfg: Config,
                 on_image: Callable[[EvaluatedImage], None] | None = None,
                 progress: Callable[[int], None] | None = None) -> tuple[list[EngineResult], str]:
    """Run every loaded engine over every pair (one image in memory at a time); returns results and label mode."""
    convention = detect_set_convention(list(pairs))
    mode = label_mode(convention)
    n_classes = len(class_names(mode))
    results = [EngineResult(e.name, e.backend, e.model_hash, np.zeros((n_classes, n_classes), np.int64))
               for e in engines]
    for pair in pairs:
        enhanced, truth = load_image(pair, cfg, convention)
        masks = {}
        for engine, result in zip(engines, results, strict=True):
            start = time.perf_counter()
            mask = engine.segment(enhanced)
            segment_ms = (time.perf_counter() - start) * 1000.0
            predicted = fold_prediction(mask, mode)
            result.confusion += confusion_matrix(predicted, truth, n_classes)
            result.per_image.append(image_record(pair.sample_id, predicted, truth, mode, segment_ms))
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
