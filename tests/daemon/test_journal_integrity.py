"""The journal is trusted only after checking it, and every new journal is a new stream.

Real SQLite files damaged the ways a station's disk or a careless person damages them
(truncated, pages overwritten, replaced, emptied, deleted, an older copy put back), checked
with `find_damage`, salvaged with `recover` / `inspectd journal recover`, and opened again.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from inspectd.daemon.journal import (
    MAX_EPOCH,
    EpochHistory,
    Journal,
    JournalDamagedError,
    JournalError,
    JournalInUseError,
    find_damage,
    history_path,
    hold_exclusive_lock,
)
from inspectd.daemon.journal_recovery import recover
from inspectd.wire.message import validate
from tests.daemon.conftest import make_draft

REPO_ROOT = Path(__file__).resolve().parents[2]
PAGE = 4096


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "journal.sqlite3"


def _fill(path: Path, count: int, *, seed: int = 0) -> tuple[int, list[dict]]:
    """A journal of `count` verdicts of varied size (some overflow a page); (epoch, messages)."""
    rng = random.Random(seed)
    with Journal(path) as journal:
        messages = [journal.commit(make_draft(i, reason="r" * rng.randint(50, 6000)), f"file:{i}")
                    for i in range(count)]
        return journal.epoch, messages


def _overwrite_pages(path: Path, pages: int, *, seed: int) -> None:
    rng = random.Random(seed)
    total = path.stat().st_size // PAGE
    with open(path, "r+b") as handle:
        for page in rng.sample(range(1, total), pages):  # page 0 holds the header: another test's case
            handle.seek(page * PAGE)
            handle.write(rng.randbytes(PAGE))


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "inspectd.cli", *args], capture_output=True, text=True,
                          timeout=300, cwd=REPO_ROOT)


# ---- the check at start -----------------------------------------------------------------


def test_a_missing_empty_or_sound_journal_passes_the_check(path):
    assert find_damage(path) is None
    path.parent.mkdir(parents=True)
    path.touch()
    assert find_damage(path) is None
    path.unlink()
    _fill(path, 20)
    assert find_damage(path) is None
    assert find_damage(path, full=True) is None


@pytest.mark.parametrize("damage", ["truncated to half", "50 pages overwritten", "not SQLite",
                                    "another database", "header overwritten"])
def test_a_damaged_journal_is_refused_with_one_line_naming_the_recovery_command(path, damage):
    _fill(path, 400)
    size = path.stat().st_size
    if damage == "truncated to half":
        os.truncate(path, size // 2)
    elif damage == "50 pages overwritten":
        _overwrite_pages(path, 50, seed=9)
    elif damage == "not SQLite":
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(5000))
    elif damage == "another database":
        path.unlink()
        with sqlite3.connect(path) as other:
            other.execute("CREATE TABLE parts (id TEXT)")
    else:
        with open(path, "r+b") as handle:
            handle.write(os.urandom(100))
    problem = find_damage(path)
    assert problem
    with pytest.raises(JournalDamagedError) as refused:
        Journal(path)
    text = str(refused.value)
    assert "\n" not in text
    assert f"inspectd journal recover --state-dir {path.parent}" in text
    assert problem in text


def test_the_check_tells_a_locked_journal_from_a_damaged_one(path):
    _fill(path, 5)
    blocker = sqlite3.connect(path, isolation_level=None)
    try:
        blocker.execute("PRAGMA locking_mode=EXCLUSIVE")
        blocker.execute("BEGIN EXCLUSIVE")
        with pytest.raises(JournalError) as failed:
            find_damage(path, lock_timeout_s=0.1)
        assert not isinstance(failed.value, JournalDamagedError)
        assert "locked" in str(failed.value)
    finally:
        blocker.close()


# ---- recovery ----------------------------------------------------------------------------


def test_recover_a_journal_truncated_to_half_keeps_its_stream_and_everything_readable(path):
    epoch, messages = _fill(path, 600)
    with path.open("rb") as handle:
        original_bytes = handle.read()
    os.truncate(path, len(original_bytes) // 2)
    damaged_bytes = path.read_bytes()
    report = recover(path)
    assert report.problem and report.kept_as is not None
    assert report.kept_as.read_bytes() == damaged_bytes  # the damaged file is kept as it was
    assert report.kept_as.name.startswith("journal.sqlite3.damaged-")
    assert (report.epoch, report.epoch_kept, report.last_seq) == (epoch, True, 600)
    assert 100 < report.salvaged < 600 and report.salvaged + report.lost == 600
    assert report.lost_ranges[-1][1] == 600  # the tail went with the cut
    assert find_damage(path) is None
    with Journal(path) as journal:
        assert (journal.epoch, journal.new_stream, journal.last_seq()) == (epoch, None, 600)
        salvaged = journal.range(1)
        assert [m["seq"] for m in salvaged] == list(range(1, report.salvaged + 1))
        assert salvaged == messages[: report.salvaged]  # byte for byte what was journaled
        assert journal.commit(make_draft(1000), "file:new")["seq"] == 601  # seq never repeats in the epoch
        assert journal.verdict_for("file:0") is not None


def test_recover_after_random_pages_were_overwritten_salvages_the_intact_rows(path):
    epoch, messages = _fill(path, 800, seed=3)
    _overwrite_pages(path, 50, seed=4)
    report = recover(path)
    assert report.epoch == epoch and report.epoch_kept
    assert report.salvaged > 0 and report.lost > 0
    assert report.salvaged + report.lost == 800
    summary = report.summary()
    assert "\n" not in summary and f"{report.salvaged} verdicts salvaged" in summary and "lost" in summary
    with Journal(path) as journal:
        for message in journal.range(1):  # every row kept is intact and exactly as journaled
            validate(message)
            assert message == messages[message["seq"] - 1]
        assert journal.last_seq() == 800


@pytest.mark.parametrize("page", ["the verdicts table's root page", "the first page (the file header)"])
def test_recover_reads_the_pages_directly_when_the_way_to_them_is_damaged(path, page):
    epoch, messages = _fill(path, 300, seed=5)
    with sqlite3.connect(path) as conn:
        root = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'verdicts'").fetchone()[0]
    number = root if page.startswith("the verdicts") else 1
    with open(path, "r+b") as handle:
        handle.seek((number - 1) * PAGE)
        handle.write(random.Random(number).randbytes(PAGE))
    report = recover(path)
    assert report.salvaged >= 295  # every leaf is intact: only the way down to them was hit
    with Journal(path) as journal:
        for message in journal.range(1):
            assert message == messages[message["seq"] - 1]
        if page.startswith("the verdicts"):  # the meta table survived: the stream goes on
            assert (journal.epoch, journal.last_seq()) == (epoch, 300)


def test_recover_a_file_that_is_no_journal_starts_a_new_stream_and_keeps_the_file(path):
    epoch, _ = _fill(path, 10)
    path.write_text("a spreadsheet saved over the journal\n" * 200)
    report = recover(path)
    assert (report.salvaged, report.epoch_kept) == (0, False)
    assert report.epoch != epoch
    assert report.kept_as.read_text().startswith("a spreadsheet")
    with Journal(path) as journal:
        assert journal.epoch == report.epoch and journal.new_stream is None
        assert journal.commit(make_draft(), None)["seq"] == 1


def test_recover_leaves_a_sound_journal_alone_and_refuses_while_a_daemon_has_it_open(path):
    _fill(path, 5)
    before = path.read_bytes()
    report = recover(path)
    assert report.kept_as is None and "nothing to recover" in report.summary()
    assert path.read_bytes() == before
    with Journal(path):
        with pytest.raises(JournalInUseError, match="stop it first"):
            recover(path, force=True)
    lock = hold_exclusive_lock(path)
    try:
        with pytest.raises(JournalInUseError, match="being recovered"):
            Journal(path)
    finally:
        os.close(lock)


@pytest.mark.slow  # six CLI processes
def test_journal_check_and_recover_commands(path):
    state_dir = str(path.parent)
    assert _cli("journal", "check", "--state-dir", state_dir).returncode == 0  # none yet
    epoch, _ = _fill(path, 300)
    sound = _cli("journal", "check", "--state-dir", state_dir, "--full")
    assert sound.returncode == 0 and f"epoch {epoch}, last seq 300" in sound.stdout
    os.truncate(path, path.stat().st_size // 3)
    damaged = _cli("journal", "check", "--state-dir", state_dir)
    assert damaged.returncode == 1
    assert f"inspectd journal recover --state-dir {state_dir}" in damaged.stdout
    recovered = _cli("journal", "recover", "--state-dir", state_dir)
    assert recovered.returncode == 0, recovered.stderr
    lines = recovered.stdout.splitlines()
    assert len(lines) == 1 and "verdicts salvaged" in lines[0] and f"epoch {epoch} kept" in lines[0]
    assert "Traceback" not in recovered.stderr
    assert _cli("journal", "check", "--state-dir", state_dir).returncode == 0
    nowhere = _cli("journal", "recover", "--state-dir", str(path.parent / "nowhere"))
    assert nowhere.returncode == 2 and "no journal" in nowhere.stderr
    config = path.parent / "config.yaml"
    config.write_text(f"state_dir: {state_dir}\n")
    assert _cli("journal", "check", "--config", str(config)).returncode == 0


# ---- epochs: a new journal is a new stream -------------------------------------------------


def _history(path: Path) -> EpochHistory:
    return EpochHistory(history_path(path))


def test_a_restart_keeps_the_epoch_and_the_history_follows_the_last_seq(path):
    epoch, _ = _fill(path, 7)
    with Journal(path) as journal:
        assert (journal.epoch, journal.new_stream) == (epoch, None)
        assert journal.previous.epoch == epoch and journal.previous.last_seq == 7
    assert _history(path).latest.last_seq == 7


@pytest.mark.parametrize("how", ["truncated to 0 bytes", "deleted with its WAL", "replaced by an empty file"])
def test_an_emptied_or_deleted_journal_gets_a_new_epoch_never_used_here(path, how):
    used = {_fill(path, 5)[0]}
    for _round in range(3):
        if how == "truncated to 0 bytes":
            os.truncate(path, 0)
        elif how == "deleted with its WAL":
            for leftover in path.parent.glob("journal.sqlite3*"):
                leftover.unlink()
        else:
            path.unlink()
            path.touch()
        with Journal(path) as journal:
            assert journal.epoch not in used
            assert 1 <= journal.epoch <= MAX_EPOCH
            assert journal.new_stream == "a new journal"
            assert journal.previous is not None and journal.previous.epoch in used
            assert journal.commit(make_draft(), None)["seq"] == 1
            used.add(journal.epoch)
    assert _history(path).epochs() == used


def test_an_older_copy_put_back_gets_a_new_epoch_and_seq_goes_on_after_its_rows(path):
    epoch, _ = _fill(path, 10)
    backup = path.with_name("backup.sqlite3")
    shutil.copyfile(path, backup)
    with Journal(path) as journal:
        for i in range(5):
            journal.commit(make_draft(i), f"later-{i}")
    path.unlink()
    shutil.copyfile(backup, path)
    with Journal(path) as journal:
        assert journal.epoch != epoch
        assert "went back from seq 15 to 10" in journal.new_stream
        message = journal.commit(make_draft(), None)
        assert (message["seq"], message["epoch"]) == (11, journal.epoch)  # a new stream: (epoch, seq) is new


def test_a_journal_from_elsewhere_gets_a_new_epoch(path, tmp_path):
    _fill(path, 3)
    foreign = tmp_path / "other" / "journal.sqlite3"
    foreign_epoch, _ = _fill(foreign, 4)
    path.unlink()
    shutil.copyfile(foreign, path)
    with Journal(path) as journal:
        assert journal.epoch not in (foreign_epoch, _history(path).epochs() - {journal.epoch})
        assert "never used here" in journal.new_stream


def test_a_journal_written_before_epochs_named_streams_keeps_its_epoch(path):
    path.parent.mkdir(parents=True)
    with sqlite3.connect(path) as legacy:  # schema version 1: epoch counted daemon starts
        legacy.executescript("""
            CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
            CREATE TABLE verdicts (seq INTEGER PRIMARY KEY, dedupe_key TEXT UNIQUE, created_utc TEXT NOT NULL,
                                   verdict TEXT NOT NULL, message_json TEXT NOT NULL);
            CREATE TABLE retired_keys (dedupe_key TEXT PRIMARY KEY, seq INTEGER NOT NULL, verdict TEXT NOT NULL);
            INSERT INTO meta VALUES ('schema_version', '1'), ('epoch', '4'), ('last_seq', '0');
        """)
    with Journal(path) as journal:
        assert (journal.epoch, journal.new_stream) == (4, None)
    with Journal(path) as journal:
        assert journal.epoch == 4  # from now on it stays


# ---- the journal file changed under a running daemon ---------------------------------------


def test_a_journal_deleted_while_open_is_rebuilt_from_the_open_database(path):
    reports: list[tuple[str, str]] = []
    with Journal(path) as journal:
        journal.report = lambda kind, text: reports.append((kind, text))
        before = [journal.commit(make_draft(i), f"file:{i}") for i in range(20)]
        for leftover in path.parent.glob("journal.sqlite3*"):
            leftover.unlink()
        after = journal.commit(make_draft(20), "file:20")
        assert after["seq"] == 21 and after["epoch"] == journal.epoch
        assert journal.restored_count == 1
        assert [kind for kind, _ in reports] == ["journal_restored"]
        assert "nothing is lost" in reports[0][1]
    assert find_damage(path) is None
    with Journal(path) as journal:  # the next start finds every verdict, and no stale WAL
        assert journal.range(1) == [*before, after]
        assert journal.new_stream is None


def test_a_journal_replaced_while_open_is_not_written_until_the_original_is_back(path):
    with Journal(path) as journal:
        journal.commit(make_draft(0), "file:0")
        aside = path.with_name("aside.sqlite3")
        os.rename(path, aside)
        path.write_text("someone else's file")
        with pytest.raises(JournalError, match="replaced by another file"):
            journal.commit(make_draft(1), "file:1")
        assert path.read_text() == "someone else's file"  # never written into
        os.replace(aside, path)
        assert journal.commit(make_draft(1), "file:1")["seq"] == 2


def test_epoch_history_survives_a_damaged_file(path):
    history = history_path(path)
    history.parent.mkdir(parents=True)
    history.write_text("{not json")
    with Journal(path) as journal:
        assert journal.new_stream == "a new journal"
    assert json.loads(history.read_text())["epochs"][0]["epoch"] == journal.epoch
