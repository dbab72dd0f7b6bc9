"""Files `inspectd analyze` writes per field: `<stem>.json`, `<stem>_mask.png`,
`<stem>_overlay.png`, `<stem>_regions.csv`.

The mask PNG holds raw class indices (0 melted, 1 unmelted, 2 pore), not scaled for
display, so it can be read back as training or evaluation labels.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

import inspectd
from inspectd.analysis.analyzer import FrameResult
from inspectd.config import Config
from inspectd.escaping import csv_cell
from inspectd.metric_values import finite_or_none
from inspectd.types import CLASS_NAMES, MELTED, PORE, UNMELTED, Region

RESULT_SCHEMA_VERSION = "1.0"
HEADLINE_METRICS = ("melted_fraction_pct", "unmelted_fraction_pct", "porosity_pct")

# BGR colours of the overlay, one per class; melted matrix is the unmarked background.
CLASS_COLOURS_BGR = {MELTED: (255, 160, 0), UNMELTED: (0, 220, 0), PORE: (0, 0, 255)}


def field_stem(stem: str, field_index: int, n_fields: int) -> str:
    """`<stem>` for a single-field file; `<stem>_field<k>` for each page of a multi-page TIFF."""
    return stem if n_fields == 1 else f"{stem}_field{field_index}"


def result_record(result: FrameResult, cfg: Config, *, engine_name: str, backend: str,
                  model_hash: str | None) -> dict[str, Any]:
    """The JSON document for one field: verdict, every measured number, timings, versions."""
    frame, verdict = result.frame, result.verdict
    metrics = result.measurements.metrics if result.measurements else {}
    record: dict[str, Any] = {
        "schema_version": RESULT_SCHEMA_VERSION,
        "source": frame.source,
        "field_index": frame.field_index,
        "part_id": frame.part_id,
        "image": {
            "width": int(frame.pixels.shape[1]) if frame.pixels is not None else None,
            "height": int(frame.pixels.shape[0]) if frame.pixels is not None else None,
            "bit_depth": frame.bit_depth,
            "sha256": frame.sha256,
        },
        "verdict": verdict.result.value,
        "reason": verdict.reason,
        "failed_rules": [dataclasses.asdict(rule) for rule in verdict.failed_rules],
        "warnings": list(verdict.warnings),
    }
    record.update(assessment_fields(result))
    for name in HEADLINE_METRICS:
        record[name] = finite_or_none(metrics.get(name))
    record["metrics"] = {name: finite_or_none(value) for name, value in metrics.items()}
    record["um_per_px"] = cfg.um_per_px
    record["regions_count"] = len(result.measurements.regions) if result.measurements else 0
    record["engine"] = {"name": engine_name, "backend": backend, "model_hash": model_hash}
    record["timings_ms"] = dict(verdict.timings_ms)
    record["rules"] = [rule.model_dump(mode="json") for rule in cfg.rules]
    record["config"] = cfg.model_dump(mode="json")
    record["versions"] = software_versions()
    return record


def assessment_fields(result: FrameResult) -> dict[str, Any]:
    """`confidence` (0..1), `out_of_distribution` and the `ood` details; null for a frame never assessed.

    >>> from inspectd.types import Frame, Verdict, VerdictResult
    >>> assessment_fields(FrameResult(Frame(None, "bad.png"), Verdict(VerdictResult.ERROR, reason="truncated")))
    {'confidence': None, 'out_of_distribution': None, 'ood': None}
    """
    assessment = result.assessment
    if assessment is None:
        return {"confidence": None, "out_of_distribution": None, "ood": None}
    return {
        "confidence": finite_or_none(assessment.confidence),
        "out_of_distribution": assessment.out_of_distribution,
        "ood": {"distance": finite_or_none(assessment.ood_distance), "reasons": list(assessment.ood_reasons)},
    }


def software_versions() -> dict[str, str]:
    import numba
    import onnxruntime

    return {
        "inspectd": inspectd.__version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "opencv": cv2.__version__,
        "numba": numba.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


def write_field_outputs(result: FrameResult, record: dict[str, Any], out_dir: Path, stem: str) -> list[Path]:
    """Write the JSON (always); for a segmented field, mask and overlay; for a measured one, the region table.

    A field refused as out of distribution was segmented but not measured: its mask and
    overlay (legend "not measured") are written so the engine's proposal can be reviewed.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / f"{stem}.json"
    json_path.write_text(json.dumps(record, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    written = [json_path]
    if result.mask is None or result.enhanced is None:
        return written
    mask_path = out_dir / f"{stem}_mask.png"
    _imwrite(mask_path, result.mask.astype(np.uint8))
    overlay_path = out_dir / f"{stem}_overlay.png"
    metrics = result.measurements.metrics if result.measurements is not None else None
    _imwrite(overlay_path, render_overlay(result.enhanced, result.mask, metrics))
    written += [mask_path, overlay_path]
    if result.measurements is not None:
        regions_path = out_dir / f"{stem}_regions.csv"
        write_regions_csv(regions_path, result.measurements.regions)
        written.append(regions_path)
    return written


def write_regions_csv(path: Path, regions: Sequence[Region]) -> None:
    """One row per region; text cells go through `escaping.csv_cell`, since the table is
    opened in spreadsheets, which would run a cell starting with `=` as a formula."""
    columns = [f.name for f in dataclasses.fields(Region)]
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for region in regions:
            writer.writerow([_csv_value(getattr(region, name)) for name in columns])


def render_overlay(enhanced: np.ndarray, mask: np.ndarray, metrics: dict[str, float] | None) -> np.ndarray:
    """Class contours over the enhanced image (as 8-bit BGR) with a legend of fractions
    (metrics None: a field that was not measured; the legend says so instead of numbers)."""
    grey8 = to_display_uint8(enhanced)
    overlay = cv2.cvtColor(grey8, cv2.COLOR_GRAY2BGR)
    thickness = max(1, round(min(mask.shape) / 400))
    for class_index in (UNMELTED, PORE):
        binary = (mask == class_index).astype(np.uint8)
        contours, _ = cv2.findContours(binary, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(overlay, contours, -1, CLASS_COLOURS_BGR[class_index], thickness, cv2.LINE_AA)
    _draw_legend(overlay, metrics)
    return overlay


def to_display_uint8(image: np.ndarray) -> np.ndarray:
    if image.dtype == np.uint8:
        return image
    return (image.astype(np.uint32) >> 8).astype(np.uint8) if image.dtype == np.uint16 else cv2.normalize(
        image, None, 0, 255, cv2.NORM_MINMAX, dtype=cv2.CV_8U
    )


def _draw_legend(overlay: np.ndarray, metrics: dict[str, float] | None) -> None:
    if metrics is None:
        labels = {MELTED: "melted matrix (unmarked)", UNMELTED: "unmelted: NOT MEASURED",
                  PORE: "pore: NOT MEASURED (out of distribution)"}
    else:
        labels = {
            MELTED: f"melted matrix {metrics.get('melted_fraction_pct', 0.0):.1f}% (unmarked)",
            UNMELTED: f"unmelted {metrics.get('unmelted_fraction_pct', 0.0):.1f}%",
            PORE: f"pore {metrics.get('porosity_pct', 0.0):.2f}%",
        }
    scale = max(0.35, min(overlay.shape[:2]) / 900)
    line_px = int(22 * scale / 0.6)
    box_w = int(330 * scale / 0.6)
    box_h = line_px * len(labels) + line_px // 2
    x0, y0 = 6, 6
    panel = overlay[y0:y0 + box_h, x0:x0 + box_w]
    panel[:] = (panel * 0.35).astype(np.uint8)
    for row, class_index in enumerate((MELTED, UNMELTED, PORE)):
        y = y0 + line_px * (row + 1)
        swatch = (x0 + 6, y - int(line_px * 0.6), x0 + 6 + int(line_px * 0.6), y)
        cv2.rectangle(overlay, swatch[:2], swatch[2:], CLASS_COLOURS_BGR[class_index], -1)
        cv2.putText(overlay, labels[class_index], (x0 + 12 + int(line_px * 0.6), y), cv2.FONT_HERSHEY_SIMPLEX,
                    scale, (255, 255, 255), 1, cv2.LINE_AA)


def _imwrite(path: Path, image: np.ndarray) -> None:
    ok, encoded = cv2.imencode(".png", image)
    if not ok:
        msg = f"could not encode {path.name}"
        raise OSError(msg)
    path.write_bytes(encoded.tobytes())


def _csv_value(value: object) -> object:
    return round(value, 4) if isinstance(value, float) else csv_cell(value)


__all__ = ["CLASS_NAMES", "field_stem", "render_overlay", "result_record", "write_field_outputs"]
