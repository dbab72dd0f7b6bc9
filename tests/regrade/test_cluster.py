"""`inspectd regrade` on a real two-node Ray cluster (see conftest.py): the same results as
`inspectd analyze`, field by field; a killed worker or driver loses nothing and duplicates
nothing; bad files become ERROR rows."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import time
from pathlib import Path

import cv2
import pytest

from inspectd.reports.report import field_stem
from tests.regrade.conftest import BIN, CLIENT_PORT, write_micrographs, write_multipage_tiff

pytestmark = pytest.mark.slow

INSPECTD = str(BIN / "inspectd")
RUN_TIMEOUT_S = 420


def _read(out: Path, table: str = "frames") -> list[dict]:
    import pyarrow.dataset as ds

    rows = ds.dataset(out / table, partitioning="hive").to_table().to_pylist()
    key = ("path", "field_index") if table == "frames" else ("path", "field_index", "label", "class_name")
    return sorted(rows, key=lambda r: tuple(r[k] for k in key))


def _comparable(rows: list[dict]) -> list[dict]:
    """Rows without what differs between two equal runs (time spent, file modification times)."""
    return [{k: v for k, v in r.items() if k not in ("analysis_ms",)} for r in rows]


def _regrade(cluster, inputs, out: Path, *extra: str, address: str = "auto", check_rc: int | None = 0):
    result = cluster.run([INSPECTD, "regrade", *map(str, inputs), "--out", str(out), "--address", address,
                          "--workers", "2", *extra], timeout=RUN_TIMEOUT_S, check=False)
    if check_rc is not None:
        assert result.returncode == check_rc, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result


def _analyze(paths, out: Path) -> dict[tuple[str, int], dict]:
    """`inspectd analyze` on the same files (no Ray): its JSON per field, by (path, field)."""
    result = subprocess.run([INSPECTD, "analyze", *map(str, paths), "--out", str(out), "--quiet"],
                            capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False)
    assert result.returncode in (0, 1, 3), result.stderr
    records = {}
    for path in paths:
        for json_path in out.glob(f"{Path(path).stem}*.json"):
            record = json.loads(json_path.read_text())
            if os.path.abspath(record["source"]) == os.path.abspath(path):
                records[(os.path.abspath(path), record["field_index"])] = record
    return records


def _assert_equal_to_analyze(rows: list[dict], analysed: dict[tuple[str, int], dict], analyze_out: Path) -> None:
    assert {(r["path"], r["field_index"]) for r in rows} == set(analysed)
    for row in rows:
        record = analysed[(row["path"], row["field_index"])]
        where = f"{row['path']} field {row['field_index']}"
        assert row["verdict"] == record["verdict"], where
        assert row["reason"] == record["reason"], where
        assert row["failed_rules"] == record["failed_rules"], where
        assert row["warnings"] == record["warnings"], where
        assert row["confidence"] == record["confidence"], where
        assert row["out_of_distribution"] == record["out_of_distribution"], where
        if record["ood"] is not None:
            assert (row["ood_distance"], row["ood_reasons"]) == (record["ood"]["distance"], record["ood"]["reasons"])
        if record["image"]["sha256"]:  # analyze has none for a file it could not decode; a row keeps its bytes' hash
            assert row["sha256"] == record["image"]["sha256"], where
        if record["image"]["width"] is not None:  # a file never decoded: analyze shows Frame's default depth
            assert (row["width"], row["height"], row["bit_depth"]) == (
                record["image"]["width"], record["image"]["height"], record["image"]["bit_depth"]), where
        else:
            assert (row["width"], row["height"], row["bit_depth"]) == (None, None, None), where
        assert row["regions_count"] == record["regions_count"], where
        for metric, value in record["metrics"].items():  # exactly: the same code on the same pixels
            assert row[metric] == value, f"{where}: {metric}"
        assert (row["engine"], row["backend"]) == (record["engine"]["name"], record["engine"]["backend"])


def _assert_regions_equal_to_analyze(regions: list[dict], frames: list[dict], analyze_out: Path) -> None:
    import csv

    for row in frames:
        stem = field_stem(Path(row["path"]).stem, row["field_index"], row["fields_in_file"])
        csv_path = analyze_out / f"{stem}_regions.csv"
        mine = [r for r in regions if (r["path"], r["field_index"]) == (row["path"], row["field_index"])]
        if not csv_path.exists():
            assert mine == [], row["path"]
            continue
        with csv_path.open() as handle:
            theirs = list(csv.DictReader(handle))
        assert [(r["label"], r["class_name"], r["area_px"]) for r in sorted(mine, key=lambda r: r["label"])] == [
            (int(t["label"]), t["class_name"], int(t["area_px"])) for t in theirs], row["path"]
        for mine_row, their_row in zip(sorted(mine, key=lambda r: r["label"]), theirs, strict=True):
            assert math.isclose(mine_row["circularity"], float(their_row["circularity"]), abs_tol=1e-4)


def _exactly_once(rows: list[dict]) -> None:
    keys = [(r["path"], r["field_index"]) for r in rows]
    assert len(keys) == len(set(keys)), "an input has more than one row"


# ---------------------------------------------------------------------------- equal to analyze


def test_results_equal_analyze_field_by_field_through_a_ray_client_address(ray_cluster, tmp_path):
    archive = tmp_path / "archive"
    pngs = write_micrographs(archive, 5, seed=40)
    tiff = write_multipage_tiff(archive / "stack.tif", seed=60, pages=2)
    manifest = tmp_path / "lot.csv"
    manifest.write_text("path,part_id,lot\n" + "".join(f"{p},P-{i},LOT-{i % 2}\n" for i, p in enumerate(pngs[:3])))
    inputs = [manifest, *pngs[3:], tiff]
    analysed = _analyze([*pngs, tiff], tmp_path / "analyze")

    out = tmp_path / "out"
    result = _regrade(ray_cluster, inputs, out, "--journal", str(_journal_of(analysed, tmp_path)),
                      address=f"ray://127.0.0.1:{CLIENT_PORT}")

    frames, regions = _read(out), _read(out, "regions")
    assert len(frames) == 7  # five PNGs, and the TIFF's two pages as two fields
    _assert_equal_to_analyze(frames, analysed, tmp_path / "analyze")
    _assert_regions_equal_to_analyze(regions, frames, tmp_path / "analyze")
    by_path = {r["path"]: r for r in frames}
    assert (by_path[str(pngs[1])]["part"], by_path[str(pngs[1])]["lot"]) == ("P-1", "LOT-1")
    assert by_path[str(pngs[4])]["lot"] is None and by_path[str(tiff)]["fields_in_file"] == 2
    assert "7 field(s)" in result.stdout

    report = json.loads((out / "diff.json").read_text())
    assert report["summary"]["matched"] == 7 and report["summary"]["flipped"] == 1
    assert report["frames"][0]["path"] == str(pngs[0])
    assert (out / "diff.md").is_file() and (out / "diff.html").is_file()

    again = _regrade(ray_cluster, inputs, out)  # everything is done: nothing is analysed again
    assert "0 analysed, 6 already done" in again.stdout
    assert _comparable(_read(out)) == _comparable(frames)


def _journal_of(analysed: dict[tuple[str, int], dict], tmp_path: Path) -> Path:
    """A station journal holding analyze's verdicts, the first PNG's turned around."""
    from inspectd.daemon.journal import Journal
    from inspectd.wire.message import build_verdict_message

    path = tmp_path / "station" / "journal.sqlite3"
    first = min(analysed)
    with Journal(path) as journal:
        for key, record in sorted(analysed.items()):
            verdict = record["verdict"]
            if key == first:
                verdict = "PASS" if verdict != "PASS" else "FAIL"
            failed = record["failed_rules"] if verdict == "FAIL" and record["failed_rules"] else (
                [{"metric": "porosity_pct", "op": "<=", "limit": 0.0, "value": 1.0}] if verdict == "FAIL" else [])
            draft = build_verdict_message(
                station="line-3", verdict=verdict, reason=record["reason"] if verdict == "ERROR" else "",
                source=f"/inbox/{Path(key[0]).name}", source_kind="file", part_id=None, capture_time=None,
                metrics=record["metrics"], engine_name="classical", backend="cpu", model_hash=None, timings_ms=None,
                image_sha256=record["image"]["sha256"], width=record["image"]["width"],
                height=record["image"]["height"], bit_depth=record["image"]["bit_depth"], field_index=key[1],
                failed_rules=failed)
            journal.commit(draft, None)
    return path


# ---------------------------------------------------------------------------- kills


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> list[Path]:
    """36 distinct 1152x1152 micrographs: long enough a run to kill something in the middle of it."""
    folder = tmp_path_factory.mktemp("archive")
    paths = write_micrographs(folder / "small", 36, size=(384, 384), seed=100)
    big = []
    for path in paths:
        image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        target = folder / path.name
        cv2.imwrite(str(target), cv2.resize(image, (1152, 1152), interpolation=cv2.INTER_CUBIC))
        big.append(target)
    return big


@pytest.fixture(scope="module")
def uninterrupted(ray_cluster, archive, tmp_path_factory) -> tuple[list[dict], list[dict]]:
    out = tmp_path_factory.mktemp("uninterrupted")
    _regrade(ray_cluster, archive, out, "--quiet")
    frames = _read(out)
    assert len(frames) == len(archive)
    return frames, _read(out, "regions")


def _start(cluster, archive, out: Path) -> subprocess.Popen:
    return cluster.popen([INSPECTD, "regrade", *map(str, archive), "--out", str(out), "--address", "auto",
                          "--workers", "2", "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _wait_for_first_batch(process: subprocess.Popen, out: Path, timeout_s: float = 240) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if any((out / "frames").rglob("part-*.parquet")):
            return
        if process.poll() is not None:
            pytest.fail(f"the run ended (exit {process.returncode}) before a batch was written:\n"
                        f"{process.stderr.read()}")
        time.sleep(0.05)
    pytest.fail("no batch written in time")


def _workers(cluster) -> list[int]:
    return cluster.pids(containing="RegradeWorker")


def test_a_worker_killed_mid_run_loses_and_duplicates_nothing(ray_cluster, archive, uninterrupted, tmp_path):
    out = tmp_path / "out"
    process = _start(ray_cluster, archive, out)
    _wait_for_first_batch(process, out)
    victims = _workers(ray_cluster)
    assert victims, "no worker process found"
    os.kill(victims[0], signal.SIGKILL)
    done_at_kill = len(list((out / "frames").rglob("part-*.parquet")))

    stdout, stderr = process.communicate(timeout=RUN_TIMEOUT_S)
    assert process.returncode == 0, stderr
    frames = _read(out)
    _exactly_once(frames)
    assert done_at_kill < len(list((out / "frames").rglob("part-*.parquet"))), "the kill came after the work"
    assert _comparable(frames) == _comparable(uninterrupted[0])
    assert _read(out, "regions") == uninterrupted[1]


def test_a_killed_driver_resumes_and_ends_equal_to_an_uninterrupted_run(ray_cluster, archive, uninterrupted,
                                                                       tmp_path):
    out = tmp_path / "out"
    process = _start(ray_cluster, archive, out)
    _wait_for_first_batch(process, out)
    os.kill(process.pid, signal.SIGKILL)  # nsenter execs the driver: this pid is the driver
    process.wait(timeout=30)
    deadline = time.monotonic() + 90
    while _workers(ray_cluster) and time.monotonic() < deadline:  # Ray ends the dead driver's actors
        time.sleep(0.5)
    partial = len(_read(out))
    assert 0 < partial < len(archive)

    result = _regrade(ray_cluster, archive, out)

    assert f"{len(archive) - partial} analysed" in result.stdout or "already done" in result.stdout
    frames = _read(out)
    _exactly_once(frames)
    assert _comparable(frames) == _comparable(uninterrupted[0])
    assert _read(out, "regions") == uninterrupted[1]


# ---------------------------------------------------------------------------- bad files


def test_bad_files_become_error_rows_with_reasons_and_exit_3(ray_cluster, tmp_path):
    folder = tmp_path / "mixed"
    good = write_micrographs(folder, 3, seed=200)
    data = good[0].read_bytes()
    truncated = folder / "truncated.png"
    truncated.write_bytes(data[: len(data) // 2])
    text = folder / "notes.tif"
    text.write_text("lot 42: re-polished, see logbook\n")
    empty = folder / "empty.jpg"
    empty.write_bytes(b"")
    readme = tmp_path / "README.txt"
    readme.write_text("not a micrograph")
    analysed = _analyze([*good, truncated, text, empty, readme], tmp_path / "analyze")

    result = _regrade(ray_cluster, [folder, readme], tmp_path / "out", check_rc=3)

    frames = _read(tmp_path / "out")
    by_path = {Path(r["path"]).name: r for r in frames}
    assert set(by_path) == {p.name for p in (*good, truncated, text, empty, readme)}
    for bad in (truncated, text, empty, readme):
        row = by_path[bad.name]
        assert row["verdict"] == "ERROR" and row["unreadable"] is True
        assert row["reason"] == analysed[(str(bad), 0)]["reason"] and row["reason"]
        assert str(bad) in result.stdout  # named in the summary, with its reason
    assert by_path["truncated.png"]["sha256"] is not None and by_path["empty.jpg"]["confidence"] is None
    assert not any(by_path[p.name]["unreadable"] for p in good)
    _assert_equal_to_analyze(frames, analysed, tmp_path / "analyze")
