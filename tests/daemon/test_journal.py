"""The SQLite journal with real files: seq/epoch continuity, dedupe, ranges, retention, SIGKILL."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from inspectd.daemon import journal as journal_module
from inspectd.daemon.journal import DuplicateVerdictError, Journal, JournalError
from inspectd.wire.message import validate
from tests.daemon.conftest import make_draft

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "journal.sqlite3"


def test_wal_and_synchronous_full(path):
    with Journal(path) as journal:
        assert journal._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert journal._conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        journal.commit(make_draft(), None)
        assert Path(f"{path}-wal").exists()


def test_first_seq_is_one_and_commit_returns_the_stamped_valid_message(path):
    with Journal(path) as journal:
        assert journal.last_seq() == 0
        message = journal.commit(make_draft(1), "a")
        validate(message)
        assert (message["seq"], message["epoch"]) == (1, journal.epoch)
        assert 1 <= journal.epoch <= 2**53 - 1
        assert journal.range(1) == [message]
        assert journal.last_seq() == 1


def test_seq_continues_and_the_epoch_stays_across_reopen(path):
    seqs, epochs, new_streams = [], [], []
    for _boot in range(3):
        with Journal(path) as journal:
            epochs.append(journal.epoch)
            new_streams.append(journal.new_stream)
            seqs += [journal.commit(make_draft(i), None)["seq"] for i in range(4)]
    assert len(set(epochs)) == 1  # the epoch names the journal's stream, not a daemon start
    assert new_streams == ["a new journal", None, None]
    assert seqs == list(range(1, 13))
    with Journal(path) as journal:
        assert journal.boots == 4
        assert {m["epoch"] for m in journal.range(1)} == {epochs[0]}


def test_dedupe_key_is_exactly_once(path):
    with Journal(path) as journal:
        journal.commit(make_draft(), "/in/a.png:" + "0" * 64)
        assert journal.verdict_for("/in/a.png:" + "0" * 64) == "PASS"
        assert journal.verdict_for("/in/a.png:" + "1" * 64) is None
        with pytest.raises(DuplicateVerdictError):
            journal.commit(make_draft(), "/in/a.png:" + "0" * 64)
        assert journal.last_seq() == 1  # the refused commit used no seq
        assert journal.commit(make_draft(), None)["seq"] == 2
    with Journal(path) as journal:  # survives a restart
        assert journal.verdict_for("/in/a.png:" + "0" * 64) is not None


def test_range_bounds_order_and_cap(path, monkeypatch):
    with Journal(path) as journal:
        for i in range(12):
            journal.commit(make_draft(i), f"k{i}")
        assert [m["seq"] for m in journal.range(3, 6)] == [3, 4, 5, 6]
        assert [m["seq"] for m in journal.range(10)] == [10, 11, 12]
        assert journal.range(13) == []
        assert [m["seq"] for m in journal.range(1, limit=4)] == [1, 2, 3, 4]
        monkeypatch.setattr(journal_module, "MAX_RANGE_ROWS", 5)
        assert [m["seq"] for m in journal.range(1, limit=100)] == [1, 2, 3, 4, 5]
        for message in journal.range(1, 12):
            validate(message)


def test_retention_rows_keeps_last_seq_and_dedupe_keys(path):
    with Journal(path, retention_rows=3) as journal:
        for i in range(10):
            journal.commit(make_draft(i), f"k{i}")
        assert journal.prune() == 7
        assert [m["seq"] for m in journal.range(1)] == [8, 9, 10]
        # retired, still exactly-once
        assert journal.verdict_for("k0") == "PASS" and journal.verdict_for("k9") == "FAIL"
        with pytest.raises(DuplicateVerdictError):
            journal.commit(make_draft(), "k0")
        assert journal.commit(make_draft(), "k10")["seq"] == 11
    with Journal(path, retention_rows=3) as journal:
        assert journal.last_seq() == 11
        assert [m["seq"] for m in journal.range(1)] == [9, 10, 11]  # pruned at open


def test_retention_days_prunes_old_rows_and_seq_survives_an_empty_table(path):
    with Journal(path) as journal:
        for i in range(5):
            journal.commit(make_draft(i), f"k{i}")
    with sqlite3.connect(path) as conn:  # age the first three rows by 40 days, then all
        conn.execute("UPDATE verdicts SET created_utc = '2000-01-01T00:00:00.000000Z' WHERE seq <= 3")
    with Journal(path, retention_days=30) as journal:
        assert [m["seq"] for m in journal.range(1)] == [4, 5]
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE verdicts SET created_utc = '2000-01-01T00:00:00.000000Z'")
    with Journal(path, retention_days=30) as journal:
        assert journal.range(1) == []
        assert journal.commit(make_draft(), None)["seq"] == 6


def test_concurrent_writer_and_readers(path):
    journal = Journal(path)
    errors: list[BaseException] = []
    stop = threading.Event()

    def read() -> None:
        try:
            while not stop.wait(0.001):
                last = journal.last_seq()
                seqs = [m["seq"] for m in journal.range(max(1, last - 20))]
                assert seqs == list(range(max(1, last - 20), seqs[-1] + 1)) if seqs else last == 0
                assert journal.verdict_for("k0") is not None or last == 0
        except BaseException as exc:
            errors.append(exc)

    readers = [threading.Thread(target=read) for _ in range(3)]
    for reader in readers:
        reader.start()
    committed = [journal.commit(make_draft(i), f"k{i}")["seq"] for i in range(300)]
    stop.set()
    for reader in readers:
        reader.join()
    journal.close()
    assert not errors
    assert committed == list(range(1, 301))


def test_closed_journal_and_bad_arguments(path, tmp_path):
    journal = Journal(path)
    journal.close()
    journal.close()
    with pytest.raises(JournalError, match="closed"):
        journal.commit(make_draft(), None)
    with pytest.raises(ValueError):
        Journal(path, retention_rows=0)
    with pytest.raises(ValueError):
        Journal(path, retention_days=-1)
    with pytest.raises(JournalError, match="cannot open journal"):
        Journal(tmp_path)  # a directory


_WRITER = textwrap.dedent("""
    import sys
    sys.path.insert(0, sys.argv[2])
    from inspectd.daemon.journal import Journal
    from tests.daemon.conftest import make_draft
    journal = Journal(sys.argv[1])
    i = 0
    while True:
        seq = journal.commit(make_draft(i), f"file-{i}")["seq"]
        print(seq, flush=True)   # reported only after commit() returned: durable
        i += 1
""")


def test_sigkill_mid_writes_loses_no_committed_verdict(path):
    path.parent.mkdir(parents=True)
    child = subprocess.Popen([sys.executable, "-c", _WRITER, str(path), str(REPO_ROOT)],
                             stdout=subprocess.PIPE, text=True)
    acknowledged = []
    try:
        for line in child.stdout:
            acknowledged.append(int(line))
            if len(acknowledged) >= 300:
                break
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
        child.stdout.close()
    assert len(acknowledged) >= 300
    with Journal(path) as journal:
        assert journal.new_stream is None and journal.boots == 2
        rows = journal.range(1)
        seqs = [m["seq"] for m in rows]
        assert seqs == list(range(1, len(seqs) + 1))  # no duplicates, no holes
        assert set(acknowledged) <= set(seqs)
        assert journal.last_seq() == seqs[-1]
        keys = {m["part_id"] for m in rows}
        assert len(keys) == len(rows)
        for message in rows[:5] + rows[-5:]:
            validate(message)
        assert journal.commit(make_draft(), "after-restart")["seq"] == seqs[-1] + 1
        assert journal.verdict_for(f"file-{len(acknowledged) - 1}") is not None
