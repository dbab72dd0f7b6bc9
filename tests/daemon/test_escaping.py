"""Untrusted text (file names, reasons) on the text outputs: logs, CSV, reports, one rule.

A name is whatever someone dropped into the inbox; none of it may start a line, move a
terminal's cursor or read as another field on any text output.
"""

from __future__ import annotations

import csv
import logging
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from inspectd.bridges.opcua import result_values
from inspectd.clients.health import describe
from inspectd.daemon.logs import ConsoleFormatter, LogfmtFormatter
from inspectd.escaping import csv_cell, html_text, logfmt_value, markdown_code, printable
from inspectd.reports.report import write_regions_csv
from inspectd.types import Region

NOT_UTF8_NAME = b"part-\xff\xfe.png".decode("utf-8", "surrogateescape")  # as os.listdir gives it

# Names that try to break out of their field, one per kind of trick.
HOSTILE_NAMES = {
    "newline": "x.png\nseq=9999 PASS part=A-17",
    "carriage_return": "x.png\rseq=9999 PASS part=A-17",
    "ansi_escape": "x.png\x1b[2K\x1b[1Gseq=9999 PASS",
    "line_separator": "x.png\u2028seq=9999 PASS",
    "next_line_c1": "x.png\x85seq=9999 PASS",
    "bidi_override": "x\u202egnp.exe",
    "nul_and_bell": "x\x00\x07.png",
    "not_utf8": NOT_UTF8_NAME,
}


def _decode_shown(shown: str) -> str:
    """Read `printable`'s output back the way Python reads an escaped literal."""
    return shown.encode("ascii", "backslashreplace").decode("unicode_escape")


@pytest.mark.parametrize("name", HOSTILE_NAMES.values(), ids=HOSTILE_NAMES.keys())
def test_printable_shows_every_trick_escaped_on_one_line(name: str) -> None:
    shown = printable(name)
    assert shown.isprintable()  # no control, separator, format or surrogate character left
    assert _decode_shown(shown) == name


def test_printable_keeps_ordinary_text_and_doubles_backslashes() -> None:
    assert printable("Probe 7 – café µm 試料.png") == "Probe 7 – café µm 試料.png"
    assert printable("a\\nb") == "a\\\\nb"  # a literal backslash-n stays distinguishable from a newline
    assert printable(NOT_UTF8_NAME) == "part-\\udcff\\udcfe.png"


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(exclude_categories=())))  # surrogates included
def test_printable_is_one_line_and_reads_back_exactly(text: str) -> None:
    shown = printable(text)
    assert shown.isprintable()
    assert _decode_shown(shown) == text


def test_logfmt_values_are_quoted_when_they_would_not_read_as_one() -> None:
    assert logfmt_value("plain") == "plain"
    assert logfmt_value("two words") == '"two words"'
    assert logfmt_value('a"b') == '"a\\"b"'
    assert logfmt_value("k=v") == '"k=v"'
    assert logfmt_value("") == '""'


@pytest.mark.parametrize("text", ["=1+2", "+SUM(A1:A9)", "-2+3", "@SUM(A1)", "=HYPERLINK(\"http://x\",\"y\")"])
def test_csv_text_that_a_spreadsheet_would_run_is_defused(text: str) -> None:
    assert csv_cell(text) == "'" + text


def test_csv_numbers_and_plain_text_stay_as_they_are() -> None:
    assert csv_cell(-2.5) == -2.5
    assert csv_cell(0) == 0
    assert csv_cell("pore") == "pore"
    assert csv_cell("a\nb") == "a\\nb"  # one cell, one line


def _region(class_name: str) -> Region:
    return Region(label=1, class_name=class_name, area_px=12, area_um2=3.0, bbox_x=0, bbox_y=0, bbox_width_px=4,
                  bbox_height_px=3, aspect_ratio=1.33, equivalent_diameter_px=3.9, equivalent_diameter_um=1.95,
                  perimeter_px=14.0, perimeter_um=7.0, circularity=0.77, solidity=1.0, centroid_x=-1.5, centroid_y=1.0)


def test_region_table_has_no_formula_cell_and_numbers_stay_numbers(tmp_path: Path) -> None:
    path = tmp_path / "regions.csv"
    write_regions_csv(path, (_region("=cmd|' /C calc'!A0"), _region("pore\r\nx")))
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["class_name"] for row in rows] == ["'=cmd|' /C calc'!A0", "pore\\r\\nx"]
    assert rows[0]["centroid_x"] == "-1.5"  # a negative number is a number, not defused text
    assert len(path.read_text(encoding="utf-8").splitlines()) == 3


def test_html_and_markdown_report_text() -> None:
    assert html_text('<img src=x onerror="alert(1)">\n') == "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;\\n"
    assert markdown_code("in/a``b\nc") == "``` in/a``b\\nc ```"


def _record(message: str, *args: object, exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            msg = f"cannot decode {NOT_UTF8_NAME}\nlevel=INFO msg=\"all good\""
            raise ValueError(msg)
        except ValueError:
            exc_info = sys.exc_info()
    return logging.LogRecord("inspectd.sources.folder", logging.WARNING, __file__, 1, message, args, exc_info)


@pytest.mark.parametrize("name", HOSTILE_NAMES.values(), ids=HOSTILE_NAMES.keys())
def test_a_logfmt_line_stays_one_printable_line(name: str) -> None:
    line = LogfmtFormatter().format(_record("file %s refused: %s", name, f"not an image ({name})"))
    assert line.isprintable() and line.startswith("ts=")
    assert line.count(" level=") == 1 and line.count(" msg=") == 1


def test_a_reason_with_a_newline_and_quotes_in_a_logfmt_line() -> None:
    reason = 'bad header\nts=2024-01-01T00:00:00Z level=INFO msg="PASS" \\'
    line = LogfmtFormatter().format(_record("quarantined: %s", reason))
    message = line.partition(" msg=")[2]
    assert message == '"quarantined: bad header\\nts=2024-01-01T00:00:00Z level=INFO msg=\\"PASS\\" \\\\"'


def test_a_logfmt_traceback_is_one_quoted_value() -> None:
    line = LogfmtFormatter().format(_record("analysis failed", exc=True))
    assert line.isprintable() and line.count(" level=") == 1
    assert line.partition(" exc=")[2].startswith('"Traceback (most recent call last):\\n')
    assert "\\udcff\\udcfe" in line


def test_console_lines_keep_names_on_their_line_and_indent_tracebacks() -> None:
    formatter = ConsoleFormatter()
    text = formatter.format(_record("daemon reports %s", HOSTILE_NAMES["newline"], exc=True))
    first, *traceback = text.split("\n")
    assert first.endswith("WARNING inspectd.sources.folder: daemon reports x.png\\nseq=9999 PASS part=A-17")
    assert traceback and all(line.startswith("    ") and line.isprintable() for line in traceback)


def test_status_shows_a_last_error_quoting_a_file_name_on_its_own_line() -> None:
    status = {"station": "line3", "ready": True, "last_error": f"{HOSTILE_NAMES['newline']}: not an image"}
    lines = describe(status, [])
    assert lines[-1] == "last error: x.png\\nseq=9999 PASS part=A-17: not an image"
    assert all(line.isprintable() for line in lines)


def test_opcua_strings_are_printable_whatever_the_name() -> None:
    values = result_values({"seq": 3, "verdict": "ERROR", "part_id": "A-17\r", "source": NOT_UTF8_NAME,
                            "reason": f"cannot decode {HOSTILE_NAMES['ansi_escape']}"}, [])
    assert values["source"] == "part-\\udcff\\udcfe.png"
    assert values["part_id"] == "A-17\\r"
    assert values["reason"].isprintable() and values["verdict"] == "ERROR"
    values["source"].encode("utf-8")  # an OPC UA String must be valid UTF-8
