"""The re-graded verdicts against a real station journal: flips, deltas, lots, the three reports."""

from __future__ import annotations

import json

import pytest

from inspectd.daemon.journal import Journal
from inspectd.regrade import diff
from inspectd.wire.message import build_verdict_message

SHA = {name: name[0] * 64 for name in ("a", "b", "c", "d")}


def _journal(path, entries):
    with Journal(path) as journal:
        for sha, field, verdict, porosity, part in entries:
            draft = build_verdict_message(
                station="line-3", verdict=verdict, reason="" if verdict != "ERROR" else "truncated",
                source=f"/inbox/{sha[0]}.png", source_kind="file", part_id=part, capture_time=None,
                metrics={"porosity_pct": porosity, "unmelted_fraction_pct": 20.0, "melted_fraction_pct": 80.0 - porosity},
                engine_name="classical", backend="cpu", model_hash=None, timings_ms=None, image_sha256=sha,
                width=64, height=64, bit_depth=8, field_index=field,
                failed_rules=[{"metric": "porosity_pct", "op": "<=", "limit": 5.0, "value": porosity}]
                if verdict == "FAIL" else None)
            journal.commit(draft, None)
    return path


def _row(name, verdict, porosity, lot, field=0):
    return {"path": f"/archive/{name}.png", "field_index": field, "sha256": SHA[name], "part": None, "lot": lot,
            "verdict": verdict, "reason": "", "porosity_pct": porosity, "unmelted_fraction_pct": 22.0,
            "melted_fraction_pct": 78.0 - porosity}


@pytest.fixture
def journal_path(tmp_path):
    return _journal(tmp_path / "state" / "journal.sqlite3", [
        (SHA["a"], 0, "PASS", 4.0, "P-a"), (SHA["b"], 0, "PASS", 3.0, "P-b"),
        (SHA["c"], 0, "FAIL", 6.0, "P-c"), (SHA["c"], 0, "PASS", 4.5, "P-c"),  # c again later: the latest counts
    ])


def test_frames_and_lots_that_flip_with_their_deltas_and_statistics(journal_path, tmp_path):
    before = diff.original_verdicts([journal_path])
    rows = [_row("a", "FAIL", 5.5, "LOT-1"), _row("b", "PASS", 3.5, "LOT-1"), _row("c", "PASS", 4.0, "LOT-2"),
            _row("d", "PASS", 1.0, "LOT-2")]
    report = diff.build_diff(rows, before, journals=[str(journal_path)], regrade={"engine": "classical"})

    assert report["summary"] == {"fields": 4, "matched": 3, "not_in_journals": 1, "flipped": 1,
                                 "transitions": {"PASS->FAIL": 1}, "lots": 2, "lots_flipped": 1}
    [frame] = report["frames"]
    assert (frame["path"], frame["before"]["verdict"], frame["after"]["verdict"]) == ("/archive/a.png", "PASS", "FAIL")
    assert frame["delta"]["porosity_pct"] == pytest.approx(1.5)
    assert frame["delta"]["unmelted_fraction_pct"] == pytest.approx(2.0)
    lot1, lot2 = report["lots"]
    assert (lot1["lot"], lot1["flipped"], lot1["before"]["verdict"], lot1["after"]["verdict"]) == ("LOT-1", True, "PASS", "FAIL")
    assert lot1["before"]["statistics"]["porosity_pct"]["mean"] == pytest.approx(3.5)
    assert lot1["after"]["statistics"]["porosity_pct"]["mean"] == pytest.approx(4.5)
    assert lot1["after"]["statistics"]["porosity_pct"]["n"] == 2
    assert (lot2["lot"], lot2["flipped"], lot2["fields"]) == ("LOT-2", False, 1)  # d is in no journal


def test_a_field_without_a_lot_is_grouped_by_its_part(journal_path):
    report = diff.build_diff([_row("a", "PASS", 4.0, None)], diff.original_verdicts([journal_path]))
    assert [lot["lot"] for lot in report["lots"]] == ["P-a"]


def test_the_journal_is_read_without_being_changed(journal_path):
    before = journal_path.read_bytes()
    siblings = sorted(p.name for p in journal_path.parent.iterdir())
    diff.original_verdicts([journal_path])
    assert journal_path.read_bytes() == before
    assert sorted(p.name for p in journal_path.parent.iterdir()) == siblings


def test_a_missing_or_foreign_journal_is_a_usage_error(tmp_path):
    with pytest.raises(diff.JournalReadError, match="no such journal"):
        diff.original_verdicts([tmp_path / "nope.sqlite3"])
    (tmp_path / "notes.sqlite3").write_text("not a database")
    with pytest.raises(diff.JournalReadError, match="cannot read"):
        diff.original_verdicts([tmp_path / "notes.sqlite3"])


def test_the_reports_show_file_names_as_text_never_as_markup(journal_path, tmp_path):
    hostile = _row("a", "FAIL", 6.0, "LOT|<script>alert(1)</script>")
    hostile["path"] = "/archive/<img src=x onerror=alert(1)>\n| PASS |.png"
    report = diff.build_diff([hostile], diff.original_verdicts([journal_path]), journals=[str(journal_path)])
    paths = diff.write_reports(report, tmp_path / "out")

    assert [p.name for p in paths] == ["diff.json", "diff.md", "diff.html"]
    assert json.loads(paths[0].read_text())["frames"][0]["path"] == hostile["path"]
    html = paths[2].read_text()
    assert "<script>" not in html and "<img" not in html and "&lt;img src=x" in html
    markdown = paths[1].read_text()
    flipped_line = next(line for line in markdown.splitlines() if "onerror" in line)
    assert flipped_line.count(" | ") == 9 - 1  # nine cells: the name's own bars and newline are escaped
