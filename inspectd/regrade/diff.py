"""Re-graded verdicts against the station's own: which frames and lots flip, and by how much.

The journals are read, never written: each is opened read-only with SQLite (no lock is
taken, no retention applied), so a report can be made while the daemon runs. A re-graded
field is matched to the station's verdict by the file's sha256 and the field index (the
station moved the file from its inbox, so the path differs); where a journal holds the same
field more than once, its latest verdict counts. Fields not in any journal are counted.

A lot is the manifest's `lot`, else its `part`, else the journal's part id. A lot PASSes when
all its matched fields PASS, FAILs when any FAILs, and is an ERROR otherwise. Per lot the
report gives the mean, SD and 95 % confidence interval of each fraction before and after
(ASTM E2109, as `inspectd analyze --sample`), over the matched fields analysed on each side.

Example:
    >>> after = [{"path": "/a/1.png", "field_index": 0, "sha256": "s1", "lot": "L1", "part": None,
    ...           "verdict": "FAIL", "reason": "", "porosity_pct": 6.0}]
    >>> before = {("s1", 0): {"verdict": "PASS", "reason": "", "part_id": "P", "station": "st", "seq": 4,
    ...                       "parameters": {"porosity_pct": {"value": 4.0, "unit": "%"}}}}
    >>> report = build_diff(after, before)
    >>> report["summary"]["flipped"], report["frames"][0]["delta"]["porosity_pct"], report["lots"][0]["flipped"]
    (1, 2.0, True)
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from inspectd.analysis.fieldstats import FRACTION_METRICS, summarize_fields
from inspectd.errors import InspectdError
from inspectd.escaping import html_text, markdown_code, printable
from inspectd.metric_values import finite_or_none

DIFF_SCHEMA_VERSION = "1.0"
HEADLINE_METRICS = FRACTION_METRICS
ROWS_SHOWN = 1000  # frames listed in diff.md / diff.html; diff.json lists every one
NO_LOT = "(no lot)"


class JournalReadError(InspectdError):
    """A journal given with --journal cannot be read (a usage error, exit 2)."""


def read_journal(path: str | Path) -> list[dict[str, Any]]:
    """Every verdict message in a station journal, in seq order, read without writing to it."""
    path = Path(path)
    if not path.is_file():
        msg = f"{path}: no such journal file"
        raise JournalReadError(msg)
    # A journal no daemon has open (no -wal beside it) is read as immutable, so not even SQLite's
    # -wal and -shm files appear beside it; one in use is read like any second reader would.
    in_use = path.with_name(path.name + "-wal").exists()
    uri = f"file:{quote(str(path.resolve()))}?mode=ro" + ("" if in_use else "&immutable=1")
    try:
        with contextlib.closing(sqlite3.connect(uri, uri=True)) as connection:  # closes; sqlite3's own only commits
            rows = connection.execute("SELECT message_json FROM verdicts ORDER BY seq").fetchall()
    except sqlite3.Error as exc:
        msg = f"{path}: cannot read the journal: {exc}"
        raise JournalReadError(msg) from exc
    return [json.loads(text) for (text,) in rows]


def original_verdicts(journal_paths: Iterable[str | Path]) -> dict[tuple[str, int], dict[str, Any]]:
    """(image sha256, field index) -> the latest journaled verdict message of that field."""
    latest: dict[tuple[str, int], dict[str, Any]] = {}
    for path in journal_paths:
        for message in read_journal(path):
            sha256 = message.get("image_sha256")
            if not sha256:
                continue
            key = (sha256, int(message.get("field_index") or 0))
            previous = latest.get(key)
            if previous is None or _order(message) >= _order(previous):
                latest[key] = message
    return latest


def _order(message: Mapping[str, Any]) -> tuple[str, int]:
    return str(message.get("publish_time") or ""), int(message.get("seq") or 0)


def build_diff(rows: Sequence[Mapping[str, Any]], originals: Mapping[tuple[str, int], Mapping[str, Any]],
               *, journals: Sequence[str] = (), regrade: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The diff document (diff.json) of re-graded `rows` (`frames` rows) against `originals`."""
    flipped_frames: list[dict[str, Any]] = []
    transitions: Counter[str] = Counter()
    lots: dict[str, list[tuple[Mapping[str, Any], Mapping[str, Any]]]] = defaultdict(list)
    matched = 0
    for row in rows:
        before = originals.get((row.get("sha256") or "", int(row["field_index"])))
        if before is None:
            continue
        matched += 1
        lot = row.get("lot") or row.get("part") or before.get("part_id") or NO_LOT
        lots[lot].append((before, row))
        if before.get("verdict") != row["verdict"]:
            transitions[f"{before.get('verdict')}->{row['verdict']}"] += 1
            flipped_frames.append(_frame_entry(row, before, lot))
    lot_entries = [_lot_entry(lot, pairs) for lot, pairs in sorted(lots.items())]
    return {
        "schema_version": DIFF_SCHEMA_VERSION,
        "journals": [str(j) for j in journals],
        "regrade": dict(regrade or {}),
        "summary": {
            "fields": len(rows),
            "matched": matched,
            "not_in_journals": len(rows) - matched,
            "flipped": len(flipped_frames),
            "transitions": dict(sorted(transitions.items())),
            "lots": len(lot_entries),
            "lots_flipped": sum(entry["flipped"] for entry in lot_entries),
        },
        "lots": lot_entries,
        "frames": flipped_frames,
    }


def _before_metrics(message: Mapping[str, Any]) -> dict[str, float | None]:
    parameters = message.get("parameters") or {}
    return {name: finite_or_none(entry.get("value") if isinstance(entry, Mapping) else entry)
            for name, entry in parameters.items()}


def _frame_entry(row: Mapping[str, Any], before: Mapping[str, Any], lot: str) -> dict[str, Any]:
    before_metrics = _before_metrics(before)
    delta = {}
    for name, old in before_metrics.items():
        new = finite_or_none(row.get(name))
        if old is not None and new is not None:
            delta[name] = new - old
    return {
        "path": row["path"], "field_index": int(row["field_index"]), "sha256": row.get("sha256"),
        "part": row.get("part"), "lot": lot,
        "before": {"verdict": before.get("verdict"), "reason": before.get("reason", ""),
                   "station": before.get("station"), "seq": before.get("seq"),
                   "publish_time": before.get("publish_time"), "source": before.get("source"),
                   "engine": before.get("engine"),
                   **{m: before_metrics.get(m) for m in HEADLINE_METRICS}},
        "after": {"verdict": row["verdict"], "reason": row.get("reason", ""),
                  **{m: finite_or_none(row.get(m)) for m in HEADLINE_METRICS}},
        "delta": delta,
    }


def _lot_entry(lot: str, pairs: list[tuple[Mapping[str, Any], Mapping[str, Any]]]) -> dict[str, Any]:
    before_verdicts = [str(before.get("verdict")) for before, _ in pairs]
    after_verdicts = [str(row["verdict"]) for _, row in pairs]
    before_fields = [_before_metrics(b) for b in (b for b, _ in pairs) if b.get("verdict") in ("PASS", "FAIL")]
    after_fields = [{m: finite_or_none(row.get(m)) for m in HEADLINE_METRICS}
                    for _, row in pairs if row["verdict"] in ("PASS", "FAIL")]
    before_verdict, after_verdict = lot_verdict(before_verdicts), lot_verdict(after_verdicts)
    return {
        "lot": lot,
        "fields": len(pairs),
        "flipped": before_verdict != after_verdict,
        "fields_flipped": sum(b != a for b, a in zip(before_verdicts, after_verdicts, strict=True)),
        "before": {"verdict": before_verdict, "verdicts": dict(Counter(before_verdicts)),
                   "statistics": _statistics(before_fields)},
        "after": {"verdict": after_verdict, "verdicts": dict(Counter(after_verdicts)),
                  "statistics": _statistics(after_fields)},
    }


def lot_verdict(verdicts: Sequence[str]) -> str:
    """PASS when every field passes, FAIL when any fails, else ERROR.

    >>> lot_verdict(["PASS", "PASS"]), lot_verdict(["PASS", "ERROR", "FAIL"]), lot_verdict(["PASS", "ERROR"])
    ('PASS', 'FAIL', 'ERROR')
    """
    if "FAIL" in verdicts:
        return "FAIL"
    return "PASS" if verdicts and all(v == "PASS" for v in verdicts) else "ERROR"


def _statistics(fields: list[dict[str, float | None]]) -> dict[str, Any]:
    if not fields:
        return {}
    clean = [{k: v for k, v in f.items() if v is not None} for f in fields]
    stats = summarize_fields(clean, names=HEADLINE_METRICS)
    return {name: stat.to_dict() for name, stat in stats.items()}


# ---------------------------------------------------------------------------- reports


def write_reports(report: Mapping[str, Any], out_dir: Path) -> list[Path]:
    """`diff.json`, `diff.md` and `diff.html` in `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "diff.json", out_dir / "diff.md", out_dir / "diff.html"]
    paths[0].write_text(json.dumps(report, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    paths[1].write_text(render_markdown(report), encoding="utf-8")
    paths[2].write_text(render_html(report), encoding="utf-8")
    return paths


def _tables(report: Mapping[str, Any]) -> list[tuple[str, list[str], list[list[tuple[str, bool]]], str]]:
    """(title, header, rows of (text, is_code) cells, note) for both renderings."""
    summary = report["summary"]
    overview = [[(k.replace("_", " "), False), (str(v), False)] for k, v in summary.items() if k != "transitions"]
    overview += [[(f"{k} fields", False), (str(v), False)] for k, v in summary["transitions"].items()]
    flipped_lots = [lot for lot in report["lots"] if lot["flipped"]]
    lot_rows = [[(lot["lot"], True), (str(lot["fields"]), False), (lot["before"]["verdict"], False),
                 (lot["after"]["verdict"], False), (str(lot["fields_flipped"]), False)]
                + [(_mean_change(lot, m), False) for m in HEADLINE_METRICS] for lot in flipped_lots]
    stats_rows = [[(lot["lot"], True), (str(lot["fields"]), False)]
                  + [(_stat_text(lot[side]["statistics"].get(m)), False) for m in HEADLINE_METRICS
                     for side in ("before", "after")] for lot in report["lots"]]
    frames = report["frames"]
    frame_rows = [[(f["path"], True), (str(f["field_index"]), False), (f["lot"], True),
                   (str(f["before"]["verdict"]), False), (f["after"]["verdict"], False)]
                  + [(_signed(f["delta"].get(m)), False) for m in HEADLINE_METRICS]
                  + [(f["after"]["reason"] or "", False)] for f in frames[:ROWS_SHOWN]]
    short = {"melted_fraction_pct": "melted %", "unmelted_fraction_pct": "unmelted %", "porosity_pct": "porosity %"}
    note = "" if len(frames) <= ROWS_SHOWN else f"The first {ROWS_SHOWN} of {len(frames)}; diff.json lists all."
    return [
        ("Summary", ["", "fields"], overview, ""),
        ("Lots whose verdict flips", ["lot", "fields", "before", "after", "fields flipped"]
         + [f"mean {short[m]} before → after" for m in HEADLINE_METRICS], lot_rows, ""),
        ("Frames whose verdict flips", ["file", "field", "lot", "before", "after"]
         + [f"Δ {short[m]}" for m in HEADLINE_METRICS] + ["reason after"], frame_rows, note),
        ("Per-lot statistics (mean ± 95 % CI over the matched fields analysed)", ["lot", "fields"]
         + [f"{short[m]} {side}" for m in HEADLINE_METRICS for side in ("before", "after")], stats_rows, ""),
    ]


def _mean_change(lot: Mapping[str, Any], metric: str) -> str:
    before = (lot["before"]["statistics"].get(metric) or {}).get("mean")
    after = (lot["after"]["statistics"].get(metric) or {}).get("mean")
    return f"{_fixed(before)} → {_fixed(after)}"


def _stat_text(stat: Mapping[str, Any] | None) -> str:
    if not stat or stat.get("mean") is None:
        return "-"
    half = stat.get("ci95_half_width")
    return f"{stat['mean']:.2f}" + ("" if half is None else f" ± {half:.2f}")


def _fixed(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _signed(value: float | None) -> str:
    return "-" if value is None else f"{value:+.2f}"


def _heading(report: Mapping[str, Any]) -> tuple[str, str]:
    regrade = report.get("regrade") or {}
    what = ", ".join(f"{k} {v}" for k, v in regrade.items() if v is not None)
    return "Re-grade against the station journals", what


def render_markdown(report: Mapping[str, Any]) -> str:
    title, what = _heading(report)
    lines = [f"# {title}", ""]
    if what:
        lines += [markdown_code(what), ""]
    lines += ["Journals: " + ", ".join(markdown_code(j) for j in report["journals"]), ""]
    for heading, header, rows, note in _tables(report):
        lines += [f"## {heading}", ""]
        if not rows:
            lines += ["None.", ""]
            continue
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "---|" * len(header))
        for row in rows:
            cells = [(markdown_code(text) if code else _plain_markdown(text)).replace("|", "\\|") for text, code in row]
            lines.append("| " + " | ".join(cells) + " |")
        lines += ["", note, ""] if note else [""]
    return "\n".join(lines)


def _plain_markdown(text: str) -> str:
    shown = printable(text)
    for ch in "\\`*_[]<>#":
        shown = shown.replace(ch, "\\" + ch)
    return shown


def render_html(report: Mapping[str, Any]) -> str:
    title, what = _heading(report)
    parts = ["<!doctype html>", '<html lang="en"><head><meta charset="utf-8">', f"<title>{html_text(title)}</title>",
             "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin-bottom:1.5em}"
             "td,th{border:1px solid #bbb;padding:2px 8px;text-align:left}code{font-size:90%}</style></head><body>",
             f"<h1>{html_text(title)}</h1>"]
    if what:
        parts.append(f"<p><code>{html_text(what)}</code></p>")
    parts.append("<p>Journals: " + ", ".join(f"<code>{html_text(j)}</code>" for j in report["journals"]) + "</p>")
    for heading, header, rows, note in _tables(report):
        parts.append(f"<h2>{html_text(heading)}</h2>")
        if not rows:
            parts.append("<p>None.</p>")
            continue
        parts.append("<table><tr>" + "".join(f"<th>{html_text(h)}</th>" for h in header) + "</tr>")
        for row in rows:
            cells = "".join(f"<td><code>{html_text(t)}</code></td>" if code else f"<td>{html_text(t)}</td>"
                            for t, code in row)
            parts.append(f"<tr>{cells}</tr>")
        parts.append("</table>")
        if note:
            parts.append(f"<p>{html_text(note)}</p>")
    parts.append("</body></html>\n")
    return "\n".join(parts)
