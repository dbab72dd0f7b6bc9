"""What to re-grade: folders, glob patterns and manifests -> one `InputFile` per micrograph.

An INPUT of `inspectd regrade` is, in this order:

- a manifest: a file ending in `.csv` or `.parquet` with a `path` column and optional `part`
  (or `part_id`) and `lot` columns; relative paths are read from the manifest's folder. A
  file a manifest names is taken as it is (a missing one becomes an ERROR row, not a stop);
- a folder: every micrograph below it (`.png`, `.tif`, `.tiff`, `.bmp`, `.jpg`, `.jpeg`,
  any case), recursively, hidden files and folders left out;
- a glob pattern (`*`, `?`, `[`; `**` crosses folders): the files it matches;
- a file: taken as it is, whatever its name (a file that is no image gets an ERROR row).

Paths are made absolute (the workers of a cluster do not share the driver's working folder)
and each file is taken once, with the part and lot of its first mention.

Example:
    >>> import os, tempfile
    >>> folder = tempfile.mkdtemp()
    >>> for name in ("a.png", "b.TIF", "notes.txt"):
    ...     _ = open(os.path.join(folder, name), "wb").write(b"x")
    >>> _ = open(os.path.join(folder, "lots.csv"), "w").write("path,lot\\na.png,L1\\n")
    >>> [(os.path.basename(f.path), f.lot) for f in collect_inputs([folder, os.path.join(folder, "lots.csv")])]
    [('a.png', None), ('b.TIF', None)]
    >>> [(os.path.basename(f.path), f.lot) for f in collect_inputs([os.path.join(folder, "lots.csv")])]
    [('a.png', 'L1')]
"""

from __future__ import annotations

import csv
import glob
import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from inspectd.errors import InspectdError

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".png", ".tif", ".tiff", ".bmp", ".jpg", ".jpeg"})
MANIFEST_SUFFIXES = frozenset({".csv", ".parquet"})
PART_COLUMNS = ("part", "part_id")
_GLOB_CHARS = frozenset("*?[")


class InputError(InspectdError):
    """An INPUT names nothing to re-grade, or a manifest cannot be read (a usage error, exit 2)."""


@dataclass(frozen=True)
class InputFile:
    """One file to re-grade; `part` and `lot` come from a manifest (None elsewhere)."""

    path: str
    part: str | None = None
    lot: str | None = None


def collect_inputs(specs: Sequence[str]) -> list[InputFile]:
    """Every file the INPUTs name, each once, in the order given; InputError when one names nothing."""
    seen: dict[str, InputFile] = {}
    for spec in specs:
        found = list(_expand(spec))
        if not found:
            msg = f"{spec}: no micrographs found there"
            raise InputError(msg)
        for item in found:
            if item.path not in seen:
                seen[item.path] = item
            elif (item.part, item.lot) != (seen[item.path].part, seen[item.path].lot):
                logger.warning("%s is named twice with different part/lot; the first mention is kept", item.path)
    return list(seen.values())


def _expand(spec: str) -> Iterator[InputFile]:
    path = Path(spec)
    if path.is_file() and path.suffix.lower() in MANIFEST_SUFFIXES:
        yield from read_manifest(path)
    elif path.is_dir():
        yield from (InputFile(p) for p in _images_below(path))
    elif _GLOB_CHARS & set(spec):
        for match in sorted(glob.glob(spec, recursive=True)):
            if os.path.isdir(match):
                yield from (InputFile(p) for p in _images_below(Path(match)))
            else:
                yield InputFile(_absolute(match))
    elif path.exists():
        yield InputFile(_absolute(spec))
    else:
        msg = f"{spec}: no such file, folder or manifest"
        raise InputError(msg)


def _images_below(folder: Path) -> Iterator[str]:
    """Micrographs under `folder` in a stable order (sorted per folder), hidden entries left out."""
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_SUFFIXES:
                yield _absolute(os.path.join(root, name))


def read_manifest(path: Path) -> list[InputFile]:
    """The rows of a CSV or Parquet manifest (`path`, optional `part`/`part_id`, `lot`).

    Example:
        >>> import tempfile
        >>> manifest = Path(tempfile.mkdtemp()) / "m.csv"
        >>> _ = manifest.write_text("path,part_id,lot\\n/archive/a.png,P-1,LOT-7\\nb.png,,\\n")
        >>> [(f.path, f.part, f.lot) for f in read_manifest(manifest)][0]
        ('/archive/a.png', 'P-1', 'LOT-7')
        >>> read_manifest(manifest)[1].part is None
        True
    """
    if path.suffix.lower() == ".parquet":
        rows = _parquet_rows(path)
    else:
        rows = _csv_rows(path)
    base = path.parent
    files = []
    for number, row in enumerate(rows, start=2 if path.suffix.lower() == ".csv" else 1):
        raw = _text(row.get("path"))
        if raw is None:
            msg = f"{path}: row {number} has no path"
            raise InputError(msg)
        part = next((_text(row.get(c)) for c in PART_COLUMNS if _text(row.get(c)) is not None), None)
        files.append(InputFile(_absolute(os.path.join(base, raw)), part, _text(row.get("lot"))))
    return files


def _csv_rows(path: Path) -> list[dict[str, object]]:
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            _check_columns(path, reader.fieldnames or ())
            return list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        msg = f"{path}: cannot read the manifest: {exc}"
        raise InputError(msg) from exc


def _parquet_rows(path: Path) -> list[dict[str, object]]:
    import pyarrow.parquet as pq  # with the [cluster] extra, as Ray is

    try:
        table = pq.read_table(path)
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        msg = f"{path}: cannot read the manifest: {exc}"
        raise InputError(msg) from exc
    _check_columns(path, table.column_names)
    return table.to_pylist()


def _check_columns(path: Path, columns: Iterable[str]) -> None:
    if "path" not in set(columns):
        msg = f"{path}: a manifest needs a 'path' column (optional: part or part_id, lot); it has {sorted(columns)}"
        raise InputError(msg)


def _text(value: object) -> str | None:
    """A manifest cell as text; empty cells and nulls are None."""
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _absolute(path: str) -> str:
    return os.path.abspath(os.path.expanduser(path))
