"""The benchmark's tables: plain text for the terminal, Markdown for `bench/RESULTS.md`.

Both come from the JSON document `throughput.run_benchmark` builds, so the printed table,
the appended section and the JSON never disagree. Ratios are inspectd / seed-style peer:
above 1 for frames/s is faster than the peer, below 1 for latency is quicker than the peer.

`append_section` only ever adds text: the first run creates a `## Throughput` heading at the
end of the file, later runs insert their `###` subsection at the end of that heading's
section (before the next `## ` heading, which belongs to someone else), so other sections
of the file are never rewritten.

Example:
    >>> fmt(3.14159, 2), fmt(None), ratio_text(2.5)
    ('3.14', '–', '2.50x')
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

SECTION_HEADING = "## Throughput"
SECTION_INTRO = (
    "Written by `python bench/throughput.py` (also `inspectd bench`): N generated frames through the real "
    "daemon pipeline (in-memory camera source -> work queue -> analysis workers -> SQLite journal -> ZeroMQ "
    "publish, with a subscriber counting), per engine, beside the seed-style pipeline as the peer. "
    "Each run below is one invocation; the JSON file it names holds every number."
)


def fmt(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def ratio_text(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}x"


def _fps_by_workers(entry: dict[str, Any]) -> str:
    runs = [run for run in entry.get("runs", []) if run["mode"] == "throughput"]
    return " / ".join(f"{run['fps']:.2f}" for run in runs) or "–"


def _offered(entry: dict[str, Any]) -> str:
    offered = entry.get("offered")
    if not offered:
        return "–"
    verdict = "yes" if offered["keeps_up"] else "NO"
    return f"{offered['dropped']}/{offered['frames']} dropped, {verdict}"


def _iou(entry: dict[str, Any], name: str) -> str:
    accuracy = entry.get("accuracy") or {}
    return fmt((accuracy.get("iou") or {}).get(name), 3)


def summary_rows(document: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the main table: speed, ratios to the peer, accuracy."""
    workers = "/".join(str(w) for w in document["settings"]["workers"])
    rate = document["settings"]["rate_fps"]
    header = ["pipeline", "backend", "scale", f"fps (workers {workers})", "fps x seed",
              "latency p50 / p95 / p99 ms", "p50 x seed", "CPU %", "others' CPU %", "peak RSS MB",
              f"at {fmt(rate, 1)} fps offered" if rate else "offered rate",
              "IoU unmelted", "IoU pore", "mean IoU"]
    rows = []
    for key, entry in document["engines"].items():
        if not entry.get("available", True):
            rows.append([key, entry.get("backend", "–"), "–", f"not run: {entry.get('reason')}"] + ["–"] * 10)
            continue
        latency = entry["latency_ms"]
        rows.append([
            key, entry["backend"], fmt(entry.get("scale"), 2) if entry["engine"] == "unet" else "–",
            _fps_by_workers(entry), ratio_text(entry["ratios"]["fps_vs_seed"]),
            f"{latency['p50']:.0f} / {latency['p95']:.0f} / {latency['p99']:.0f}",
            ratio_text(entry["ratios"]["latency_p50_vs_seed"]), fmt(entry["cpu_pct"], 0),
            fmt(entry.get("others_cpu_pct_of_machine_max"), 0), fmt(entry["peak_rss_mb"], 0),
            _offered(entry), _iou(entry, "unmelted"), _iou(entry, "pore"),
            fmt((entry.get("accuracy") or {}).get("mean_iou"), 3),
        ])
    seed = document["seed"]
    if seed.get("available", True):
        latency = seed["latency_ms"]
        rows.append([
            "seed-style peer", "cpu", "/".join(f"{v:.2f}" for v in seed["working_scale_xy"]), f"{seed['fps']:.2f}",
            "1.00x",
            f"{latency['p50']:.0f} / {latency['p95']:.0f} / {latency['p99']:.0f}", "1.00x",
            fmt(seed["cpu_pct"], 0), fmt(seed.get("others_cpu_pct_of_machine"), 0), fmt(seed["peak_rss_mb"], 0), "–",
            f"{seed['published_test_iou']:.3f} (published)", "–", "–",
        ])
    else:
        rows.append(["seed-style peer", "–", "–", f"not run: {seed.get('reason')}", "–", "–", "–", "–", "–", "–", "–",
                     f"{seed['published_test_iou']:.3f} (published)", "–", "–"])
    return header, rows


def stage_rows(document: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Mean ms per stage, one column per pipeline (one frame in flight; the peer frame by frame)."""
    entries = {key: e for key, e in document["engines"].items() if e.get("available", True)}
    seed = document["seed"]
    stages: list[str] = []
    for entry in entries.values():
        stages += [s for s in entry["stages_ms"] if s not in stages]
    header = ["stage (mean ms)"] + list(entries)
    rows = [[stage] + [fmt(e["stages_ms"].get(stage), 1) for e in entries.values()] for stage in stages]
    rows.append(["capture->publish mean"] + [fmt(e["latency_ms"]["mean"], 1) for e in entries.values()])
    if seed.get("available", True):
        header.append("seed-style peer")
        for row in rows:
            row.append("–")
        rows += [[f"seed: {stage}"] + ["–"] * len(entries) + [fmt(ms, 1)] for stage, ms in seed["stages_ms"].items()]
        rows.append(["seed: clahe_skimage (instead of OpenCV's)"] + ["–"] * len(entries)
                    + [fmt(seed.get("clahe_skimage_ms"), 1)])
        rows.append(["seed: frame total mean"] + ["–"] * len(entries) + [fmt(seed["latency_ms"]["mean"], 1)])
    return header, rows


def text_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Aligned plain-text table.

    >>> print(text_table(["a", "bb"], [["1", "2"]]))
    a  bb
    -----
    1   2
    """
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join([str(header[0]).ljust(widths[0])] + [str(c).rjust(w) for c, w in zip(header[1:], widths[1:],
                                                                                            strict=True)])]
    lines.append("-" * len(lines[0]))
    for row in rows:
        lines.append("  ".join([str(row[0]).ljust(widths[0])]
                               + [str(c).rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)]))
    return "\n".join(lines)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """GitHub Markdown table, first column left-aligned, the others right-aligned.

    >>> markdown_table(["a", "b"], [["x", "1"]]).splitlines()[1]
    '| --- | ---: |'
    """
    lines = ["| " + " | ".join(header) + " |", "| --- |" + " ---: |" * (len(header) - 1)]
    lines += ["| " + " | ".join(str(c).replace("|", "/") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def findings(document: dict[str, Any]) -> list[str]:
    """Targets met or missed, and where the time goes, as sentences."""
    lines = []
    for target in document["targets"]:
        state = "met" if target["met"] else "MISSED"
        lines.append(f"- Target {target['name']}: {state} ({target['detail']}).")
    for key, entry in document["engines"].items():
        if not entry.get("available", True):
            continue
        stages = {k: v for k, v in entry["stages_ms"].items() if k not in ("other",) and v is not None}
        if stages:
            top = sorted(stages.items(), key=lambda kv: -kv[1])[:3]
            share = ", ".join(f"{name} {ms:.0f} ms" for name, ms in top)
            lines.append(f"- `{key}`: capture to publish {entry['latency_ms']['mean']:.0f} ms mean with one frame "
                         f"in flight; the largest stages: {share}; best throughput with {entry['fps_workers']} "
                         f"worker(s), CPU {entry['cpu_pct']:.0f} % of one core.")
    return lines


def markdown_section(document: dict[str, Any]) -> str:
    """The `###` subsection of one run (machine, load, settings, tables, findings)."""
    machine = document["machine"]
    settings = document["settings"]
    versions = ", ".join(f"{k} {v}" for k, v in machine["versions"].items())
    load = document["load_average"]
    header, rows = summary_rows(document)
    stage_header, stage_body = stage_rows(document)
    parts = [
        f"### {document['date_utc']} — {settings['frames']} frames of {settings['size']}, {document['machine_line']}",
        "",
        f"- Machine: {machine['cpu']['model']}, {machine['cpu']['cores_usable']} usable cores "
        f"({machine['cpu']['cores_logical']} logical), {machine['memory_gib']} GiB, "
        f"GPU: {', '.join(g['name'] for g in machine['gpus']) or 'none'}; ONNX Runtime providers: "
        f"{', '.join(machine['onnxruntime_providers'])}.",
        f"- Load average (1/5/15 min) at start {load['start']}, at end {load['end']} "
        "(a shared machine: the column \"others' CPU %\" is the largest share of all cores that other processes "
        "used during any timed run of that pipeline, from /proc/stat).",
        f"- Versions: {versions}.",
        f"- Command: `{document['command']}`; JSON: `{document['json_path']}`; plot: `{document['plot_path']}`.",
        _model_line(settings.get("unet_model")),
        f"- Frames: {settings['distinct_frames']} distinct synthetic {settings['size']} 8-bit frames (cycled), "
        f"{settings['warmup_frames']} warm-up frame(s) per run not counted. fps = saturated throughput "
        "(frames pushed as fast as the pipeline takes them, never dropped); latency = capture to publish "
        "with one frame in flight (saturated-run latency, which adds queueing, is in the JSON); "
        "offered = frames pushed at the given rate into a drop-oldest camera buffer (it keeps up when nothing "
        "was dropped and verdicts came out at >= 95 % of that rate; the buffers hold about "
        f"{settings['camera_buffer_frames'] + settings['queue_size']} frames before the first drop, so a short "
        "run shows falling behind as a low output rate before it shows drops).",
        "",
        markdown_table(header, rows),
        "",
        markdown_table(stage_header, stage_body),
        "",
        f"Accuracy: {document['accuracy_set']['frames']} held-out generated frames "
        f"({document['accuracy_set']['size']}, seed {document['accuracy_set']['seed']}; "
        f"{document['accuracy_set']['note']}), IoU pooled over all pixels by `inspectd.reports.evaluate`. "
        f"The seed-style peer's weights are untrained (timing only); its accuracy is the seed's published "
        f"test IoU {document['seed']['published_test_iou']} on its own real, binary-labelled data.",
        "",
        *findings(document),
        "",
    ]
    return "\n".join(parts)


def _model_line(model: dict[str, Any] | None) -> str:
    if not model:
        return "- U-Net: not run."
    return (f"- U-Net model `{model['path']}` (sha256 `{(model['sha256'] or '')[:16]}...`), tiles of at most "
            f"{model['tile_px']} px with {model['overlap_px']} px overlap.")


def append_section(results_md: Path, section: str) -> None:
    """Add `section` at the end of the `## Throughput` section of `results_md` (created if absent)."""
    path = Path(results_md)
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    lines = text.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.rstrip() == SECTION_HEADING), None)
    block = section if section.endswith("\n") else section + "\n"
    if start is None:
        head = text.rstrip("\n") + "\n\n" if text.strip() else ""
        text = head + f"{SECTION_HEADING}\n\n{SECTION_INTRO}\n\n" + block
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        before = "".join(lines[:end])
        if not before.endswith("\n\n"):
            before += "\n" if before.endswith("\n") else "\n\n"
        after = "".join(lines[end:])
        text = before + block + ("\n" + after if after else "")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    logger.info("appended the throughput results to %s", path)
