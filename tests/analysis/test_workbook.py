"""The spreadsheet exports hold the numbers of the analysis records, read back with openpyxl and csv."""

from __future__ import annotations

import math

import openpyxl
import pytest

from inspectd import config
from inspectd.analysis.analyzer import Analyzer, FrameResult
from inspectd.analysis.verdict import error_verdict
from inspectd.data.synth import generate_v3
from inspectd.reports.report import result_record
from inspectd.reports.workbook import (
    FRAMES_TABLE,
    REGION_COLUMNS,
    REGIONS_TABLE,
    SAMPLE_TABLE,
    ExportField,
    read_csv_tables,
    region_rows,
    sample_statistics,
    write_csv,
    write_xlsx,
)
from inspectd.types import Frame


@pytest.fixture(scope="module")
def analysed_fields() -> list[ExportField]:
    """Two fields analysed by the real classical engine, and one unreadable field (an ERROR record)."""
    cfg = config.load(None)
    analyzer = Analyzer(cfg)
    engine = analyzer.engine
    fields = []
    for seed in (11, 12):
        sample = generate_v3(256, 320, seed=seed)
        result = analyzer.analyze(Frame(sample.image, f"frame{seed}.png"))
        record = result_record(result, cfg, engine_name=engine.name, backend=engine.backend,
                               model_hash=engine.model_hash)
        fields.append(ExportField(f"frame{seed}", record, region_rows(result.measurements.regions)))
    broken = FrameResult(Frame(None, "=HYPERLINK(\"http://x\")\x07.png"), error_verdict("truncated PNG"))  # type: ignore[arg-type]
    record = result_record(broken, cfg, engine_name=engine.name, backend=engine.backend, model_hash=None)
    fields.append(ExportField("=broken", record, []))
    return fields


def _rows(sheet) -> list[dict]:
    values = list(sheet.iter_rows(values_only=True))
    return [dict(zip(values[0], row, strict=True)) for row in values[1:]]


def test_workbook_has_the_three_tables_with_the_records_numbers(analysed_fields, tmp_path):
    write_xlsx(tmp_path / "a.xlsx", analysed_fields)
    book = openpyxl.load_workbook(tmp_path / "a.xlsx")
    assert book.sheetnames == [FRAMES_TABLE, REGIONS_TABLE, SAMPLE_TABLE]

    frames = _rows(book[FRAMES_TABLE])
    assert [row["stem"] for row in frames] == [field.stem for field in analysed_fields]
    for row, field in zip(frames, analysed_fields, strict=True):
        record = field.record
        assert row["verdict"] == record["verdict"] and row["regions_count"] == record["regions_count"]
        for name, value in record["metrics"].items():
            assert row[name] == pytest.approx(value, rel=1e-15, abs=0), name
    assert frames[0]["melted_fraction_pct"] is not None
    assert frames[2]["reason"] == "truncated PNG" and frames[2]["porosity_pct"] is None

    regions = _rows(book[REGIONS_TABLE])
    expected = [(field, region) for field in analysed_fields for region in field.regions]
    assert len(regions) == sum(field.record["regions_count"] for field in analysed_fields) == len(expected) > 10
    for row, (field, region) in zip(regions, expected, strict=True):
        assert row["stem"] == field.stem
        for name in REGION_COLUMNS[2:]:
            assert row[name] == pytest.approx(region[name], rel=1e-15, abs=0) if isinstance(region[name], float) \
                else row[name] == region[name], name

    stats = sample_statistics([field.record for field in analysed_fields])
    sample = {row["metric"]: row for row in _rows(book[SAMPLE_TABLE])}
    assert sample.keys() == stats.keys()
    for name, stat in stats.items():
        assert stat.n == 2  # the ERROR field is not part of the sample
        assert sample[name]["mean"] == pytest.approx(stat.mean, rel=1e-15)
        assert sample[name]["ci95_half_width"] == pytest.approx(stat.ci95_half_width, rel=1e-15)


def test_user_text_stays_text_in_the_workbook(analysed_fields, tmp_path):
    write_xlsx(tmp_path / "a.xlsx", analysed_fields)
    sheet = openpyxl.load_workbook(tmp_path / "a.xlsx")[FRAMES_TABLE]
    stem_cell, source_cell = sheet.cell(4, 1), sheet.cell(4, 2)
    assert (stem_cell.value, stem_cell.data_type) == ("=broken", "s")
    assert source_cell.data_type == "s" and source_cell.value == '=HYPERLINK("http://x")\\x07.png'


def test_csv_reads_back_equal_to_the_records(analysed_fields, tmp_path):
    write_csv(tmp_path / "a.csv", analysed_fields)
    tables = read_csv_tables(tmp_path / "a.csv")
    assert list(tables) == [FRAMES_TABLE, REGIONS_TABLE, SAMPLE_TABLE]
    frames = tables[FRAMES_TABLE]
    for row, field in zip(frames, analysed_fields, strict=True):
        for name, value in field.record["metrics"].items():
            assert float(row[name]) == value, name  # full precision: equal, not close
    assert frames[2]["stem"] == "'=broken" and frames[2]["porosity_pct"] == ""
    regions = tables[REGIONS_TABLE]
    expected = [region for field in analysed_fields for region in field.regions]
    assert len(regions) == len(expected)
    for row, region in zip(regions, expected, strict=True):
        assert row["class_name"] == region["class_name"]
        assert all(float(row[n]) == region[n] for n in REGION_COLUMNS[2:] if n != "class_name"
                   and region[n] is not None)
    stats = sample_statistics([field.record for field in analysed_fields])
    for row in tables[SAMPLE_TABLE]:
        assert float(row["mean"]) == stats[row["metric"]].mean


def test_no_analysed_field_gives_an_empty_sample_table(analysed_fields, tmp_path):
    write_xlsx(tmp_path / "a.xlsx", analysed_fields[2:])
    book = openpyxl.load_workbook(tmp_path / "a.xlsx")
    assert _rows(book[SAMPLE_TABLE]) == [] and len(_rows(book[REGIONS_TABLE])) == 0
    assert len(_rows(book[FRAMES_TABLE])) == 1


def test_region_rows_are_plain_json_numbers(analysed_fields):
    row = analysed_fields[0].regions[0]
    assert all(type(row[n]) in (int, float, str) for n in REGION_COLUMNS[2:])
    assert all(math.isfinite(row[n]) for n in REGION_COLUMNS[2:] if isinstance(row[n], float))
