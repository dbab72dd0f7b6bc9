"""Salvage a damaged journal: what is readable goes into a new journal, the old file is kept.

SQLite's own `.recover` lives in the sqlite3 shell, not in Python's module, so this reads the
damaged file the slow, stubborn way, twice. First each table is walked in rowid order, and
where a read fails (an unreadable page) the walk steps over one rowid and tries again, so
every row SQLite can still reach is kept. Then, because a damaged interior page hides every
intact leaf below it (a damaged root page hides them all), the file's pages are read
directly: every table-leaf page not on the free list is decoded (cells, overflow chains,
records) and each row that is a whole verdict (its message intact JSON for its seq, its
key not retired by retention) is kept too. Rows found neither way are counted as lost. The journal's epoch and last seq are kept when they can be read, so subscribers
and bridges go on with the same stream and seq never repeats in it; when they cannot, the new
journal gets a new epoch (a new stream) and seq goes on after the highest one seen.

Work happens on a copy of the damaged file (and its WAL), which is then kept beside the new
journal as `journal.sqlite3.damaged-<UTC time>`; nothing is deleted. The journal's lock file
is held exclusively meanwhile, so this refuses to run while a daemon has the journal open.

Example:
    >>> import tempfile, os
    >>> from inspectd.daemon.journal import Journal
    >>> path = Path(tempfile.mkdtemp()) / "journal.sqlite3"
    >>> with Journal(path) as journal:
    ...     _ = [journal.commit({"station": "s1", "verdict": "PASS"}, f"k{i}") for i in range(3)]
    >>> report = recover(path, force=True)
    >>> report.salvaged, report.lost, report.epoch_kept, report.last_seq
    (3, 0, True, 3)
"""

from __future__ import annotations

import contextlib
import json
import logging
import mmap
import os
import shutil
import sqlite3
import struct
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from inspectd.daemon.journal import (
    JOURNAL_SCHEMA_SQL,
    JOURNAL_SCHEMA_VERSION,
    SQLITE_MAGIC,
    EpochHistory,
    JournalError,
    find_damage,
    history_path,
    hold_exclusive_lock,
    new_epoch,
)
from inspectd.durable_files import fsync_dir

logger = logging.getLogger(__name__)

# After this many unreadable rowids in a row, jump to the next rowid an index still knows of.
_PROBES_BEFORE_JUMP = 1000
# Without any bound on the rowids (every way in is damaged), stop after this many failures.
_PROBES_WITHOUT_BOUND = 1_000_000


@dataclass
class RecoveryReport:
    """What `recover` did; `summary()` is the line `inspectd journal recover` prints."""

    journal: Path
    problem: str | None  # what the check found; None: the journal was sound
    kept_as: Path | None = None  # where the damaged file now is (None: nothing was done)
    salvaged: int = 0
    lost: int = 0
    lost_ranges: list[tuple[int, int]] = field(default_factory=list)
    retired_keys: int = 0
    epoch: int | None = None
    epoch_kept: bool = True
    last_seq: int = 0

    def summary(self) -> str:
        if self.kept_as is None:
            return f"journal {self.journal} is sound: nothing to recover"
        lost = f"{self.lost} lost" + (f" (seq {_ranges(self.lost_ranges)})" if self.lost_ranges else "")
        epoch = (f"epoch {self.epoch} kept" if self.epoch_kept else
                 f"new epoch {self.epoch} (the old one could not be read: subscribers and bridges start a new stream)")
        return (f"journal {self.journal} recovered: {self.salvaged} verdicts salvaged, {lost}, {epoch}, "
                f"last seq {self.last_seq}; the damaged file is kept as {self.kept_as.name}")


@dataclass
class _Salvage:
    verdicts: dict[int, tuple] = field(default_factory=dict)  # seq -> (dedupe_key, created_utc, verdict, json)
    retired: dict[int, tuple] = field(default_factory=dict)  # rowid -> (dedupe_key, seq, verdict)
    meta: dict[str, str] = field(default_factory=dict)
    known_seqs: set[int] = field(default_factory=set)  # seqs some index or bound says existed
    bad_messages: int = 0
    found_by_scan: int = 0  # verdicts only the page scan found (below a damaged interior page)


def recover(journal_path: str | os.PathLike[str], *, force: bool = False) -> RecoveryReport:
    """Salvage the journal at `journal_path` into a new file in its place; keep the old one.

    A sound journal is left alone unless `force`. Raises `JournalError` (or its
    `JournalInUseError`) when there is no journal, a daemon has it open, or the new file
    cannot be written; the damaged file is untouched then.
    """
    path = Path(journal_path)
    if not path.is_file():
        msg = f"no journal at {path}"
        raise JournalError(msg)
    lock_fd = hold_exclusive_lock(path)
    try:
        problem = find_damage(path)
        report = RecoveryReport(journal=path, problem=problem)
        if problem is None and not force:
            return report
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        kept_as = path.with_name(f"{path.name}.damaged-{stamp}")
        rebuilt = path.with_name(f"{path.name}.recovered")
        with tempfile.TemporaryDirectory(prefix=".journal-recover-", dir=path.parent) as work:
            salvage = _salvage_copy(path, Path(work))
            _settle_stream(salvage, report, EpochHistory(history_path(path)))
            _write_journal(rebuilt, salvage, report)
        _put_in_place(path, kept_as, rebuilt)
        report.kept_as = kept_as
        EpochHistory(history_path(path)).record(report.epoch, report.last_seq, durable=True)
    finally:
        os.close(lock_fd)
    logger.info("%s", report.summary())
    return report


def _salvage_copy(path: Path, work: Path) -> _Salvage:
    """Read what can be read from a copy of the journal (and its WAL) in `work`."""
    copy = work / "journal.sqlite3"
    try:
        shutil.copyfile(path, copy)
        wal = Path(f"{path}-wal")
        if wal.exists():
            shutil.copyfile(wal, Path(f"{copy}-wal"))
    except OSError as exc:
        msg = f"cannot copy journal {path} to salvage it: {exc}"
        raise JournalError(msg) from exc
    salvage = _Salvage()
    try:
        conn = sqlite3.connect(str(copy), isolation_level=None)
    except sqlite3.Error as exc:  # not even openable: nothing to salvage
        logger.warning("journal copy %s cannot be opened: %s", copy, exc)
        return salvage
    try:
        with contextlib.suppress(sqlite3.Error):  # the WAL's pages into the copy, for the page scan
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.execute("PRAGMA cell_size_check=ON")  # notice a damaged page instead of reading garbage
        # A file shorter than its header says (truncated) is refused as a whole otherwise;
        # with this, SQLite reads the pages that are there. Nothing is written to the copy.
        conn.execute("PRAGMA writable_schema=ON")
        meta_rows = _walk(conn, "meta", "key, value", None, set(), max_failures=100)
        salvage.meta = {str(key): str(value) for key, value in meta_rows.values()}
        for sql in ("SELECT MIN(seq) FROM verdicts", "SELECT MAX(seq) FROM verdicts"):
            salvage.known_seqs.update(_ints(conn, sql))
        for index_sql in ("SELECT seq FROM verdicts INDEXED BY verdicts_created_utc ORDER BY created_utc",
                          "SELECT seq FROM verdicts INDEXED BY sqlite_autoindex_verdicts_1 "
                          "WHERE dedupe_key IS NOT NULL ORDER BY dedupe_key"):
            salvage.known_seqs.update(_ints(conn, index_sql))
        last_seq = _int_or_none(salvage.meta.get("last_seq"))
        bound = None if last_seq is None and not salvage.known_seqs else max(salvage.known_seqs | {last_seq or 0})
        rows = _walk(conn, "verdicts", "dedupe_key, created_utc, verdict, message_json", bound, salvage.known_seqs)
        for seq, (dedupe_key, created_utc, verdict, message_json) in rows.items():
            if _message_is_intact(message_json, seq):
                salvage.verdicts[seq] = (dedupe_key, created_utc, verdict, message_json)
            else:
                salvage.bad_messages += 1
                salvage.known_seqs.add(seq)
        retired_bound = max(_ints(conn, "SELECT MAX(rowid) FROM retired_keys"), default=None)
        salvage.retired = _walk(conn, "retired_keys", "dedupe_key, seq, verdict", retired_bound, set(),
                                max_failures=10_000)
    finally:
        conn.close()
    retired = {row[0] for row in salvage.retired.values()}
    scanned, scanned_meta = _scan_leaf_pages(copy)
    for seq, row in scanned.items():
        if seq not in salvage.verdicts and row[0] not in retired:
            salvage.verdicts[seq] = row
            salvage.found_by_scan += 1
    for key, values in scanned_meta.items():
        if key not in salvage.meta and len(values) == 1:  # one value only: an unambiguous one
            salvage.meta[key] = next(iter(values))
    if salvage.found_by_scan:
        logger.info("journal %s: %d verdicts found only by reading its pages directly", path, salvage.found_by_scan)
    return salvage


# ---- reading the pages directly (https://www.sqlite.org/fileformat2.html) -----------------------

_TABLE_LEAF_PAGE = 0x0D
_META_KEYS = frozenset({"schema_version", "epoch", "last_seq", "boots"})


def _scan_leaf_pages(path: Path) -> tuple[dict[int, tuple], dict[str, set[str]]]:
    """Whole rows found on the table-leaf pages of the file at `path` that are not on the free
    list (pruned rows live there): seq -> (dedupe_key, created_utc, verdict, message_json) for
    verdicts, and key -> values seen for the journal's meta table."""
    rows: dict[int, tuple] = {}
    meta: dict[str, set[str]] = {}
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size < 512:
                return rows, meta
            data = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError):
        return rows, meta
    try:
        # A damaged first page leaves the header unreadable: then assume the journal's own
        # layout (4096-byte pages, nothing reserved) and an unknown free list.
        header_ok = data[:len(SQLITE_MAGIC)] == SQLITE_MAGIC
        page_size = int.from_bytes(data[16:18], "big") if header_ok else 4096
        page_size = 65536 if page_size == 1 else page_size
        if page_size < 512 or page_size & (page_size - 1):
            header_ok, page_size = False, 4096
        usable = page_size - (data[20] if header_ok else 0)
        pages = size // page_size
        free = _freelist_pages(data, page_size, pages) if header_ok else set()
        for number in range(1, pages + 1):
            if number in free:
                continue
            start = (number - 1) * page_size
            header = start + (100 if number == 1 else 0)
            if data[header] != _TABLE_LEAF_PAGE:
                continue
            cells = int.from_bytes(data[header + 3:header + 5], "big")
            for index in range(min(cells, page_size // 2)):
                pointer = int.from_bytes(data[header + 8 + 2 * index:header + 10 + 2 * index], "big")
                try:
                    cell = _leaf_cell(data, start, pointer, usable, page_size, pages)
                except (IndexError, ValueError, UnicodeDecodeError, struct.error):
                    continue  # a damaged cell
                if cell is None:
                    continue
                rowid, values = cell
                if _is_verdict_row(rowid, values):
                    rows[rowid] = tuple(values[1:])
                elif (len(values) == 2 and values[0] in _META_KEYS and isinstance(values[1], str)
                      and values[1].isdigit()):
                    meta.setdefault(values[0], set()).add(values[1])
    finally:
        data.close()
    return rows, meta


def _freelist_pages(data: mmap.mmap, page_size: int, pages: int) -> set[int]:
    free: set[int] = set()
    trunk = int.from_bytes(data[32:36], "big")
    while 1 <= trunk <= pages and trunk not in free:
        free.add(trunk)
        offset = (trunk - 1) * page_size
        count = int.from_bytes(data[offset + 4:offset + 8], "big")
        if count > page_size // 4 - 2:
            break  # a damaged trunk page
        for index in range(count):
            leaf = int.from_bytes(data[offset + 8 + 4 * index:offset + 12 + 4 * index], "big")
            if 1 <= leaf <= pages:
                free.add(leaf)
        trunk = int.from_bytes(data[offset:offset + 4], "big")
    return free


def _leaf_cell(data: mmap.mmap, start: int, pointer: int, usable: int, page_size: int,
               pages: int) -> tuple[int, list] | None:
    """(rowid, column values) of one table-leaf cell, its overflow chain followed."""
    if not 8 <= pointer < page_size:
        return None
    payload_size, position = _varint(data, start + pointer)
    rowid, position = _varint(data, position)
    rowid = rowid - 2**64 if rowid >= 2**63 else rowid
    max_local = usable - 35
    if payload_size <= max_local:
        payload = bytes(data[position:position + payload_size])
    else:
        min_local = (usable - 12) * 32 // 255 - 23
        local = min_local + (payload_size - min_local) % (usable - 4)
        local = local if local <= max_local else min_local
        chunks = [data[position:position + local]]
        have = local
        overflow = int.from_bytes(data[position + local:position + local + 4], "big")
        for _ in range(payload_size // (usable - 4) + 2):
            if have >= payload_size:
                break
            if not 1 <= overflow <= pages:
                return None
            offset = (overflow - 1) * page_size
            chunks.append(data[offset + 4:offset + usable])
            have += usable - 4
            overflow = int.from_bytes(data[offset:offset + 4], "big")
        payload = b"".join(chunks)[:payload_size]
    if len(payload) != payload_size:
        return None
    return rowid, _record(payload)


def _record(payload: bytes) -> list:
    """The column values of one record (SQLite's record format; text is UTF-8 in a journal)."""
    header_size, position = _varint(payload, 0)
    serial_types = []
    while position < header_size:
        serial_type, position = _varint(payload, position)
        serial_types.append(serial_type)
    body = header_size
    values: list = []
    for serial_type in serial_types:
        if serial_type == 0:
            values.append(None)
        elif 1 <= serial_type <= 6:
            width = (0, 1, 2, 3, 4, 6, 8)[serial_type]
            values.append(int.from_bytes(payload[body:body + width], "big", signed=True))
            body += width
        elif serial_type == 7:
            values.append(struct.unpack(">d", payload[body:body + 8])[0])
            body += 8
        elif serial_type in (8, 9):
            values.append(serial_type - 8)
        elif serial_type >= 12:
            width = (serial_type - 12) // 2
            raw = payload[body:body + width]
            values.append(raw.decode("utf-8") if serial_type % 2 else bytes(raw))
            body += width
        else:
            msg = f"reserved serial type {serial_type}"
            raise ValueError(msg)
    if body > len(payload):
        msg = "record runs past its payload"
        raise ValueError(msg)
    return values


def _varint(data: bytes | mmap.mmap, position: int) -> tuple[int, int]:
    """SQLite's big-endian varint at `position`: (value, position after it)."""
    value = 0
    for index in range(8):
        byte = data[position + index]
        value = (value << 7) | (byte & 0x7F)
        if byte < 0x80:
            return value, position + index + 1
    return (value << 8) | data[position + 8], position + 9


def _is_verdict_row(rowid: int, values: list) -> bool:
    """A row of `verdicts`: (NULL for the seq alias, key or NULL, time, verdict, message)."""
    return (len(values) == 5 and values[0] is None and (values[1] is None or isinstance(values[1], str))
            and all(isinstance(value, str) for value in values[2:]) and _message_is_intact(values[4], rowid))


def _walk(conn: sqlite3.Connection, table: str, columns: str, upper: int | None, hints: set[int], *,
          max_failures: int = _PROBES_WITHOUT_BOUND) -> dict[int, tuple]:
    """Every readable row of `table` by rowid, stepping over rowids whose page cannot be read.

    `upper`: the highest rowid worth probing (None: unknown, then at most `max_failures`
    unreadable rowids are probed); `hints`: rowids known to exist, to jump to across a long
    unreadable stretch.
    """
    rows: dict[int, tuple] = {}
    cursor = min(hints) if hints else -(2**63)
    top = upper if upper is not None else 2**63 - 1
    failures_in_a_row = 0
    total_failures = 0
    while cursor <= top:
        try:
            for row in conn.execute(f"SELECT rowid, {columns} FROM {table} WHERE rowid >= ? AND rowid <= ? "  # noqa: S608
                                    "ORDER BY rowid", (cursor, top)):
                rows[row[0]] = tuple(row[1:])
                cursor = row[0] + 1
                failures_in_a_row = 0
            return rows
        except sqlite3.DatabaseError:
            failures_in_a_row += 1
            total_failures += 1
            if upper is None and not hints and total_failures >= max_failures:
                logger.info("table %s: giving up after %d unreadable rowids", table, total_failures)
                return rows
            if cursor == -(2**63):
                cursor = 0  # the first row is not readable: probe from the usual first rowids on
            cursor += 1
            if failures_in_a_row >= _PROBES_BEFORE_JUMP:
                later = [seq for seq in hints if seq >= cursor]
                if not later:
                    return rows
                cursor, failures_in_a_row = min(later), 0
    return rows


def _ints(conn: sqlite3.Connection, sql: str) -> set[int]:
    """The integers a query yields until it fails (an index walk over damaged pages)."""
    found: set[int] = set()
    try:
        for (value,) in conn.execute(sql):
            if isinstance(value, int):
                found.add(value)
    except sqlite3.DatabaseError as exc:
        logger.debug("%s stopped early: %s", sql, exc)
    return found


def _message_is_intact(message_json: object, seq: int) -> bool:
    try:
        message = json.loads(message_json) if isinstance(message_json, str) else None
    except ValueError:
        return False
    return isinstance(message, dict) and message.get("seq") == seq


def _settle_stream(salvage: _Salvage, report: RecoveryReport, history: EpochHistory) -> None:
    """Keep the epoch and last seq when they are known for sure; otherwise start a new stream."""
    seqs = sorted(salvage.verdicts)
    meta_epoch = _int_or_none(salvage.meta.get("epoch"))
    meta_last_seq = _int_or_none(salvage.meta.get("last_seq"))
    highest_seen = max([*seqs, *salvage.known_seqs, meta_last_seq or 0, 0])
    epoch = meta_epoch or _epoch_of_newest(salvage)
    recorded = history.get(epoch) if epoch else None
    report.last_seq = max(highest_seen, recorded.last_seq if recorded else 0)
    if epoch and meta_last_seq is not None:
        report.epoch, report.epoch_kept = epoch, True
    else:  # without the recorded last seq, seqs after the salvaged ones may have been published
        report.epoch, report.epoch_kept = new_epoch(history.epochs()), False
    report.salvaged = len(seqs)
    report.retired_keys = len(salvage.retired)
    first = min([*seqs, *salvage.known_seqs], default=report.last_seq + 1)
    report.lost_ranges = _gaps(seqs, first, report.last_seq)
    report.lost = sum(last - start + 1 for start, last in report.lost_ranges)


def _epoch_of_newest(salvage: _Salvage) -> int | None:
    for seq in sorted(salvage.verdicts, reverse=True):
        epoch = json.loads(salvage.verdicts[seq][3]).get("epoch")
        if isinstance(epoch, int) and not isinstance(epoch, bool) and epoch >= 1:
            return epoch
    return None


def _write_journal(target: Path, salvage: _Salvage, report: RecoveryReport) -> None:
    for stale in (target, Path(f"{target}-journal")):
        stale.unlink(missing_ok=True)
    try:
        conn = sqlite3.connect(str(target), isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode=DELETE")  # one self-contained file to move into place
            conn.executescript(JOURNAL_SCHEMA_SQL)
            conn.execute("BEGIN IMMEDIATE")
            for seq in sorted(salvage.verdicts):
                try:
                    conn.execute("INSERT INTO verdicts (seq, dedupe_key, created_utc, verdict, message_json) "
                                 "VALUES (?, ?, ?, ?, ?)", (seq, *salvage.verdicts[seq]))
                except sqlite3.IntegrityError:  # a damaged row repeating another's key: keep the first
                    report.salvaged -= 1
                    report.lost += 1
            for row in salvage.retired.values():
                conn.execute("INSERT OR IGNORE INTO retired_keys (dedupe_key, seq, verdict) VALUES (?, ?, ?)", row)
            boots = _int_or_none(salvage.meta.get("boots")) or 0
            for key, value in (("schema_version", JOURNAL_SCHEMA_VERSION), ("epoch", report.epoch),
                               ("last_seq", report.last_seq), ("boots", boots)):
                conn.execute("INSERT INTO meta (key, value) VALUES (?, ?)", (key, str(value)))
            conn.execute("COMMIT")
        finally:
            conn.close()
        with open(target, "rb") as handle:
            os.fsync(handle.fileno())
    except (OSError, sqlite3.Error) as exc:
        with contextlib.suppress(OSError):
            target.unlink()
        msg = f"cannot write the recovered journal {target}: {exc}"
        raise JournalError(msg) from exc
    problem = find_damage(target)
    if problem is not None:  # never replace one damaged journal with another
        target.unlink(missing_ok=True)
        msg = f"the recovered journal {target} fails its own check ({problem}); the damaged one is untouched"
        raise JournalError(msg)


def _put_in_place(path: Path, kept_as: Path, rebuilt: Path) -> None:
    """Damaged file (with its WAL) aside under `kept_as`, the rebuilt one in its place."""
    try:
        os.replace(path, kept_as)
        for suffix in ("-wal", "-shm"):
            companion = Path(f"{path}{suffix}")
            if companion.exists():
                os.replace(companion, Path(f"{kept_as}{suffix}"))  # SQLite pairs them by name
        os.replace(rebuilt, path)
    except OSError as exc:
        msg = f"cannot put the recovered journal in place of {path}: {exc}"
        raise JournalError(msg) from exc
    fsync_dir(path.parent)


def _int_or_none(text: str | None) -> int | None:
    try:
        return None if text is None else int(text)
    except ValueError:
        return None


def _gaps(seqs: list[int], first: int, last: int) -> list[tuple[int, int]]:
    """The (from, to) runs of first..last that are not in the sorted `seqs`.

    >>> _gaps([3, 4, 7, 9], 1, 11)
    [(1, 2), (5, 6), (8, 8), (10, 11)]
    """
    gaps: list[tuple[int, int]] = []
    expected = first
    for seq in seqs:
        if seq > expected:
            gaps.append((expected, seq - 1))
        expected = max(expected, seq + 1)
    if expected <= last:
        gaps.append((expected, last))
    return gaps


def _ranges(ranges: list[tuple[int, int]], shown: int = 3) -> str:
    text = ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in ranges[:shown])
    return text + (f" and {len(ranges) - shown} more ranges" if len(ranges) > shown else "")
