"""`inspectd evaluate --images DIR --masks DIR [--engines classical,unet] --out DIR`.

Runs each engine over the labelled images (same preprocessing as the daemon), prints the
comparison table and writes into `--out`:
- `metrics.json`: per engine, per class IoU / Dice / precision / recall (pooled over all
  pixels and per-image means), pixel accuracy, fraction errors, ms per image, the
  confusion matrix and every image's numbers;
- `report.md`: the comparison tables (pooled, then per-image means);
- `report.html`: the pooled table and, per image, the enhanced image, the truth and each
  engine's mask as overlays side by side (PNGs in `overlays/`, at most 800 px wide).

Exit codes: 0 done; 2 usage, config, engine or label-set error.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote

import cv2
import numpy as np
from tqdm import tqdm

from inspectd import config
from inspectd.analysis.engines.registry import create_engine
from inspectd.data.labelled import LabelledDataError, find_pairs
from inspectd.data.scores import fraction_pct
from inspectd.errors import EngineError, ImageDecodeError
from inspectd.escaping import html_text, markdown_code
from inspectd.reports.evaluate import (
    LABEL_MODE_BINARY,
    EvaluatedImage,
    evaluate_set,
    markdown_table,
    summarise,
    table_rows,
    text_table,
)
from inspectd.reports.report import render_overlay, to_display_uint8
from inspectd.types import MELTED, PORE, UNMELTED

EXIT_OK, EXIT_USAGE = 0, 2
OVERLAY_MAX_WIDTH_PX = 800


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "evaluate",
        description="Masks are matched to images by file stem (<stem>.png or <stem>_mask.png). Masks with only "
        "{0,1} or {0,255} are the seed's binary labels (unmelted vs the rest); masks with 2s are class indices "
        "(0 melted, 1 unmelted, 2 pore). Exit code: 0 done, 2 usage/config/engine/label error.",
    )
    parser.add_argument("--images", required=True, help="folder of micrographs")
    parser.add_argument("--masks", required=True, help="folder of masks (may be the images folder)")
    parser.add_argument("--engines", default="classical,unet", help="comma-separated engines (default: %(default)s)")
    parser.add_argument("--out", required=True, help="output folder for metrics.json, report.md, report.html")
    parser.add_argument("--config", default=None, help="YAML config (preprocess, engine settings)")
    parser.add_argument("--no-overlays", action="store_true", help="write report.html without per-image overlays")
    return parser


def run(args: argparse.Namespace) -> int:
    cfg = config.load(args.config)
    engine_names = [name.strip() for name in args.engines.split(",") if name.strip()]
    if not engine_names or len(set(engine_names)) != len(engine_names):
        print(f"inspectd evaluate: --engines must name distinct engines, got {args.engines!r}", file=sys.stderr)
        return EXIT_USAGE
    try:
        pairs = find_pairs(Path(args.images), Path(args.masks))
        engines = []
        for name in engine_names:
            engine_cfg = copy.deepcopy(cfg.segment)
            engine_cfg.engine = name
            engine = create_engine(engine_cfg)
            engine.warm_up()
            engines.append(engine)
        out_dir = Path(args.out)
        out_dir.mkdir(parents=True, exist_ok=True)
        overlays: list[dict[str, Any]] = []
        writer = None if args.no_overlays else _OverlayWriter(out_dir / "overlays", overlays)
        with tqdm(total=len(pairs), desc="evaluate", unit="image", disable=len(pairs) < 2 or None,
                  file=sys.stderr) as bar:
            results, mode = evaluate_set(engines, pairs, cfg, on_image=writer, progress=bar.update)
    except EngineError as exc:
        print(f"inspectd evaluate: engine error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (LabelledDataError, ImageDecodeError) as exc:
        print(f"inspectd evaluate: {exc}", file=sys.stderr)
        return EXIT_USAGE

    summaries = [summarise(result, mode) for result in results]
    document = {
        "images_dir": str(Path(args.images)),
        "masks_dir": str(Path(args.masks)),
        "n_images": len(pairs),
        "label_mode": mode,
        "label_mode_note": _mode_note(mode),
        "preprocess": cfg.preprocess.model_dump(mode="json"),
        "engines": {s["engine"]: s for s in summaries},
    }
    (out_dir / "metrics.json").write_text(json.dumps(document, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    (out_dir / "report.md").write_text(_markdown_report(document, summaries, mode), encoding="utf-8")
    (out_dir / "report.html").write_text(_html_report(document, summaries, mode, overlays), encoding="utf-8")

    print(f"{len(pairs)} image(s), labels: {_mode_note(mode)}")
    print(text_table(summaries, mode))
    print(f"\n-> {out_dir}/metrics.json, report.md, report.html")
    return EXIT_OK


def _mode_note(mode: str) -> str:
    if mode == LABEL_MODE_BINARY:
        return ("binary (the seed's convention: unmelted vs everything else); predictions are folded the same way "
                "and porosity is not scored")
    return "class indices (0 melted, 1 unmelted, 2 pore)"


def _markdown_report(document: dict[str, Any], summaries: list[dict[str, Any]], mode: str) -> str:
    parts = [
        "# Segmentation accuracy",
        "",
        f"{document['n_images']} image(s) from {markdown_code(document['images_dir'])}, masks from "
        f"{markdown_code(document['masks_dir'])}.",
        f"Labels: {document['label_mode_note']}.",
        "",
        "## Pooled over all pixels",
        "",
        markdown_table(summaries, mode),
        "",
        "## Mean of per-image values",
        "",
        markdown_table(summaries, mode, statistic="per_image_mean"),
        "",
        "Fraction errors are predicted minus true area percentage per image, in percentage points. "
        "Times are the engine's `segment()` on the enhanced frame, on this machine.",
        "",
    ]
    for s in summaries:
        if s["model_hash"]:
            parts.append(f"- `{s['engine']}` model sha256 `{s['model_hash']}`")
    return "\n".join(parts) + "\n"


class _OverlayWriter:
    """Writes the enhanced image, the truth and every engine's mask as overlay PNGs per image."""

    def __init__(self, folder: Path, rows: list[dict[str, Any]]) -> None:
        self.folder = folder
        self.rows = rows
        folder.mkdir(parents=True, exist_ok=True)

    def __call__(self, image: EvaluatedImage) -> None:
        stem = image.item.sample_id
        row: dict[str, Any] = {"stem": stem, "panels": []}
        plain = cv2.cvtColor(to_display_uint8(image.enhanced), cv2.COLOR_GRAY2BGR)
        row["panels"].append(("image (enhanced)", self._write(f"{stem}_image.png", plain)))
        row["panels"].append(("truth", self._write(f"{stem}_truth.png", _overlay(image.enhanced, image.truth))))
        for name, mask in image.masks.items():
            row["panels"].append((name, self._write(f"{stem}_{name}.png", _overlay(image.enhanced, mask))))
        self.rows.append(row)

    def _write(self, name: str, picture: np.ndarray) -> str:
        height, width = picture.shape[:2]
        if width > OVERLAY_MAX_WIDTH_PX:
            size = (OVERLAY_MAX_WIDTH_PX, max(1, round(height * OVERLAY_MAX_WIDTH_PX / width)))
            picture = cv2.resize(picture, size, interpolation=cv2.INTER_AREA)
        ok, encoded = cv2.imencode(".png", picture)
        if not ok:
            msg = f"could not encode {name}"
            raise OSError(msg)
        (self.folder / name).write_bytes(encoded.tobytes())
        return f"{self.folder.name}/{name}"


def _overlay(enhanced: np.ndarray, mask: np.ndarray) -> np.ndarray:
    metrics = {
        "melted_fraction_pct": fraction_pct(mask, MELTED),
        "unmelted_fraction_pct": fraction_pct(mask, UNMELTED),
        "porosity_pct": fraction_pct(mask, PORE),
    }
    return render_overlay(enhanced, mask, metrics)


def _html_report(document: dict[str, Any], summaries: list[dict[str, Any]], mode: str,
                 overlays: list[dict[str, Any]]) -> str:
    esc = html_text  # image stems come from file names
    header = "".join(f"<th>{esc(s['engine'])}</th>" for s in summaries)
    body = "".join("<tr>" + f"<th>{esc(row[0])}</th>" + "".join(f"<td>{esc(c)}</td>" for c in row[1:]) + "</tr>"
                   for row in table_rows(summaries, mode))
    sections = []
    for row in overlays:
        figures = "".join(f'<figure><img src="{esc(quote(src, errors="surrogateescape"))}" alt="{esc(caption)}" loading="lazy">'
                          f"<figcaption>{esc(caption)}</figcaption></figure>" for caption, src in row["panels"])
        sections.append(f"<section><h3>{esc(row['stem'])}</h3><div class=\"row\">{figures}</div></section>")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>inspectd evaluation</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
th, td {{ border: 1px solid #ccc; padding: 0.25em 0.7em; }}
td {{ text-align: right; font-variant-numeric: tabular-nums; }}
th {{ text-align: left; background: #f4f4f4; }}
.row {{ display: flex; gap: 0.5em; flex-wrap: wrap; }}
figure {{ margin: 0; }} figure img {{ max-width: 400px; display: block; }}
figcaption {{ font-size: 0.9em; text-align: center; }}
.legend span {{ padding: 0 0.5em; }}
</style></head><body>
<h1>Segmentation accuracy</h1>
<p>{document['n_images']} image(s) from <code>{esc(document['images_dir'])}</code>, masks from
<code>{esc(document['masks_dir'])}</code>. Labels: {esc(document['label_mode_note'])}.
Scores pooled over all pixels; per-image means are in <code>metrics.json</code> and <code>report.md</code>.</p>
<table><thead><tr><th>Metric</th>{header}</tr></thead><tbody>{body}</tbody></table>
<p class="legend">Overlays: <span style="color:#00b400">unmelted contours</span>
<span style="color:#e00000">pore contours</span>; melted matrix is unmarked.</p>
{''.join(sections)}
</body></html>
"""
