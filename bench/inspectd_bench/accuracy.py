"""Accuracy beside speed: each benchmarked engine scored on a held-out generated set.

Why in the benchmark: a faster pipeline that is less accurate must show as such, in the
same table. The set is drawn by `inspectd.data.synth`'s v3 generator (the realistic one the bundled
U-Net is trained on) with a seed that neither the bundled model's training and validation
(`scripts/train_bundled_model.sh`, seeds 2001-2004 and 3001) nor its model card's held-out
set (seeds 9001-9004) used, and `vary=True` so each frame draws its own look (particle size,
share and brightness relation, lamellae, pores, blur, noise, light, raw or enhanced). Scores come from
`inspectd.reports.evaluate` (the code behind `inspectd evaluate`): per-class IoU pooled over all
pixels (`inspectd.data.scores`), on the engine exactly as configured in the run (including the
U-Net's working scale).

Example:
    >>> import tempfile
    >>> from inspectd.config import Config
    >>> from inspectd.analysis.engines.registry import create_engine
    >>> pairs = write_heldout_set(Path(tempfile.mkdtemp()), n=1, width=96, height=64)
    >>> engine = create_engine(Config().segment); engine.warm_up()
    >>> scores = score_engine(engine, pairs, Config())
    >>> 0.0 <= scores["iou"]["unmelted"] <= 1.0
    True
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from inspectd.analysis.engines.base import SegmentationEngine
from inspectd.config import Config
from inspectd.data.labelled import LabelledPair, find_pairs
from inspectd.data.synth import RealisticParams, write_dataset
from inspectd.reports.evaluate import evaluate_set, summarise

logger = logging.getLogger(__name__)

HELDOUT_SEED = 5_550_001
HELDOUT_PARAMS = RealisticParams()


def heldout_description(n: int, width: int, height: int) -> dict[str, Any]:
    return {"generator": "inspectd.data.synth.write_dataset(generator='v3', vary=True)", "frames": n,
            "size": f"{width}x{height}", "seed": HELDOUT_SEED, "base_params": dataclasses.asdict(HELDOUT_PARAMS),
            "note": "seed differs from the bundled model's training and validation (seeds 2001-2004, 3001) "
                    "and its model card's held-out set (seeds 9001-9004)"}


def write_heldout_set(folder: Path, n: int, width: int, height: int) -> list[LabelledPair]:
    """Write `n` labelled frames into `folder` (masks beside them) and return the matched pairs."""
    write_dataset(folder, n=n, height=height, width=width, seed=HELDOUT_SEED, params=HELDOUT_PARAMS, vary=True,
                  generator="v3")
    return find_pairs(folder, folder)


def score_engine(engine: SegmentationEngine, pairs: Sequence[LabelledPair], cfg: Config) -> dict[str, Any]:
    """Pooled per-class IoU, mean IoU, pixel accuracy and fraction errors of one loaded engine."""
    results, mode = evaluate_set([engine], pairs, cfg)
    summary = summarise(results[0], mode)
    iou = {name: _round(scores["pooled"]["iou"]) for name, scores in summary["classes"].items()}
    present = [value for value in iou.values() if value is not None]
    return {
        "iou": iou,
        "mean_iou": _round(sum(present) / len(present)) if present else None,
        "pixel_accuracy": _round(summary["pixel_accuracy"]["pooled"]),
        "fraction_errors_pct_points": {key: _round(value["mean_abs_error_pct_points"])
                                       for key, value in summary["fraction_errors"].items()},
        "label_mode": mode,
        "images": len(pairs),
    }


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(float(value), digits)
