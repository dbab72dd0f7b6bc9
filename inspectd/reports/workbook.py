"""Spreadsheet exports of analysed fields: an Excel workbook and a CSV file with the same three tables.

Why a module of its own: whoever downloads an analysis (the Analyse page, a batch job) must
get the very numbers of the `<stem>.json` records `inspectd analyze` writes, never a second
computation. So the tables are built from those records (`report.result_record`) and the
region rows of the same `Measurements`, and nothing here measures anything:

- `frames`: one row per field: file, field, verdict, failed rules, confidence, every metric;
- `regions`: one row per measured region of every field (`types.Region`, px and µm);
- `sample statistics`: mean, SD and 95 % confidence interval of the fractions over the
  analysed fields (`fieldstats`, ASTM E2109; ERROR fields left out, as `analyze --sample`).

Numbers are written at full precision: the CSV's read back equal to the JSON values, the
workbook's to the 16 significant digits openpyxl writes (Excel itself shows 15). Text
cells come from users (file names, reasons quoting them): in the workbook they are stored
as text, never as a formula; in the CSV they go through `escaping.csv_cell`.

The CSV holds the three tables one after the other, each as a title line, a header line and
its rows, with an empty line between; `read_csv_tables` reads such a file back.

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> record = {"source": "a.png", "field_index": 0, "verdict": "PASS", "metrics": {"porosity_pct": 1.5},
    ...           "failed_rules": [], "warnings": [], "regions_count": 0}
    >>> fields = [ExportField("a", record, [])]
    >>> folder = Path(tempfile.mkdtemp())
    >>> write_csv(folder / "a.csv", fields)
    >>> tables = read_csv_tables(folder / "a.csv")
    >>> tables["frames"][0]["porosity_pct"], tables["sample statistics"][0]["metric"]
    ('1.5', 'melted_fraction_pct')
    >>> write_xlsx(folder / "a.xlsx", fields)
    >>> import openpyxl
    >>> openpyxl.load_workbook(folder / "a.xlsx").sheetnames
    ['frames', 'regions', 'sample statistics']
"""

from __future__ import annotations

import csv
import dataclasses
import io
import logging
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from openpyxl import Workbook
from openpyxl.styles import Font

from inspectd.analysis import fieldstats
from inspectd.escaping import csv_cell, printable
from inspectd.metric_values import finite_or_none
from inspectd.types import Region

logger = logging.getLogger(__name__)

FRAMES_TABLE = "frames"
REGIONS_TABLE = "regions"
SAMPLE_TABLE = "sample statistics"
TABLES = (FRAMES_TABLE, REGIONS_TABLE, SAMPLE_TABLE)

# The frame columns before the metrics: what a reader needs to tell the rows apart and trust them.
FRAME_COLUMNS = ("stem", "source", "field_index", "verdict", "reason", "failed_rules", "warnings", "confidence",
                 "out_of_distribution", "regions_count", "engine", "engine_backend", "model_hash", "width_px",
                 "height_px", "bit_depth", "sha256", "um_per_px")
REGION_COLUMNS = ("stem", "field_index", *(f.name for f in dataclasses.fields(Region)))
SAMPLE_COLUMNS = ("metric", *(f.name for f in dataclasses.fields(fieldstats.FieldStat) if f.name != "name"))
ANALYSED_VERDICTS = ("PASS", "FAIL")


@dataclass(frozen=True)
class ExportField:
    """One analysed field: its output stem, its `<stem>.json` record and its region rows (`region_rows`)."""

    stem: str
    record: Mapping[str, Any]
    regions: Sequence[Mapping[str, Any]]


def region_rows(regions: Sequence[Region]) -> list[dict[str, Any]]:
    """Regions as JSON-ready rows (plain ints and floats; a non-finite value becomes None).

    >>> row = region_rows([Region(1, "pore", 40, 4.0, 0, 0, 8, 5, 1.6, 7.1, 0.71, 26.0, 2.6,
    ...                           0.74, 0.9, 3.5, 2.0)])[0]
    >>> row["class_name"], row["area_px"], row["circularity"]
    ('pore', 40, 0.74)
    """
    return [{name: _plain(value) for name, value in dataclasses.asdict(region).items()} for region in regions]


def sample_statistics(records: Sequence[Mapping[str, Any]]) -> dict[str, fieldstats.FieldStat]:
    """Mean, SD, 95 % CI of each fraction over the analysed (PASS/FAIL) fields; empty when none was."""
    metrics = [record.get("metrics") or {} for record in records if record.get("verdict") in ANALYSED_VERDICTS]
    if not metrics:
        return {}
    return fieldstats.summarize_fields(metrics, names=fieldstats.FRACTION_METRICS)


def frame_table(fields: Sequence[ExportField]) -> tuple[list[str], list[list[Any]]]:
    """Columns and rows of the `frames` table: FRAME_COLUMNS, then every metric any field has."""
    metric_names: list[str] = []
    for field in fields:
        metric_names += [name for name in (field.record.get("metrics") or {}) if name not in metric_names]
    rows = []
    for field in fields:
        record = field.record
        image = record.get("image") or {}
        engine = record.get("engine") or {}
        metrics = record.get("metrics") or {}
        rows.append([
            field.stem, record.get("source"), record.get("field_index"), record.get("verdict"), record.get("reason"),
            "; ".join(_rule_text(rule) for rule in record.get("failed_rules") or []) or None,
            "; ".join(str(w) for w in record.get("warnings") or []) or None,
            record.get("confidence"), record.get("out_of_distribution"), record.get("regions_count"),
            engine.get("name"), engine.get("backend"), engine.get("model_hash"), image.get("width"),
            image.get("height"), image.get("bit_depth"), image.get("sha256"), record.get("um_per_px"),
            *(metrics.get(name) for name in metric_names),
        ])
    return [*FRAME_COLUMNS, *metric_names], rows


def region_table(fields: Sequence[ExportField]) -> tuple[list[str], list[list[Any]]]:
    """Columns and rows of the `regions` table: every region of every field, in field order."""
    rows = [[field.stem, field.record.get("field_index"), *(region.get(name) for name in REGION_COLUMNS[2:])]
            for field in fields for region in field.regions]
    return list(REGION_COLUMNS), rows


def sample_table(fields: Sequence[ExportField]) -> tuple[list[str], list[list[Any]]]:
    """Columns and rows of the `sample statistics` table (no rows when no field was analysed)."""
    stats = sample_statistics([field.record for field in fields])
    rows = [[name, *(getattr(stat, column) for column in SAMPLE_COLUMNS[1:])] for name, stat in stats.items()]
    return list(SAMPLE_COLUMNS), rows


def _tables(fields: Sequence[ExportField]) -> dict[str, tuple[list[str], list[list[Any]]]]:
    return {FRAMES_TABLE: frame_table(fields), REGIONS_TABLE: region_table(fields), SAMPLE_TABLE: sample_table(fields)}


def write_xlsx(path: Path, fields: Sequence[ExportField]) -> None:
    """The three tables as the sheets of one workbook (header row bold and frozen)."""
    workbook = Workbook()
    workbook.remove(workbook.active)
    for title, (columns, rows) in _tables(fields).items():
        sheet = workbook.create_sheet(title)
        sheet.append(columns)
        for cell in sheet[1]:
            cell.font = Font(bold=True)
        sheet.freeze_panes = "A2"
        for row in rows:
            sheet.append([_xlsx_value(value) for value in row])
            for cell in sheet[sheet.max_row]:
                if isinstance(cell.value, str):
                    cell.data_type = "s"  # a name such as "=HYPERLINK(...)" stays text, never a formula
        for index, column in enumerate(columns, start=1):
            sheet.column_dimensions[sheet.cell(1, index).column_letter].width = max(10, min(40, len(column) + 2))
    workbook.save(path)


def write_csv(path: Path, fields: Sequence[ExportField]) -> None:
    """The three tables in one CSV file (see the module docstring for the layout)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    for position, (title, (columns, rows)) in enumerate(_tables(fields).items()):
        if position:
            writer.writerow([])
        writer.writerow([title])
        writer.writerow(columns)
        writer.writerows([_csv_value(value) for value in row] for row in rows)
    Path(path).write_text(buffer.getvalue(), encoding="utf-8")


def read_csv_tables(path: Path) -> dict[str, list[dict[str, str]]]:
    """The tables of a CSV written by `write_csv`, by title, as rows of text keyed by column name."""
    tables: dict[str, list[dict[str, str]]] = {}
    title: str | None = None
    columns: list[str] | None = None
    with Path(path).open(newline="", encoding="utf-8") as handle:
        for row in csv.reader(handle):
            if not row:
                title = columns = None
            elif title is None:
                title = row[0]
                tables[title] = []
            elif columns is None:
                columns = row
            else:
                tables[title].append(dict(zip(columns, row, strict=True)))
    return tables


def _rule_text(rule: Mapping[str, Any]) -> str:
    return f"{rule.get('metric')} {rule.get('op')} {rule.get('limit')} (got {rule.get('value')})"


def _plain(value: object) -> object:
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, numbers.Integral):  # numpy integers too
        return int(value)
    if isinstance(value, numbers.Real):
        return finite_or_none(value)
    return value


def _xlsx_value(value: object) -> object:
    # Control characters are not allowed in a workbook; `printable` shows them escaped instead.
    return printable(value) if isinstance(value, str) else _plain(value)


def _csv_value(value: object) -> object:
    value = _plain(value)
    if value is None:
        return ""
    return csv_cell(value) if isinstance(value, str) else value
