"""The daemon's own housekeeping, on a real journal file held locked by a second connection."""

from __future__ import annotations

import sqlite3
import time

import zmq
from prometheus_client import CollectorRegistry

from inspectd import config
from inspectd.daemon.app import PRUNE_EVERY_S, PRUNE_RETRY_S, Daemon
from inspectd.daemon.error_topic import ErrorReporter
from inspectd.daemon.journal import Journal


def test_retention_on_a_locked_journal_is_reported_and_retried_soon_never_raised(tmp_path) -> None:
    cfg = config.parse_object({"sources": [{"kind": "folder", "path": str(tmp_path)}]})
    context = zmq.Context()
    daemon = Daemon(cfg, context=context, registry=CollectorRegistry())
    daemon.journal = Journal(tmp_path / "journal.sqlite3", retention_rows=1, lock_timeout_s=0.1)
    for index in range(3):
        daemon.journal.commit({"station": "s", "verdict": "PASS"}, f"k{index}")
    sent: list[dict] = []
    daemon.errors = ErrorReporter(sent.append, station="s", epoch=daemon.journal.epoch)
    blocker = sqlite3.connect(tmp_path / "journal.sqlite3", isolation_level=None)
    try:
        blocker.execute("BEGIN EXCLUSIVE")
        daemon._prune()
        assert [m["kind"] for m in sent] == ["journal_prune_failed"] and "locked" in sent[0]["error"]
        due_in_s = daemon._last_prune + PRUNE_EVERY_S - time.monotonic()
        assert 0 < due_in_s <= PRUNE_RETRY_S
        assert len(daemon.journal.range(1)) == 3  # nothing pruned while locked
        blocker.execute("ROLLBACK")
        daemon._prune()
        assert [m["seq"] for m in daemon.journal.range(1)] == [3]
    finally:
        blocker.close()
        daemon.stop()
        context.term()
