"""The Parquet dataset: rows, batch files written whole, what is done, and the clean-up after a kill."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("pyarrow", reason="pyarrow comes with the [cluster] extra (pip install 'inspectd[cluster]')")

import pyarrow.parquet as pq  # noqa: E402

from inspectd.analysis.analyzer import FrameResult  # noqa: E402
from inspectd.regrade import store  # noqa: E402
from inspectd.regrade.keys import RunKey  # noqa: E402
from inspectd.types import FailedRule, Frame, Measurements, Region, Verdict, VerdictResult  # noqa: E402

KEY = RunKey("c" * 64, None)


def _result(path: str, field_index: int = 0, porosity: float = 2.0) -> FrameResult:
    frame = Frame(np.zeros((20, 30), np.uint8), path, field_index=field_index, sha256="s" * 64)
    region = Region(1, "pore", 5, 5.0, 1, 2, 3, 4, 1.3, 2.5, 2.5, 8.0, 8.0, 0.9, 1.0, 2.0, 3.0)
    metrics = {name: 1.0 for name in store.metric_names()} | {"porosity_pct": porosity, "variance": float("nan")}
    verdict = Verdict(VerdictResult.FAIL, (FailedRule("porosity_pct", "<=", 1.0, porosity),), timings_ms={"segment": 2.0})
    return FrameResult(frame, verdict, Measurements(metrics, (region,)))


def _facts(path: str) -> store.FileFacts:
    return store.FileFacts(path, "P-1", "LOT-9", "s" * 64, 123, 456, 1, False)


def _write(tmp_path, paths):
    frames = [store.frame_row(_result(p), _facts(p), engine_name="classical", backend="cpu") for p in paths]
    regions = [r for p in paths for r in store.region_rows(_result(p), _facts(p))]
    name = store.batch_name(paths)
    store.write_batch(tmp_path, KEY, name, frames, regions)
    return name


def test_a_batch_is_two_parquet_files_readable_without_inspectd(tmp_path):
    import pyarrow.dataset as ds

    _write(tmp_path, ["/a/1.png", "/a/2.png"])
    frames = ds.dataset(tmp_path / "frames", partitioning="hive").to_table().to_pylist()
    assert [(r["path"], r["verdict"], r["config_hash"], r["model_hash"]) for r in frames] == [
        ("/a/1.png", "FAIL", "c" * 64, "none"), ("/a/2.png", "FAIL", "c" * 64, "none")]
    row = frames[0]
    assert row["porosity_pct"] == 2.0 and row["variance"] is None  # NaN is null, as in the verdict JSON
    assert row["failed_rules"] == [{"metric": "porosity_pct", "op": "<=", "limit": 1.0, "value": 2.0}]
    assert (row["part"], row["lot"], row["regions_count"], row["analysis_ms"]) == ("P-1", "LOT-9", 1, 2.0)
    regions = ds.dataset(tmp_path / "regions", partitioning="hive").to_table().to_pylist()
    assert [(r["path"], r["class_name"], r["area_px"]) for r in regions] == [("/a/1.png", "pore", 5), ("/a/2.png", "pore", 5)]


def test_a_batch_written_again_replaces_its_files(tmp_path):
    _write(tmp_path, ["/a/1.png", "/a/2.png"])
    _write(tmp_path, ["/a/2.png", "/a/1.png"])
    assert len(store.batch_files(tmp_path, store.FRAMES, KEY)) == 1
    assert len(store.read_frames(tmp_path, KEY)) == 2


def test_done_inputs_come_from_the_frames_files(tmp_path):
    _write(tmp_path, ["/a/1.png"])
    assert store.done_inputs(tmp_path, KEY) == {"/a/1.png": store.DoneInput("s" * 64, 123, 456, False)}
    assert store.done_inputs(tmp_path, RunKey("d" * 64, None)) == {}


def test_repair_removes_what_a_killed_run_leaves_and_keeps_each_input_once(tmp_path):
    first = _write(tmp_path, ["/a/1.png", "/a/2.png"])
    _write(tmp_path, ["/a/2.png", "/a/3.png"])  # /a/2.png twice: a batch recomposed after a kill
    _write(tmp_path, ["/a/3.png", "/a/4.png"])
    unfinished = _write(tmp_path, ["/a/5.png"])
    frames_dir = store.partition_dir(tmp_path, store.FRAMES, KEY)
    (frames_dir / unfinished).unlink()  # killed between its regions file and its frames file
    (frames_dir / ".part-x.parquet.1-2.tmp").write_bytes(b"half")

    repaired = store.repair(tmp_path, KEY)

    assert (repaired.temporary_files, repaired.orphaned_regions) == (1, 1)
    rows = store.read_frames(tmp_path, KEY)
    assert [r["path"] for r in rows] == ["/a/1.png", "/a/2.png", "/a/3.png", "/a/4.png"]
    regions = [r["path"] for p in store.batch_files(tmp_path, store.REGIONS, KEY)
               for r in pq.read_table(p).to_pylist()]
    assert sorted(regions) == ["/a/1.png", "/a/2.png", "/a/3.png", "/a/4.png"]
    assert repaired.duplicate_rows == 2  # /a/2.png and /a/3.png, each once more
    kept = {p.name for p in store.batch_files(tmp_path, store.FRAMES, KEY)}
    assert kept == {p.name for p in store.batch_files(tmp_path, store.REGIONS, KEY)}
    assert first in kept and not store.repair(tmp_path, KEY)
