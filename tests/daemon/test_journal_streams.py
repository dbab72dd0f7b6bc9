"""A new journal is a new stream: subscribers follow it instead of dropping its verdicts as
duplicates, and the daemon says so loudly; a damaged journal stops start-up until recovered.

Subscribers run against MiniDaemons (journal + PUB + control) restarted on the same
endpoints; the start-up cases run `inspectd run` itself on real state dirs.
"""

from __future__ import annotations

import os
import random
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import zmq

from inspectd.clients.control import request
from inspectd.clients.subscribe import VerdictSubscriber
from inspectd.daemon.journal import Journal, history_path
from inspectd.data import synth
from inspectd.wire.message import decode, validate
from tests.daemon.conftest import MiniDaemon, drop_files, free_tcp_endpoint, make_draft, wait_for
from tests.daemon.daemon_process import DaemonProcess

REPO_ROOT = Path(__file__).resolve().parents[2]


def _collect(subscriber: VerdictSubscriber, count: int, timeout_s: float = 60.0) -> list[dict]:
    delivered: list[dict] = []
    deadline = time.monotonic() + timeout_s
    while len(delivered) < count and time.monotonic() < deadline:
        message = subscriber.poll(0.2)
        if message is not None:
            delivered.append(message)
    return delivered


def _restart_on(daemon: MiniDaemon, state: Path, context: zmq.Context) -> MiniDaemon:
    publish, control = daemon.publish_endpoint, daemon.control_endpoint
    daemon.close()
    return MiniDaemon(state, context, publish_endpoint=publish, control_endpoint=control)


def _empty_journal(state: Path) -> None:
    for leftover in state.glob("journal.sqlite3*"):
        leftover.unlink()


def test_a_live_subscriber_follows_a_new_journal_from_its_first_verdict(tmp_path, zmq_context):
    state = tmp_path / "state"
    first = MiniDaemon(state, zmq_context, publish_endpoint=free_tcp_endpoint(), control_endpoint=free_tcp_endpoint())
    with VerdictSubscriber(first.publish_endpoint, first.control_endpoint, from_seq=1,
                           context=zmq_context) as subscriber:
        first.emit(5)
        assert [m["seq"] for m in _collect(subscriber, 5)] == [1, 2, 3, 4, 5]
        old_epoch = subscriber.epoch
        _empty_journal(state)  # a journal truncated or deleted while the daemon was stopped
        second = _restart_on(first, state, zmq_context)
        try:
            second._index = 100
            new = second.commit(2) + second.emit(3)  # two it never published: only replay has them
            delivered = _collect(subscriber, 5)
        finally:
            second.close()
    assert second.journal.epoch != old_epoch
    assert [(m["epoch"], m["seq"]) for m in delivered] == [(second.journal.epoch, seq) for seq in range(1, 6)]
    assert [m["part_id"] for m in delivered] == [m["part_id"] for m in new]
    assert subscriber.stream_changes == 1 and subscriber.epoch == second.journal.epoch
    # Copies seen both live and in the replay are dropped as duplicates (counted, never delivered):
    # the exact list above is the check; how many copies arrive depends on timing.


def test_a_subscriber_resuming_from_a_cursor_of_another_epoch_replays_the_new_stream(tmp_path, zmq_context):
    state = tmp_path / "state"
    first = MiniDaemon(state, zmq_context)
    first.emit(6)
    old_epoch = first.journal.epoch
    first.close()
    _empty_journal(state)
    second = MiniDaemon(state, zmq_context)
    try:
        second.commit(8)  # the new journal already holds 8 verdicts: more than the cursor's 6
        with VerdictSubscriber(second.publish_endpoint, second.control_endpoint, from_seq=7, epoch=old_epoch,
                               context=zmq_context) as subscriber:
            delivered = _collect(subscriber, 8)
            assert subscriber.poll(0.5) is None
    finally:
        second.close()
    assert [m["seq"] for m in delivered] == list(range(1, 9))  # from 1: not 7 and 8 of the new stream only
    assert {m["epoch"] for m in delivered} == {second.journal.epoch}


def test_an_older_copy_put_back_is_a_new_stream_and_its_old_rows_are_not_delivered_again(tmp_path, zmq_context):
    state = tmp_path / "state"
    first = MiniDaemon(state, zmq_context, publish_endpoint=free_tcp_endpoint(), control_endpoint=free_tcp_endpoint())
    with VerdictSubscriber(first.publish_endpoint, first.control_endpoint, from_seq=1,
                           context=zmq_context) as subscriber:
        first.emit(4)
        with sqlite3.connect(state / "journal.sqlite3") as live, \
                sqlite3.connect(tmp_path / "backup.sqlite3") as backup:
            live.backup(backup)  # a backup taken at seq 4
        first.emit(4)
        assert [m["seq"] for m in _collect(subscriber, 8)] == list(range(1, 9))
        publish, control = first.publish_endpoint, first.control_endpoint
        first.close()
        _empty_journal(state)
        shutil.copyfile(tmp_path / "backup.sqlite3", state / "journal.sqlite3")  # the backup put back
        second = MiniDaemon(state, zmq_context, publish_endpoint=publish, control_endpoint=control)
        try:
            assert "went back from seq 8 to 4" in second.journal.new_stream
            second._index = 50
            new = second.emit(3)
            delivered = _collect(subscriber, 3)
            assert subscriber.poll(0.5) is None
        finally:
            second.close()
    assert [(m["epoch"], m["seq"]) for m in delivered] == [(second.journal.epoch, seq) for seq in (5, 6, 7)]
    assert [m["part_id"] for m in delivered] == [m["part_id"] for m in new]
    assert subscriber.other_stream_count == 4  # rows 1-4 of the old stream, skipped


# ---- the daemon itself --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def micrographs(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("micrographs")
    return synth.write_dataset(folder, 4, 192, 256, seed=31, masks_dir=folder / "masks")


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "inspectd.cli", *args], capture_output=True, text=True,
                          timeout=300, cwd=REPO_ROOT)


def _errors(endpoint: str) -> zmq.Socket:
    sock = zmq.Context.instance().socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SUBSCRIBE, b"error.e2e")
    sock.connect(endpoint)
    return sock


def _error_kinds(sock: zmq.Socket) -> list[dict]:
    found = []
    while sock.poll(100):
        message = decode(sock.recv_multipart()[1])
        validate(message, kind="error")
        found.append(message)
    return found


@pytest.mark.slow
@pytest.mark.parametrize("how", ["truncated to 0 bytes", "deleted with its epoch history"])
def test_a_journal_emptied_while_stopped_starts_a_new_stream_loudly_and_a_live_subscriber_follows(
    tmp_path, micrographs, how
) -> None:
    daemon = DaemonProcess(tmp_path).start()
    with VerdictSubscriber(daemon.publish, daemon.control, from_seq=1) as subscriber:
        try:
            drop_files(micrographs + micrographs[:1], daemon.inbox, "a-")
            before = _collect(subscriber, 5, timeout_s=120)
            assert [m["seq"] for m in before] == [1, 2, 3, 4, 5]
        finally:
            exit_code = daemon.terminate()
        assert exit_code == 0
        journal = daemon.state_dir / "journal.sqlite3"
        if how == "truncated to 0 bytes":
            os.truncate(journal, 0)
        else:
            _empty_journal(daemon.state_dir)
            history_path(journal).unlink()  # only done/ still tells that verdicts were here
        errors = _errors(daemon.publish)
        restarted = DaemonProcess(tmp_path, inbox=daemon.inbox)
        restarted.state_dir, restarted.publish, restarted.control = daemon.state_dir, daemon.publish, daemon.control
        restarted.start()
        try:
            drop_files(micrographs[:3], daemon.inbox, "b-")
            after = _collect(subscriber, 3, timeout_s=120)
            status = restarted.status()
            seen_errors = []
            assert wait_for(lambda: seen_errors.extend(_error_kinds(errors)) or
                            any(m["kind"] == "journal_new_epoch" for m in seen_errors), timeout_s=30)
        finally:
            errors.close()
            exit_code = restarted.terminate()
        assert exit_code == 0
    new_epoch = status["epoch"]
    assert new_epoch != before[0]["epoch"]
    assert [(m["epoch"], m["seq"]) for m in after] == [(new_epoch, 1), (new_epoch, 2), (new_epoch, 3)]
    assert status["journal"]["new_stream"] == "a new journal"
    log = restarted.log_path.read_text()
    warning = next(line for line in log.splitlines() if "starts a new stream" in line)
    assert "level=WARNING" in warning and f"epoch {new_epoch}" in warning and "had verdicts before" in warning
    notice = next(m for m in seen_errors if m["kind"] == "journal_new_epoch")
    assert notice["epoch"] == new_epoch and "new stream" in notice["error"]


@pytest.mark.slow
def test_a_damaged_journal_stops_start_up_with_exit_2_until_recovered(tmp_path, micrographs) -> None:
    daemon = DaemonProcess(tmp_path)
    journal_path = daemon.state_dir / "journal.sqlite3"
    rng = random.Random(17)
    with Journal(journal_path) as journal:  # a station's worth of history
        epoch = journal.epoch
        for i in range(700):
            journal.commit(make_draft(i, reason="x" * rng.randint(100, 5000)), f"file:old-{i}")
    total_pages = journal_path.stat().st_size // 4096
    with open(journal_path, "r+b") as handle:
        for page in rng.sample(range(1, total_pages), 50):
            handle.seek(page * 4096)
            handle.write(rng.randbytes(4096))

    refused = subprocess.run([sys.executable, "-m", "inspectd.cli", "run", "--config", str(daemon.config_path),
                              "--state-dir", str(daemon.state_dir), "--publish", daemon.publish,
                              "--control", daemon.control], capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2
    error_lines = [line for line in refused.stderr.splitlines() if line.startswith("inspectd: ")]
    assert len(error_lines) == 1 and "Traceback" not in refused.stderr
    assert "is damaged" in error_lines[0]
    assert f"inspectd journal recover --state-dir {daemon.state_dir}" in error_lines[0]

    recovered = _cli("journal", "recover", "--state-dir", str(daemon.state_dir))
    assert recovered.returncode == 0, recovered.stderr
    assert f"epoch {epoch} kept" in recovered.stdout and "last seq 700" in recovered.stdout
    assert list(daemon.state_dir.glob("journal.sqlite3.damaged-*"))

    daemon.start()
    try:
        replayed, from_seq = [], 1
        while True:  # every row the recovered journal kept replays (no "malformed" anywhere)
            answer = request(daemon.control, {"cmd": "replay", "from": from_seq})
            assert "messages" in answer, answer
            if not answer["messages"]:
                break
            replayed += answer["messages"]
            from_seq = answer["messages"][-1]["seq"] + 1
        assert 0 < len(replayed) < 700 and all(m["epoch"] == epoch for m in replayed)
        drop_files(micrographs[:1], daemon.inbox, "new-")
        status = daemon.wait_processed(701)
        assert (status["epoch"], status["last_seq"]) == (epoch, 701)  # the stream goes on, seq never repeats
        assert _cli("status", "--control", daemon.control).returncode == 0
    finally:
        exit_code = daemon.terminate()
    assert exit_code == 0
