"""The verdict journal: every verdict is committed to SQLite (durable) before it is published.

Why SQLite in WAL mode with `synchronous=FULL`: a commit must survive a power cut, not only a
crash of the daemon (NORMAL can lose the last commits on power loss), and the control thread
must read replay ranges while the publish thread writes. One connection serialised by a lock
is plenty at inspection rates (hundreds of verdicts per second at most).

The journal also owns the two numbers consumers de-duplicate on: `seq` (max + 1, kept in the
meta table so it continues across restarts even after retention pruned every row) and the
`epoch`, which names the journal's stream of verdicts. Within one epoch seq only grows, so
(epoch, seq) identifies a verdict and a consumer that sees a *different* epoch knows it is
looking at a new stream. A journal keeps its epoch across daemon restarts; a new one is drawn
(`new_epoch`: time-based plus random, never one recorded here before) whenever the stream
cannot go on: the journal is new or empty (first start, deleted, truncated to 0 bytes), or
it is not the one the daemon wrote last (an older copy put back, a journal from elsewhere).
The epochs seen and how far each got are kept beside the journal in `<name>-epochs.json`
(`EpochHistory`), which is how a journal that went back is recognised.

The journal is trusted only after checking it: opening runs `PRAGMA quick_check` first
(`find_damage`) and a damaged file raises `JournalDamagedError` naming the recovery command
(`inspectd journal recover`, `inspectd.daemon.journal_recovery`) instead of being written to.

Dedupe keys (path + content sha256) make folder input exactly-once; keys of pruned rows are
kept in `retired_keys` so a file left in place is not inspected again after its verdict aged
out.

Example:
    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "journal.sqlite3")
    >>> journal = Journal(path)
    >>> journal.commit({"station": "s1", "verdict": "PASS"}, "a.png:0123")["seq"]
    1
    >>> journal.verdict_for("a.png:0123"), journal.last_seq(), 0 < journal.epoch <= MAX_EPOCH
    ('PASS', 1, True)
    >>> journal.close()
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import secrets
import shlex
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote

from inspectd.durable_files import fsync_dir
from inspectd.errors import InspectdError, PermanentError
from inspectd.wire.message import encode, stamp, utc_iso

logger = logging.getLogger(__name__)

JOURNAL_FILE = "journal.sqlite3"  # in the daemon's state dir
MAX_RANGE_ROWS = 10_000  # most messages one `range` call returns; callers page with from_seq
# 2 = `epoch` names the journal's stream (kept across restarts). 1 counted daemon starts in
# it; such a journal keeps the epoch it has, so consumers that followed it go on seamlessly.
JOURNAL_SCHEMA_VERSION = 2
# Epochs stay within JSON's exact integer range (2**53 - 1), so a JavaScript consumer (an HMI,
# Node-RED) reads them exactly; the schema allows up to 2**63 - 1.
MAX_EPOCH = 2**53 - 1
_EPOCH_RANDOM_BITS = 21
_HISTORY_EVERY_S = 0.5  # how stale the recorded last seq of the epoch may get while running
_HISTORY_MAX_EPOCHS = 1000
SQLITE_MAGIC = b"SQLite format 3\x00"

JOURNAL_SCHEMA_SQL = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS verdicts (
    seq INTEGER PRIMARY KEY,
    dedupe_key TEXT UNIQUE,
    created_utc TEXT NOT NULL,
    verdict TEXT NOT NULL,
    message_json TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS verdicts_created_utc ON verdicts (created_utc);
CREATE TABLE IF NOT EXISTS retired_keys (
    dedupe_key TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    verdict TEXT NOT NULL
);
"""


class JournalError(InspectdError):
    """The journal file cannot be opened or written (disk full, permissions, locked, replaced)."""


class JournalDamagedError(JournalError, PermanentError):
    """The journal file is damaged (fails its integrity check or is not a journal at all).

    Restarting cannot help (`inspectd run` exits 2): stop the daemon and run the recovery
    command the message names.
    """

    def __init__(self, path: Path, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"journal {path} is damaged ({problem}); with the daemon stopped, "
                         f"`{recovery_command(path)}` salvages what is readable into a new journal "
                         "and keeps the damaged file beside it")


class JournalInUseError(JournalError):
    """Another process (a running daemon) has the journal open; stop it first."""


class DuplicateVerdictError(JournalError):
    """A verdict with this dedupe key is already journaled: the input was processed before."""

    def __init__(self, dedupe_key: str) -> None:
        self.dedupe_key = dedupe_key
        super().__init__(f"a verdict for {dedupe_key!r} is already in the journal")


def recovery_command(path: Path) -> str:
    """The command that salvages the journal at `path` (as shown in messages and the README).

    >>> recovery_command(Path("/var/lib/inspectd/journal.sqlite3"))
    'inspectd journal recover --state-dir /var/lib/inspectd'
    """
    return f"inspectd journal recover --state-dir {shlex.quote(str(path.parent))}"


def new_epoch(used: Collection[int] = ()) -> int:
    """A fresh epoch: Unix seconds in the high bits, 21 random bits below, never one in `used`.

    Time first, so a later journal usually has a larger epoch (easier to read in logs), and
    random bits, so two journals started in the same second (or on a machine whose clock was
    set back) still differ. Consumers must not rely on the order: any different epoch is a
    new stream. Always 1 <= epoch <= MAX_EPOCH.

    >>> a, b = new_epoch(), new_epoch()
    >>> a != b, 0 < a <= MAX_EPOCH, new_epoch(used={a}) != a
    (True, True, True)
    """
    while True:
        epoch = ((int(time.time()) << _EPOCH_RANDOM_BITS) | secrets.randbits(_EPOCH_RANDOM_BITS)) & MAX_EPOCH
        if epoch >= 1 and epoch not in used:
            return epoch


def history_path(journal_path: Path) -> Path:
    """Where the epoch history of a journal lives: `journal.sqlite3` -> `journal-epochs.json`.

    Deliberately not `journal.sqlite3*`: removing the journal with its -wal and -shm files
    must not remove the record that there was one.
    """
    return journal_path.with_name(f"{journal_path.stem}-epochs.json")


@dataclass
class EpochRecord:
    """One epoch a journal at this place had, and the highest seq seen in it."""

    epoch: int
    last_seq: int
    first_seen_utc: str
    updated_utc: str


class EpochHistory:
    """The epochs a journal at one path has had, oldest first, in a small JSON file.

    Advisory: a history that cannot be read or written is logged and otherwise ignored (new
    epochs are unique by construction; the history only adds "never one used here" and the
    detection of a journal that went back).

    Example:
        >>> import tempfile, os
        >>> history = EpochHistory(os.path.join(tempfile.mkdtemp(), "journal-epochs.json"))
        >>> history.latest is None
        True
        >>> history.record(7, 12, durable=True); history.record(9, 0, durable=True)
        >>> reread = EpochHistory(history.path)
        >>> reread.latest.epoch, reread.get(7).last_seq, sorted(reread.epochs())
        (9, 12, [7, 9])
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()  # the publish thread and the daemon's main loop both record
        self._records: dict[int, EpochRecord] = self._load()
        self._written: dict[int, int] = {epoch: r.last_seq for epoch, r in self._records.items()}

    @property
    def latest(self) -> EpochRecord | None:
        """The epoch recorded last (the one the daemon wrote to most recently), None if none."""
        return next(reversed(self._records.values()), None)

    def get(self, epoch: int) -> EpochRecord | None:
        return self._records.get(epoch)

    def epochs(self) -> set[int]:
        return set(self._records)

    def record(self, epoch: int, last_seq: int, *, durable: bool) -> None:
        """Note that the journal is at `last_seq` in `epoch` (now the latest); write the file
        if anything changed (fsynced when `durable`)."""
        with self._lock:
            was_latest = self.latest is not None and self.latest.epoch == epoch
            now = utc_iso()
            previous = self._records.pop(epoch, None)
            first_seen = previous.first_seen_utc if previous else now
            highest = max(last_seq, previous.last_seq if previous else 0)
            self._records[epoch] = EpochRecord(epoch, highest, first_seen, now)  # re-inserted: latest
            while len(self._records) > _HISTORY_MAX_EPOCHS:
                del self._records[next(iter(self._records))]
            if was_latest and self._written.get(epoch) == highest and not durable:
                return
            self._write(durable)

    def _write(self, durable: bool) -> None:
        payload = {"format": 1, "epochs": [vars(r) for r in self._records.values()]}
        temp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            with open(temp, "w", encoding="utf-8") as handle:
                json.dump(payload, handle, indent=1)
                handle.write("\n")
                if durable:
                    handle.flush()
                    os.fsync(handle.fileno())
            os.replace(temp, self.path)
            if durable:
                fsync_dir(self.path.parent)
        except OSError as exc:  # a full disk: the journal itself says so louder
            logger.debug("epoch history %s not written: %s", self.path, exc)
            with contextlib.suppress(OSError):
                temp.unlink()
            return
        self._written = {epoch: r.last_seq for epoch, r in self._records.items()}

    def _load(self) -> dict[int, EpochRecord]:
        try:
            payload = json.loads(self.path.read_text(encoding="utf-8"))
            records = {}
            for entry in payload["epochs"]:
                record = EpochRecord(int(entry["epoch"]), int(entry["last_seq"]), str(entry["first_seen_utc"]),
                                     str(entry["updated_utc"]))
                records.pop(record.epoch, None)
                records[record.epoch] = record
            return records
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            logger.warning("epoch history %s is unreadable and is started afresh: %s", self.path, exc)
            return {}


def find_damage(path: str | os.PathLike[str], *, full: bool = False, lock_timeout_s: float = 30.0) -> str | None:
    """The first problem found in the journal file at `path`, or None when it is sound.

    A missing or empty file is sound (a new journal). Otherwise the header must be SQLite's,
    `PRAGMA quick_check` (`full=True`: `integrity_check`, which also compares every index
    with its table and takes longer) must pass and the tables must be a journal's. Costs one
    read of the file: about a second per few hundred MB. Raises `JournalError` when the
    check itself cannot run (locked, unreadable): that is not damage, and may clear.

    Example:
        >>> import tempfile, os
        >>> folder = tempfile.mkdtemp()
        >>> find_damage(os.path.join(folder, "journal.sqlite3")) is None
        True
        >>> with open(os.path.join(folder, "notes.sqlite3"), "w") as f:
        ...     _ = f.write("not a database")
        >>> find_damage(os.path.join(folder, "notes.sqlite3"))
        'not an SQLite database (wrong file header)'
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        if not path.is_file():
            msg = f"cannot open journal {path}: not a regular file"
            raise JournalError(msg)
        wal_size = _size_or_zero(Path(f"{path}-wal"))
        if size == 0 and wal_size == 0:
            return None
        if size > 0:
            with open(path, "rb") as handle:
                if handle.read(len(SQLITE_MAGIC)) != SQLITE_MAGIC:
                    return "not an SQLite database (wrong file header)"
    except FileNotFoundError:
        return None
    except OSError as exc:
        msg = f"cannot read journal {path}: {exc}"
        raise JournalError(msg) from exc
    try:
        conn = sqlite3.connect(f"file:{quote(str(path))}?mode=rw", uri=True, timeout=lock_timeout_s,
                               isolation_level=None)
    except sqlite3.Error as exc:
        msg = f"cannot open journal {path}: {exc}"
        raise JournalError(msg) from exc
    try:
        rows = conn.execute("PRAGMA integrity_check" if full else "PRAGMA quick_check").fetchall()
        problems = [line.strip() for (text,) in rows for line in str(text).splitlines()
                    if line.strip() and line.strip() != "ok" and not line.startswith("*** in database")]
        if problems:
            more = f" and {len(problems) - 1} more problem(s)" if len(problems) > 1 else ""
            return f"{problems[0]}{more}"
        tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if tables and not {"meta", "verdicts"} <= tables:
            return f"not an inspectd journal (tables: {', '.join(sorted(tables))})"
    except sqlite3.DatabaseError as exc:
        if _is_damage(exc):
            return str(exc)
        msg = f"cannot check journal {path}: {exc}"
        raise JournalError(msg) from exc
    finally:
        conn.close()
    return None


class Journal:
    """SQLite journal of verdict messages; thread-safe (one connection behind a lock).

    `retention_days` / `retention_rows` (None = keep forever) are applied by `prune()`, which
    also runs once at open; call it periodically (e.g. hourly) from the daemon. `verify`
    (default on) checks the file before anything is written to it (`find_damage`).

    After opening, `new_stream` says why a new epoch was drawn (None when the journal goes on
    with its epoch) and `previous` is the epoch recorded here before (None the first time).
    Set `report(kind, text)` to hear of trouble it handled by itself (`journal_restored`).

    Example:
        >>> import tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "j.sqlite3")
        >>> with Journal(path) as journal:
        ...     first_epoch = journal.epoch
        ...     _ = [journal.commit({"station": "s1", "verdict": "PASS"}, None) for _ in range(3)]
        >>> with Journal(path) as journal:  # a restart: same epoch, seq goes on
        ...     journal.epoch == first_epoch, journal.new_stream, [m["seq"] for m in journal.range(2)]
        (True, None, [2, 3])
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        retention_days: float | None = None,
        retention_rows: int | None = None,
        lock_timeout_s: float = 30.0,
        verify: bool = True,
    ) -> None:
        if retention_days is not None and retention_days <= 0:
            msg = f"retention_days must be > 0 or None, got {retention_days}"
            raise ValueError(msg)
        if retention_rows is not None and retention_rows < 1:
            msg = f"retention_rows must be >= 1 or None, got {retention_rows}"
            raise ValueError(msg)
        self.path = Path(path)
        self.retention_days = retention_days
        self.retention_rows = retention_rows
        self.lock_timeout_s = lock_timeout_s
        self.report: Callable[[str, str], object] | None = None
        self.restored_count = 0
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._lock_file: int | None = None
        self._identity: tuple[int, int] | None = None
        self._last_seq_cached = 0
        self._history_written_at = 0.0
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self.path.is_dir():
                msg = f"cannot open journal {self.path}: it is a directory"
                raise JournalError(msg)
            self._lock_file = _hold_shared_lock(self.path)
            if verify:
                problem = find_damage(self.path, lock_timeout_s=lock_timeout_s)
                if problem is not None:
                    raise JournalDamagedError(self.path, problem)
            self.history = EpochHistory(history_path(self.path))
            self.previous: EpochRecord | None = self.history.latest
            self._conn = self._connect()
            self._conn.executescript(JOURNAL_SCHEMA_SQL)
            self.epoch, self.new_stream, self.boots = self._open_stream()
        except (OSError, sqlite3.Error, JournalError) as exc:
            self._release()
            if isinstance(exc, JournalError):
                raise
            if isinstance(exc, sqlite3.DatabaseError) and _is_damage(exc):
                raise JournalDamagedError(self.path, str(exc)) from exc
            msg = f"cannot open journal {self.path}: {exc}"
            raise JournalError(msg) from exc
        self._last_seq_cached = self.last_seq()
        self.history.record(self.epoch, self._last_seq_cached, durable=True)
        self._history_written_at = time.monotonic()
        if self.new_stream is None:
            logger.info("journal %s opened: epoch %d, last seq %d (start %d)", self.path, self.epoch,
                        self._last_seq_cached, self.boots)
        else:
            logger.info("journal %s opened with a new epoch %d (%s), last seq %d", self.path, self.epoch,
                        self.new_stream, self._last_seq_cached)
        self.prune()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def commit(self, message_without_seq: Mapping[str, Any], dedupe_key: str | None) -> dict[str, Any]:
        """Assign the next seq, stamp seq/epoch/publish_time, write and fsync; return the message.

        Returns only once the row is durable, so publishing afterwards can never announce a
        verdict a crash would forget. Raises `DuplicateVerdictError` if `dedupe_key` was
        journaled before (also after it was pruned), `JournalError` when it cannot be written
        (disk full, read-only, locked, the file replaced under the daemon); the caller
        retries. A journal file deleted while open is first rebuilt from the open database
        (`journal_restored`), so nothing journaled is lost with it.

        Example:
            >>> import tempfile, os
            >>> journal = Journal(os.path.join(tempfile.mkdtemp(), "j.sqlite3"))
            >>> message = journal.commit({"station": "s1", "verdict": "FAIL"}, "b.png:ff")
            >>> message["seq"], message["epoch"] == journal.epoch, message["publish_time"].endswith("Z")
            (1, True, True)
        """
        with self._lock:
            self._check_open()
            self._check_file_locked()
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    if dedupe_key is not None and self._verdict_for_locked(dedupe_key) is not None:
                        raise DuplicateVerdictError(dedupe_key)
                    seq = self._meta_int("last_seq", 0) + 1
                    publish_time = utc_iso()
                    message = stamp(message_without_seq, seq=seq, epoch=self.epoch, publish_time=publish_time)
                    message_json = encode(message).decode("utf-8")
                    self._conn.execute(
                        "INSERT INTO verdicts (seq, dedupe_key, created_utc, verdict, message_json) "
                        "VALUES (?, ?, ?, ?, ?)",
                        (seq, dedupe_key, publish_time, str(message.get("verdict", "")), message_json),
                    )
                    self._set_meta("last_seq", seq)
                    self._conn.execute("COMMIT")
                except BaseException:
                    self._rollback()
                    raise
            except sqlite3.Error as exc:
                msg = f"cannot write verdict to journal {self.path}: {exc}"
                raise JournalError(msg) from exc
            self._last_seq_cached = seq
        if time.monotonic() - self._history_written_at >= _HISTORY_EVERY_S:
            self.flush_history()
        # Hand back exactly what replay will return (encode() turned NaN into null, etc.).
        return json.loads(message_json)

    def flush_history(self, *, durable: bool = False) -> None:
        """Record how far this epoch got in the epoch history (commit does so every half second;
        the daemon also calls it when idle and at close, so a journal that goes back is noticed)."""
        self._history_written_at = time.monotonic()
        self.history.record(self.epoch, self._last_seq_cached, durable=durable)

    def verdict_for(self, dedupe_key: str) -> str | None:
        """The verdict ("PASS", "ERROR", ...) journaled for this key, or None if there is none.

        Lets the folder source finish a file whose verdict was journaled just before a crash
        (move it to done/ or quarantine/) without inspecting it again.

        Example:
            >>> import tempfile, os
            >>> journal = Journal(os.path.join(tempfile.mkdtemp(), "j.sqlite3"))
            >>> _ = journal.commit({"station": "s1", "verdict": "ERROR", "reason": "truncated"}, "c.png:aa")
            >>> journal.verdict_for("c.png:aa"), journal.verdict_for("d.png:bb")
            ('ERROR', None)
        """
        with self._lock:
            self._check_open()
            return self._verdict_for_locked(dedupe_key)

    def message_for(self, dedupe_key: str) -> dict[str, Any] | None:
        """The journaled message for this key (None when there is none, or it was pruned).

        A commit that reported an error may have landed after all (an I/O error after the
        data reached the disk): the retry then finds the key and publishes this message.

        Example:
            >>> import tempfile, os
            >>> journal = Journal(os.path.join(tempfile.mkdtemp(), "j.sqlite3"))
            >>> journal.commit({"station": "s1", "verdict": "PASS"}, "e.png:cc") == journal.message_for("e.png:cc")
            True
        """
        with self._lock:
            self._check_open()
            row = self._conn.execute("SELECT message_json FROM verdicts WHERE dedupe_key = ?",
                                     (dedupe_key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def last_seq(self) -> int:
        """Seq of the last committed verdict; 0 before the first one ever.

        Example:
            >>> import tempfile, os
            >>> Journal(os.path.join(tempfile.mkdtemp(), "j.sqlite3")).last_seq()
            0
        """
        with self._lock:
            self._check_open()
            return self._meta_int("last_seq", 0)

    def range(self, from_seq: int, to_seq: int | None = None, *, limit: int = MAX_RANGE_ROWS) -> list[dict[str, Any]]:
        """Journaled messages with from_seq <= seq <= to_seq (to the end if None), in seq order.

        At most `min(limit, MAX_RANGE_ROWS)` messages: when the answer is full, ask again from
        the last seq + 1. Pruned seqs are simply absent.

        Example:
            >>> import tempfile, os
            >>> journal = Journal(os.path.join(tempfile.mkdtemp(), "j.sqlite3"))
            >>> _ = [journal.commit({"station": "s1", "verdict": "PASS"}, None) for _ in range(5)]
            >>> [m["seq"] for m in journal.range(2, 4)], len(journal.range(1, limit=2))
            ([2, 3, 4], 2)
        """
        count = max(0, min(int(limit), MAX_RANGE_ROWS))
        upper = to_seq if to_seq is not None else 2**63 - 1
        with self._lock:
            self._check_open()
            rows = self._conn.execute(
                "SELECT message_json FROM verdicts WHERE seq >= ? AND seq <= ? ORDER BY seq LIMIT ?",
                (int(from_seq), int(upper), count),
            ).fetchall()
        return [json.loads(row[0]) for row in rows]

    def prune(self) -> int:
        """Delete rows older than `retention_days` or beyond the newest `retention_rows`.

        `last_seq` is untouched (seq never goes back) and the dedupe keys of deleted rows move
        to `retired_keys`. Returns the number of rows deleted.

        Example:
            >>> import tempfile, os
            >>> journal = Journal(os.path.join(tempfile.mkdtemp(), "j.sqlite3"), retention_rows=2)
            >>> _ = [journal.commit({"station": "s1", "verdict": "PASS"}, f"k{i}") for i in range(5)]
            >>> journal.prune(), [m["seq"] for m in journal.range(1)], journal.verdict_for("k0")
            (3, [4, 5], 'PASS')
        """
        conditions, params = [], []
        if self.retention_days is not None:
            cutoff = datetime.now(timezone.utc) - timedelta(days=self.retention_days)
            conditions.append("created_utc < ?")
            params.append(utc_iso(cutoff))
        if self.retention_rows is not None:
            conditions.append("seq <= (SELECT MAX(seq) FROM verdicts) - ?")
            params.append(self.retention_rows)
        if not conditions:
            return 0
        where = " OR ".join(conditions)
        with self._lock:
            self._check_open()
            self._check_file_locked()
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    self._conn.execute(
                        "INSERT OR IGNORE INTO retired_keys (dedupe_key, seq, verdict) "
                        f"SELECT dedupe_key, seq, verdict FROM verdicts WHERE dedupe_key IS NOT NULL AND ({where})",
                        params,
                    )
                    deleted = self._conn.execute(f"DELETE FROM verdicts WHERE {where}", params).rowcount
                    self._conn.execute("COMMIT")
                except BaseException:
                    self._rollback()
                    raise
            except sqlite3.Error as exc:
                msg = f"cannot prune journal {self.path}: {exc}"
                raise JournalError(msg) from exc
        if deleted:
            logger.info("journal %s: pruned %d verdicts (retention)", self.path, deleted)
        return deleted

    def close(self) -> None:
        """Checkpoint the WAL into the main file, record the epoch's last seq and close; later
        calls do nothing."""
        with self._lock:
            if self._conn is None:
                return
            try:
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error as exc:  # another process may hold a read lock: harmless
                logger.debug("journal %s: checkpoint at close skipped: %s", self.path, exc)
        self.flush_history(durable=True)
        with self._lock:
            self._release()

    # -- internals (call with self._lock held) ---------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: we issue BEGIN IMMEDIATE ourselves so seq assignment and
        # insert are one write transaction even if a second process opens the same file.
        conn = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False,
                               timeout=self.lock_timeout_s)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            st = os.stat(self.path)
        except BaseException:
            conn.close()
            raise
        self._identity = (st.st_dev, st.st_ino)
        return conn

    def _release(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._lock_file is not None:
            os.close(self._lock_file)  # closing the descriptor drops the lock
            self._lock_file = None

    def _open_stream(self) -> tuple[int, str | None, int]:
        """(epoch, why a new one was drawn or None, how many times the journal was opened)."""
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            version = self._meta_int("schema_version", 0)
            if version > JOURNAL_SCHEMA_VERSION:
                msg = f"journal {self.path} has schema version {version}, newer than this inspectd ({JOURNAL_SCHEMA_VERSION})"
                raise JournalError(msg)
            stored = self._meta_int("epoch", 0) or None
            highest_row = self._conn.execute("SELECT MAX(seq) FROM verdicts").fetchone()[0] or 0
            # seq never goes back, also when the meta row was lost or edited
            last_seq = max(self._meta_int("last_seq", 0), int(highest_row))
            reason = self._stream_break(stored, last_seq)
            epoch = stored if reason is None else new_epoch(self.history.epochs())
            boots = self._meta_int("boots", 0) + 1
            for key, value in (("schema_version", JOURNAL_SCHEMA_VERSION), ("epoch", epoch), ("last_seq", last_seq),
                               ("boots", boots)):
                self._set_meta(key, value)
            self._conn.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise
        return epoch, reason, boots

    def _stream_break(self, stored: int | None, last_seq: int) -> str | None:
        """Why the stream cannot go on with the stored epoch; None when it can."""
        if stored is None:
            return "a new journal" if last_seq == 0 else "the journal had verdicts but no epoch"
        latest = self.history.latest
        if latest is None:
            return None  # nothing recorded here (first start, or from before the record was kept)
        if stored != latest.epoch:
            if self.history.get(stored) is not None:
                return f"the journal is one of the earlier epoch {stored}, not of the latest {latest.epoch}"
            return f"the journal's epoch {stored} was never used here (copied from elsewhere?)"
        if last_seq < latest.last_seq:
            return f"the journal went back from seq {latest.last_seq} to {last_seq} (an older copy?)"
        return None

    def _check_open(self) -> None:
        if self._conn is None:
            msg = f"journal {self.path} is closed"
            raise JournalError(msg)

    def _check_file_locked(self) -> None:
        """Refuse to write to a file that is no longer the journal's path; rebuild a deleted one.

        SQLite goes on writing to a deleted journal (its WAL file even stays behind, to spoil
        the next start) and to a replaced one, so verdicts would be lost with the old file.
        """
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self._restore_deleted_locked()
            return
        except OSError as exc:
            msg = f"cannot check journal {self.path}: {exc}"
            raise JournalError(msg) from exc
        if (st.st_dev, st.st_ino) != self._identity:
            msg = (f"journal {self.path} was replaced by another file while the daemon runs; verdicts are held "
                   "back until the original is put back, or the daemon is restarted (which checks the new file)")
            raise JournalError(msg)

    def _restore_deleted_locked(self) -> None:
        """Write the open (deleted) database to a new file at the journal's path and go on with it."""
        temp = self.path.with_name(f"{self.path.name}.restoring")
        try:
            for stale in (temp, Path(f"{temp}-wal"), Path(f"{temp}-shm")):
                stale.unlink(missing_ok=True)
            target = sqlite3.connect(str(temp))
            try:
                self._conn.backup(target)
                target.execute("PRAGMA journal_mode=DELETE")  # one self-contained file to move
            finally:
                target.close()
            with open(temp, "rb") as handle:
                os.fsync(handle.fileno())
            self._conn.close()
            self._conn = None
            # The WAL and shared-memory files at the path belong to the deleted file.
            for leftover in (Path(f"{self.path}-wal"), Path(f"{self.path}-shm")):
                leftover.unlink(missing_ok=True)
            os.replace(temp, self.path)
            fsync_dir(self.path.parent)
            self._conn = self._connect()
        except (OSError, sqlite3.Error) as exc:
            if self._conn is None:
                with contextlib.suppress(OSError, sqlite3.Error, JournalError):
                    self._conn = self._connect() if self.path.exists() else None
            if self._conn is None:
                msg = f"journal {self.path} was deleted and could not be rebuilt, and cannot be reopened: {exc}"
                raise JournalError(msg) from exc
            msg = f"journal {self.path} was deleted while the daemon runs and cannot be rebuilt yet: {exc}"
            raise JournalError(msg) from exc
        self.restored_count += 1
        text = (f"journal {self.path} was deleted while the daemon ran; it was rebuilt from the open database "
                f"(epoch {self.epoch}, last seq {self._meta_int('last_seq', 0)}): nothing is lost")
        logger.warning("%s", text)
        if self.report is not None:
            try:
                self.report("journal_restored", text)
            except Exception:  # noqa: BLE001 - reporting must not fail the commit
                logger.exception("reporting the rebuilt journal failed")

    def _rollback(self) -> None:
        # SQLite may already have rolled back by itself (disk full): don't mask the real error.
        if self._conn.in_transaction:
            self._conn.execute("ROLLBACK")

    def _verdict_for_locked(self, dedupe_key: str) -> str | None:
        row = self._conn.execute(
            "SELECT verdict FROM verdicts WHERE dedupe_key = ? UNION ALL "
            "SELECT verdict FROM retired_keys WHERE dedupe_key = ? LIMIT 1",
            (dedupe_key, dedupe_key),
        ).fetchone()
        return None if row is None else row[0]

    def _meta_int(self, key: str, default: int) -> int:
        row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return int(row[0]) if row is not None else default

    def _set_meta(self, key: str, value: int) -> None:
        self._conn.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, str(value)),
        )


def lock_path(journal_path: Path) -> Path:
    """The lock file beside a journal: open journals hold it shared, recovery exclusive."""
    return journal_path.with_name(f"{journal_path.stem}.lock")


def hold_exclusive_lock(journal_path: Path) -> int:
    """Lock the journal against every `Journal` (a running daemon); returns the descriptor to
    `os.close` when done. Raises `JournalInUseError` when one has it open."""
    return _hold_lock(journal_path, fcntl.LOCK_EX,
                      f"journal {journal_path} is open in another process (a running daemon?): stop it first")


def _hold_shared_lock(journal_path: Path) -> int:
    return _hold_lock(journal_path, fcntl.LOCK_SH,
                      f"journal {journal_path} is being recovered (`inspectd journal recover`); start again after it")


def _hold_lock(journal_path: Path, operation: int, busy: str) -> int:
    """Take the lock file beside the journal without waiting; `busy` says who holds it."""
    fd = os.open(lock_path(journal_path), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, operation | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        os.close(fd)
        raise JournalInUseError(busy) from exc
    return fd


def _is_damage(exc: sqlite3.DatabaseError) -> bool:
    """Whether SQLite says the file itself is bad (as opposed to locked, full or unreadable)."""
    name = getattr(exc, "sqlite_errorname", "")
    if name:
        return name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB"))
    text = str(exc)
    return "malformed" in text or "not a database" in text


def _size_or_zero(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0

