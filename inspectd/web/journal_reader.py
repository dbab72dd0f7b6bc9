"""The journal as the web UI reads it: a read-only SQLite connection per call, never a lock.

Why read-only and short-lived: the daemon's journal is in WAL mode, where readers never
block the writer, but a long-lived connection would pin the WAL (it cannot be checkpointed
past a reader's snapshot) and a read-write one could take locks. Each call opens
`file:...?mode=ro`, reads, and closes, on a worker thread of the server (never on the event
loop), so a slow query cannot stall the pipeline or the other pages.

    >>> import tempfile, os
    >>> from inspectd.daemon.journal import Journal
    >>> path = os.path.join(tempfile.mkdtemp(), "journal.sqlite3")
    >>> journal = Journal(path)
    >>> _ = journal.commit({"station": "s1", "verdict": "PASS"}, None)
    >>> reader = JournalReader(path)
    >>> [m["verdict"] for m in reader.since(0)], reader.last_seq()
    (['PASS'], 1)
    >>> journal.close()
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

from inspectd.errors import InspectdError

MAX_ROWS = 10_000  # most messages one call returns; callers page with `since`


class JournalUnreadableError(InspectdError):
    """The journal file is missing or cannot be read (no daemon has written one yet)."""


class JournalReader:
    """Read-only queries over `journal.sqlite3`; every method opens and closes its own connection."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        if not self.path.is_file():
            msg = f"no journal at {self.path} yet (the daemon writes it at its first start)"
            raise JournalUnreadableError(msg)
        uri = f"file:{quote(str(self.path.resolve()))}?mode=ro"
        try:
            connection = sqlite3.connect(uri, uri=True, timeout=2.0, check_same_thread=False)
        except sqlite3.Error as exc:
            msg = f"cannot open the journal {self.path} read-only: {exc}"
            raise JournalUnreadableError(msg) from exc
        try:
            yield connection
        except sqlite3.Error as exc:
            msg = f"cannot read the journal {self.path}: {exc}"
            raise JournalUnreadableError(msg) from exc
        finally:
            connection.close()

    def since(self, seq: int, limit: int = 1000) -> list[dict[str, Any]]:
        """Messages with seq > `seq`, oldest first, at most `limit` (capped at MAX_ROWS)."""
        limit = max(1, min(int(limit), MAX_ROWS))
        with self._connect() as db:
            rows = db.execute("SELECT message_json FROM verdicts WHERE seq > ? ORDER BY seq LIMIT ?",
                              (int(seq), limit)).fetchall()
        return [json.loads(row[0]) for row in rows]

    def latest(self, count: int) -> list[dict[str, Any]]:
        """The newest `count` messages, oldest first."""
        count = max(1, min(int(count), MAX_ROWS))
        with self._connect() as db:
            rows = db.execute("SELECT message_json FROM verdicts ORDER BY seq DESC LIMIT ?", (count,)).fetchall()
        return [json.loads(row[0]) for row in reversed(rows)]

    def between(self, start_utc: str, end_utc: str, limit: int = MAX_ROWS) -> list[dict[str, Any]]:
        """Messages created in [start_utc, end_utc) (ISO-8601 UTC strings, as journaled), oldest first."""
        limit = max(1, min(int(limit), MAX_ROWS))
        with self._connect() as db:
            rows = db.execute(
                "SELECT message_json FROM verdicts WHERE created_utc >= ? AND created_utc < ? ORDER BY seq LIMIT ?",
                (start_utc, end_utc, limit)).fetchall()
        return [json.loads(row[0]) for row in rows]

    def get(self, seq: int) -> dict[str, Any] | None:
        """One message by its seq, or None when it is not (or no longer) in the journal."""
        with self._connect() as db:
            row = db.execute("SELECT message_json FROM verdicts WHERE seq = ?", (int(seq),)).fetchone()
        return None if row is None else json.loads(row[0])

    def last_seq(self) -> int:
        """The newest seq in the journal (0 when empty)."""
        with self._connect() as db:
            row = db.execute("SELECT MAX(seq) FROM verdicts").fetchone()
        return int(row[0] or 0)

    def counts_since(self, start_utc: str) -> dict[str, int]:
        """Verdict word -> how many since `start_utc` (PASS / FAIL / ERROR / NO_INSPECTION)."""
        with self._connect() as db:
            rows = db.execute("SELECT verdict, COUNT(*) FROM verdicts WHERE created_utc >= ? GROUP BY verdict",
                              (start_utc,)).fetchall()
        return {str(verdict): int(count) for verdict, count in rows}
