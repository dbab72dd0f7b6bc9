"""The re-grade's Parquet dataset: rows from analysis results, idempotent batch files, resume.

Layout (Hive-style partitions, readable by pandas, polars, DuckDB and Spark as they are):

    DIR/frames/config_hash=<sha256>/model_hash=<sha256|none>/part-<batch>.parquet
    DIR/regions/config_hash=<sha256>/model_hash=<sha256|none>/part-<batch>.parquet

`frames` has one row per field (a multi-page TIFF gives one per page, as `inspectd analyze`):
the file (path, sha256, size, mtime, part, lot), the verdict with its reason and failed
rules, every metric as its own column, confidence and out-of-distribution, the engine.
`regions` has one row per measured particle or pore, with the frame's path, sha256 and field.
The two partition columns come from the folder names; they are not stored in the files, as
Spark refuses a column that is both.

Exactly once: a batch's two files are named by the paths it holds (`batch_name`) and written
whole (temporary file, fsync, rename), regions first, frames last, so a batch is done exactly
when its frames file exists, and a task Ray retries rewrites the same files. `repair` (run
before and after every re-grade) removes what a killed run can leave: temporary files,
regions files whose frames file never came, and any row of an input that is also in another
batch (kept in the batch whose name sorts first).

Example:
    >>> batch_name(["/a/2.png", "/a/1.png"]) == batch_name(["/a/1.png", "/a/2.png"])
    True
    >>> "unmelted_fraction_pct" in frames_schema().names, "circularity" in regions_schema().names
    (True, True)
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from inspectd.durable_files import write_atomically
from inspectd.metric_values import finite_or_none
from inspectd.regrade.keys import RunKey
from inspectd.types import Region

try:
    import pyarrow as pa
    import pyarrow.parquet as pq
except ImportError:  # without the [cluster] extra; `inspectd regrade` says how to install it
    pa = pq = None

logger = logging.getLogger(__name__)

FRAMES, REGIONS = "frames", "regions"
BATCH_PREFIX = "part-"

# Columns of `frames` before the metrics (which follow in `measure`'s order) and after them.
_FILE_COLUMNS = (
    ("path", "string"), ("field_index", "int32"), ("fields_in_file", "int32"), ("sha256", "string"),
    ("file_size", "int64"), ("file_mtime_ns", "int64"), ("part", "string"), ("lot", "string"),
    ("verdict", "string"), ("reason", "string"), ("unreadable", "bool_"),
)
_TRUST_COLUMNS = (
    ("confidence", "float64"), ("out_of_distribution", "bool_"), ("ood_distance", "float64"),
    ("width", "int32"), ("height", "int32"), ("bit_depth", "int32"), ("regions_count", "int32"),
)
_ENGINE_COLUMNS = (("engine", "string"), ("backend", "string"), ("analysis_ms", "float64"))
_REGION_KEY_COLUMNS = (("path", "string"), ("sha256", "string"), ("field_index", "int32"),
                       ("part", "string"), ("lot", "string"))
_DONE_COLUMNS = ["path", "sha256", "file_size", "file_mtime_ns", "unreadable"]


@functools.cache
def metric_names() -> tuple[str, ...]:
    """Every metric `measure` reports, in its order (one float64 column each).

    Read from `measure` itself on a tiny mask holding all three classes, so a metric added
    there becomes a column here without a second list to keep in step.
    """
    from inspectd.analysis.measure import measure

    mask = np.zeros((32, 32), np.uint8)
    mask[4:12, 4:12] = 1
    mask[20:24, 20:24] = 2
    probe = measure(mask, np.full((32, 32), 100, np.uint8), um_per_px=1.0, min_region_area_px=1)
    return tuple(probe.metrics)


def frames_schema() -> pa.Schema:
    fixed = (*_FILE_COLUMNS, ("failed_rules", None), ("warnings", None), *_TRUST_COLUMNS,
             ("ood_reasons", None))
    fields = [_field(name, kind) for name, kind in fixed]
    fields += [pa.field(name, pa.float64()) for name in metric_names()]
    fields += [_field(name, kind) for name, kind in _ENGINE_COLUMNS]
    return pa.schema(fields)


def regions_schema() -> pa.Schema:
    fields = [_field(name, kind) for name, kind in _REGION_KEY_COLUMNS]
    for region_field in dataclasses.fields(Region):
        kind = {"int": pa.int64(), "float": pa.float64(), "str": pa.string()}[str(region_field.type)]
        fields.append(pa.field(region_field.name, kind))
    return pa.schema(fields)


def _field(name: str, kind: str | None) -> pa.Field:
    if name == "failed_rules":
        rule = pa.struct([("metric", pa.string()), ("op", pa.string()), ("limit", pa.float64()),
                          ("value", pa.float64())])
        return pa.field(name, pa.list_(rule))
    if name in ("warnings", "ood_reasons"):
        return pa.field(name, pa.list_(pa.string()))
    return pa.field(name, getattr(pa, kind)())


# ---------------------------------------------------------------------------- rows


@dataclass(frozen=True)
class FileFacts:
    """What the job knows of one input file besides its analysis."""

    path: str
    part: str | None
    lot: str | None
    sha256: str | None
    file_size: int | None
    file_mtime_ns: int | None
    fields_in_file: int
    unreadable: bool


def frame_row(result: Any, facts: FileFacts, *, engine_name: str, backend: str) -> dict[str, Any]:
    """The `frames` row of one analysed field (an `inspectd.analysis.analyzer.FrameResult`)."""
    frame, verdict = result.frame, result.verdict
    metrics = result.measurements.metrics if result.measurements is not None else {}
    assessment = result.assessment
    row: dict[str, Any] = {
        "path": facts.path,
        "field_index": int(frame.field_index),
        "fields_in_file": facts.fields_in_file,
        "sha256": facts.sha256,
        "file_size": facts.file_size,
        "file_mtime_ns": facts.file_mtime_ns,
        "part": facts.part,
        "lot": facts.lot,
        "verdict": verdict.result.value,
        "reason": verdict.reason,
        "unreadable": facts.unreadable,
        "failed_rules": [{"metric": r.metric, "op": r.op, "limit": finite_or_none(r.limit), "value": finite_or_none(r.value)}
                         for r in verdict.failed_rules],
        "warnings": list(verdict.warnings),
        "confidence": None if assessment is None else finite_or_none(assessment.confidence),
        "out_of_distribution": None if assessment is None else bool(assessment.out_of_distribution),
        "ood_distance": None if assessment is None else finite_or_none(assessment.ood_distance),
        "width": None if frame.pixels is None else int(frame.pixels.shape[1]),
        "height": None if frame.pixels is None else int(frame.pixels.shape[0]),
        "bit_depth": None if frame.pixels is None else int(frame.bit_depth),
        "regions_count": len(result.measurements.regions) if result.measurements is not None else 0,
        "ood_reasons": [] if assessment is None else list(assessment.ood_reasons),
    }
    for name in metric_names():
        row[name] = finite_or_none(metrics.get(name))
    row.update(engine=engine_name, backend=backend,
               analysis_ms=round(sum(verdict.timings_ms.values()), 3))
    return row


def region_rows(result: Any, facts: FileFacts) -> list[dict[str, Any]]:
    """The `regions` rows of one analysed field (none for an ERROR)."""
    if result.measurements is None:
        return []
    key = {"path": facts.path, "sha256": facts.sha256, "field_index": int(result.frame.field_index),
           "part": facts.part, "lot": facts.lot}
    return [{**key, **dataclasses.asdict(region)} for region in result.measurements.regions]


# ---------------------------------------------------------------------------- files


def partition_dir(out_dir: Path, table: str, key: RunKey) -> Path:
    """`DIR/<table>/config_hash=.../model_hash=...` of one re-grade."""
    return Path(out_dir) / table / f"config_hash={key.config_hash}" / f"model_hash={key.model_partition}"


def batch_name(paths: Iterable[str]) -> str:
    """The file name of a batch: the same inputs always give the same name (a retry overwrites)."""
    digest = hashlib.sha256("\n".join(sorted(paths)).encode("utf-8", "surrogateescape")).hexdigest()
    return f"{BATCH_PREFIX}{digest[:32]}.parquet"


def write_batch(out_dir: Path, key: RunKey, name: str, frames: Sequence[Mapping[str, Any]],
                regions: Sequence[Mapping[str, Any]]) -> None:
    """Write one batch whole: its regions file first, then its frames file (which marks it done)."""
    if not frames:
        return
    _write_table(partition_dir(out_dir, REGIONS, key) / name, regions, regions_schema())
    _write_table(partition_dir(out_dir, FRAMES, key) / name, frames, frames_schema())


def _write_table(path: Path, rows: Sequence[Mapping[str, Any]], schema: pa.Schema) -> None:
    table = pa.Table.from_pylist(list(rows), schema=schema)
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    write_atomically(path, buffer.getvalue())


def batch_files(out_dir: Path, table: str, key: RunKey) -> list[Path]:
    folder = partition_dir(out_dir, table, key)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.name.startswith(BATCH_PREFIX) and p.suffix == ".parquet")


@dataclass(frozen=True)
class DoneInput:
    """An input that already has its rows in this re-grade."""

    sha256: str | None
    file_size: int | None
    file_mtime_ns: int | None
    unreadable: bool


def done_inputs(out_dir: Path, key: RunKey) -> dict[str, DoneInput]:
    """path -> what is recorded of it, for every input with rows in this re-grade."""
    done: dict[str, DoneInput] = {}
    for path in batch_files(out_dir, FRAMES, key):
        for row in pq.read_table(path, columns=_DONE_COLUMNS).to_pylist():
            previous = done.get(row["path"])
            unreadable = bool(row["unreadable"]) or (previous is not None and previous.unreadable)
            done[row["path"]] = DoneInput(row["sha256"], row["file_size"], row["file_mtime_ns"], unreadable)
    return done


def read_frames(out_dir: Path, key: RunKey, paths: Iterable[str] | None = None) -> list[dict[str, Any]]:
    """The `frames` rows of this re-grade (only those of `paths` when given), in path and field order."""
    wanted = None if paths is None else set(paths)
    rows = []
    for path in batch_files(out_dir, FRAMES, key):
        rows += [r for r in pq.read_table(path).to_pylist() if wanted is None or r["path"] in wanted]
    rows.sort(key=lambda r: (r["path"], r["field_index"]))
    return rows


@dataclass(frozen=True)
class Repair:
    """What `repair` removed: temporary files, orphaned regions files, rows held twice."""

    temporary_files: int = 0
    orphaned_regions: int = 0
    duplicate_rows: int = 0

    def __bool__(self) -> bool:
        return bool(self.temporary_files or self.orphaned_regions or self.duplicate_rows)


def repair(out_dir: Path, key: RunKey) -> Repair:
    """Leave every input of this re-grade in exactly one batch; see the module docstring.

    Run while no worker writes to this re-grade (before the job starts, after it ends).
    """
    frames_dir, regions_dir = partition_dir(out_dir, FRAMES, key), partition_dir(out_dir, REGIONS, key)
    temporary = 0
    for folder in (frames_dir, regions_dir):
        if folder.is_dir():
            for leftover in folder.glob(".*.tmp"):
                leftover.unlink(missing_ok=True)
                temporary += 1
    frame_names = {p.name for p in batch_files(out_dir, FRAMES, key)}
    orphans = [p for p in batch_files(out_dir, REGIONS, key) if p.name not in frame_names]
    for orphan in orphans:
        orphan.unlink(missing_ok=True)
    duplicates = _drop_duplicate_inputs(out_dir, key)
    result = Repair(temporary, len(orphans), duplicates)
    if result:
        logger.info("re-grade %s: removed %d temporary file(s), %d regions file(s) of unfinished batches, "
                    "%d row(s) held twice", key.describe(), *dataclasses.astuple(result))
    return result


def _drop_duplicate_inputs(out_dir: Path, key: RunKey) -> int:
    """Keep each input (path) in the first batch file holding it; rewrite the others without it."""
    owner: dict[str, str] = {}
    extra: dict[Path, set[str]] = {}
    for path in batch_files(out_dir, FRAMES, key):
        for input_path in set(pq.read_table(path, columns=["path"]).column("path").to_pylist()):
            if input_path in owner:
                extra.setdefault(path, set()).add(input_path)
            else:
                owner[input_path] = path.name
    dropped = 0
    for frames_path, paths in extra.items():
        regions_path = partition_dir(out_dir, REGIONS, key) / frames_path.name
        frames = [r for r in pq.read_table(frames_path).to_pylist() if r["path"] not in paths]
        regions = ([r for r in pq.read_table(regions_path).to_pylist() if r["path"] not in paths]
                   if regions_path.exists() else [])
        dropped += pq.read_metadata(frames_path).num_rows - len(frames)
        if frames:
            _write_table(regions_path, regions, regions_schema())
            _write_table(frames_path, frames, frames_schema())
        else:
            os.unlink(frames_path)  # frames first: a regions file alone is an orphan, removed next time
            regions_path.unlink(missing_ok=True)
    return dropped
