"""Which files a re-grade takes (folders, globs, manifests), what is already done, and the run's key."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from inspectd import config
from inspectd.regrade.inputs import InputError, InputFile, collect_inputs, read_manifest
from inspectd.regrade.job import batch_size_for, pending_inputs
from inspectd.regrade.keys import NO_MODEL, RunKey, config_hash
from inspectd.regrade.store import DoneInput

ENVELOPE = {"n_frames": 3, "statistics": {"mean": [1.0, 2.0]}}


def _touch(path: Path, content: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def test_a_folder_gives_its_micrographs_recursively_in_order_without_hidden_or_other_files(tmp_path):
    for name in ("b.png", "a.TIFF", "sub/c.jpg", "sub/d.bmp", "notes.txt", ".hidden.png", ".cache/e.png", "f.jpeg"):
        _touch(tmp_path / name)
    names = [os.path.relpath(f.path, tmp_path) for f in collect_inputs([str(tmp_path)])]
    assert names == ["a.TIFF", "b.png", "f.jpeg", "sub/c.jpg", "sub/d.bmp"]


def test_globs_and_files_are_absolute_and_each_file_is_taken_once(tmp_path, monkeypatch):
    for name in ("x1.png", "x2.png", "y.png"):
        _touch(tmp_path / name)
    monkeypatch.chdir(tmp_path)
    files = collect_inputs(["x*.png", "x1.png", str(tmp_path / "y.png"), "y.png"])
    assert [f.path for f in files] == [str(tmp_path / n) for n in ("x1.png", "x2.png", "y.png")]


def test_an_input_naming_nothing_is_a_usage_error(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        collect_inputs([str(tmp_path / "missing.png")])
    with pytest.raises(InputError, match="no micrographs"):
        collect_inputs([str(tmp_path / "*.png")])


def test_a_csv_manifest_gives_part_and_lot_and_reads_relative_paths_from_its_folder(tmp_path):
    manifest = tmp_path / "lists" / "lot-42.csv"
    _touch(manifest, b"path,part_id,lot\n../img/a.png,P-1,LOT-42\n/archive/b.tif,,LOT-42\nc.png,,\n")
    files = read_manifest(manifest)
    assert files == [InputFile(str(tmp_path / "img" / "a.png"), "P-1", "LOT-42"),
                     InputFile("/archive/b.tif", None, "LOT-42"),
                     InputFile(str(tmp_path / "lists" / "c.png"), None, None)]


def test_a_manifest_without_a_path_column_is_refused(tmp_path):
    manifest = _touch(tmp_path / "m.csv", b"file,lot\na.png,L\n")
    with pytest.raises(InputError, match="'path' column"):
        collect_inputs([str(manifest)])


def test_a_parquet_manifest_reads_like_a_csv_one(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    manifest = tmp_path / "m.parquet"
    pq.write_table(pa.table({"path": ["a.png", "b.png"], "part": ["P1", None], "lot": ["L1", "L2"]}), manifest)
    assert collect_inputs([str(manifest)]) == [InputFile(str(tmp_path / "a.png"), "P1", "L1"),
                                               InputFile(str(tmp_path / "b.png"), None, "L2")]


def test_done_inputs_are_skipped_unless_their_size_or_time_changed(tmp_path):
    same, changed, new = (_touch(tmp_path / n, b"12345") for n in ("same.png", "changed.png", "new.png"))
    stat = same.stat()
    done = {str(same): DoneInput("s1", stat.st_size, stat.st_mtime_ns, False),
            str(changed): DoneInput("s2", 4, stat.st_mtime_ns, False),
            str(tmp_path / "gone.png"): DoneInput(None, None, None, True)}
    inputs = [InputFile(str(p)) for p in (same, changed, new, tmp_path / "gone.png")]
    rows, skipped = pending_inputs(inputs, done)
    assert skipped == 2  # `same`, and `gone` (still unreadable, as recorded)
    assert [(Path(r["path"]).name, r["done_sha256"]) for r in rows] == [("changed.png", "s2"), ("new.png", None)]


def test_batches_spread_over_the_workers_and_stay_small():
    assert batch_size_for(1, 8) == 1
    assert batch_size_for(100, 2) == 13
    assert batch_size_for(10**8, 1000) == 32


def _hash(cfg: config.Config, **overrides) -> str:
    kwargs = {"engine_name": "classical", "backend": "cpu", "envelope": ENVELOPE, **overrides}
    return config_hash(cfg, **kwargs)


def test_the_config_hash_follows_what_changes_a_verdict_and_nothing_else(tmp_path):
    cfg = config.load(None)
    base = _hash(cfg)
    cfg.publish.heartbeat_interval_s = 7.0
    cfg.station = "another-station"
    cfg.segment.unet.tile_px = 512  # the U-Net's section does not matter to the classical engine
    assert _hash(cfg) == base
    assert _hash(cfg, envelope={**ENVELOPE, "n_frames": 4}) != base
    assert _hash(cfg, backend="cuda") != base
    cfg.measure.min_region_area_px += 1
    assert _hash(cfg) != base


def test_the_config_hash_of_a_model_follows_its_settings_not_its_path(tmp_path):
    cfg = config.load(None)
    cfg.segment.unet.model = tmp_path / "a" / "model.onnx"
    first = _hash(cfg, engine_name="unet")
    cfg.segment.unet.model = tmp_path / "b" / "model.onnx"
    assert _hash(cfg, engine_name="unet") == first
    cfg.segment.unet.overlap_px = 32
    assert _hash(cfg, engine_name="unet") != first


def test_the_run_key_names_its_partition():
    assert RunKey("c" * 64, None).model_partition == NO_MODEL
    assert RunKey("c" * 64, "m" * 64).model_partition == "m" * 64
