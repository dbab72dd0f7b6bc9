"""The verdict journal: every verdict is committed to SQLite (durable) before it is published.

Why SQLite in WAL mode with `synchronous=FULL`: a commit must survive a power cut, not only a
crash of the daemon (NORMAL can lose the last commits on power loss), and the control thread
must read replay ranges while the publish thread writes. One connection serialised by a lock
is plenty at inspection rates (hundreds of verdicts per second at most).

The journal also owns the two numbers consumers de-duplicate on: `seq` (max + 1, kept in the
meta table so it continues across restarts even after retention pruned every row) and the
boot `epoch` (+1 each time a daemon opens the journal). Dedupe keys (path + content sha256)
make folder input exactly-once; keys of pruned rows are kept in `retired_keys` so a file left
in place is not inspected again after its verdict aged out.

Example:
    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "journal.sqlite3")
    >>> journal = Journal(path)
    >>> journal.commit({"station": "s1", "verdict": "PASS"}, "a.png:0123")["seq"]
    1
    >>> journal.has("a.png:0123"), journal.last_seq(), journal.epoch
    (True, 1, 1)
    >>> journal.close()
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from inspectd.errors import InspectdError
from inspectd.message import encode, stamp, utc_iso

logger = logging.getLogger(__name__)

MAX_RANGE_ROWS = 10_000  # most messages one `range` call returns; callers page with from_seq
_SCHEMA_VERSION = 1

_SCHEMA = """
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
    """The journal file cannot be opened or written (disk full, permissions, corrupt file)."""


class DuplicateVerdictError(JournalError):
    """A verdict with this dedupe key is already journaled: the input was processed before."""

    def __init__(self, dedupe_key: str) -> None:
        self.dedupe_key = dedupe_key
        super().__init__(f"a verdict for {dedupe_key!r} is already in the journal")


class Journal:
    """SQLite journal of verdict messages; thread-safe (one connection behind a lock).

    `retention_days` / `retention_rows` (None = keep forever) are applied by `prune()`, which
    also runs once at open; call it periodically (e.g. hourly) from the daemon.

    Example:
        >>> import tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "j.sqlite3")
        >>> with Journal(path) as journal:
        ...     _ = [journal.commit({"station": "s1", "verdict": "PASS"}, None) for _ in range(3)]
        >>> with Journal(path) as journal:  # a restart: new epoch, seq goes on
        ...     journal.epoch, [m["seq"] for m in journal.range(2)]
        (2, [2, 3])
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        retention_days: float | None = None,
        retention_rows: int | None = None,
        lock_timeout_s: float = 30.0,
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
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: we issue BEGIN IMMEDIATE ourselves so seq assignment and
            # insert are one write transaction even if a second process opens the same file.
            self._conn = sqlite3.connect(
                str(self.path), isolation_level=None, check_same_thread=False, timeout=lock_timeout_s
            )
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.executescript(_SCHEMA)
            self.epoch = self._open_epoch()
        except (OSError, sqlite3.Error) as exc:
            msg = f"cannot open journal {self.path}: {exc}"
            raise JournalError(msg) from exc
        logger.info("journal %s opened: epoch %d, last seq %d", self.path, self.epoch, self.last_seq())
        self.prune()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def commit(self, message_without_seq: Mapping[str, Any], dedupe_key: str | None) -> dict[str, Any]:
        """Assign the next seq, stamp seq/epoch/publish_time, write and fsync; return the message.

        Returns only once the row is durable, so publishing afterwards can never announce a
        verdict a crash would forget. Raises `DuplicateVerdictError` if `dedupe_key` was
        journaled before (also after it was pruned).

        Example:
            >>> import tempfile, os
            >>> journal = Journal(os.path.join(tempfile.mkdtemp(), "j.sqlite3"))
            >>> message = journal.commit({"station": "s1", "verdict": "FAIL"}, "b.png:ff")
            >>> message["seq"], message["epoch"], message["publish_time"].endswith("Z")
            (1, 1, True)
        """
        with self._lock:
            self._check_open()
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
        # Hand back exactly what replay will return (encode() turned NaN into null, etc.).
        return json.loads(message_json)

    def has(self, dedupe_key: str) -> bool:
        """Whether an input with this key already got a verdict (exactly-once for folders).

        Example:
            >>> import tempfile, os
            >>> Journal(os.path.join(tempfile.mkdtemp(), "j.sqlite3")).has("never-seen")
            False
        """
        return self.verdict_for(dedupe_key) is not None

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
            >>> journal.prune(), [m["seq"] for m in journal.range(1)], journal.has("k0")
            (3, [4, 5], True)
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
        """Checkpoint the WAL into the main file and close; later calls do nothing."""
        with self._lock:
            if self._conn is None:
                return
            try:
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error as exc:  # another process may hold a read lock: harmless
                logger.debug("journal %s: checkpoint at close skipped: %s", self.path, exc)
            self._conn.close()
            self._conn = None  # type: ignore[assignment]

    # -- internals (call with self._lock held) ---------------------------------------------

    def _open_epoch(self) -> int:
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            version = self._meta_int("schema_version", 0)
            if version > _SCHEMA_VERSION:
                msg = f"journal {self.path} has schema version {version}, newer than this inspectd ({_SCHEMA_VERSION})"
                raise JournalError(msg)
            self._set_meta("schema_version", _SCHEMA_VERSION)
            epoch = self._meta_int("epoch", 0) + 1
            self._set_meta("epoch", epoch)
            if self._meta_int("last_seq", -1) < 0:
                self._set_meta("last_seq", 0)
            self._conn.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise
        return epoch

    def _check_open(self) -> None:
        if self._conn is None:
            msg = f"journal {self.path} is closed"
            raise JournalError(msg)

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
