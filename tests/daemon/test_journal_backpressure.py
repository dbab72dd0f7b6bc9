"""Back-pressure on a failing journal: input stops, memory stays bounded, the daemon says so at
once on every channel, and everything follows by itself once the journal takes writes again.

Real daemon processes on real folders, real ZeroMQ on 127.0.0.1, real SQLite files; a full
disk is a small tmpfs the test mounts (as root), filled with a real file. The pipeline-level
test drives a free-running in-memory camera through the real pipeline while another process
holds the journal's write lock.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
import zmq
from prometheus_client import CollectorRegistry

from inspectd.analysis.analyzer import Analyzer
from inspectd.config import Config
from inspectd.daemon.error_topic import ErrorReporter
from inspectd.daemon.journal import Journal
from inspectd.daemon.metrics import DaemonMetrics
from inspectd.daemon.pipeline import Pipeline
from inspectd.data import synth
from inspectd.sources.base import FrameSource, SourceItem, SourceState
from inspectd.wire.message import decode, validate
from inspectd.wire.publish import Publisher
from tests.daemon.conftest import drop_files, mounted_tmpfs, wait_for
from tests.daemon.daemon_process import DaemonProcess

pytestmark = pytest.mark.slow  # each test runs a daemon through a failure and its recovery (10-40 s)

REPO_ROOT = Path(__file__).resolve().parents[2]
FOLDER_BUFFER = 8  # the folder source's default read-ahead (FolderSourceConfig.buffer_size)


@pytest.fixture(scope="module")
def micrographs(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("micrographs")
    return synth.write_dataset(folder, 6, 192, 256, seed=21, masks_dir=folder / "masks")


class Listener:
    """SUB socket on the daemon's verdict and error topics, each message schema-checked."""

    def __init__(self, endpoint: str) -> None:
        self.sock = zmq.Context.instance().socket(zmq.SUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        for topic in (b"verdict.e2e", b"error.e2e"):
            self.sock.setsockopt(zmq.SUBSCRIBE, topic)
        self.sock.connect(endpoint)
        self.verdicts: list[dict] = []
        self.errors: list[dict] = []

    def pump(self, timeout_ms: int = 200) -> None:
        while self.sock.poll(timeout_ms):
            topic, payload = self.sock.recv_multipart()
            kind = topic.decode().partition(".")[0]
            message = decode(payload)
            validate(message, kind=kind)
            (self.verdicts if kind == "verdict" else self.errors).append(message)
            timeout_ms = 0

    def wait(self, predicate, timeout_s: float = 120.0) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.pump()
            if predicate():
                return True
        return predicate()

    def close(self) -> None:
        self.sock.close()


class NotifySocket:
    """A real unix datagram socket as NOTIFY_SOCKET, read at once as systemd does; keeps every line."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self.lines: list[str] = []
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._closed.is_set():
            with contextlib.suppress(TimeoutError):
                self.lines += self.sock.recv(4096).decode().splitlines()

    def statuses(self) -> list[str]:
        return [line for line in list(self.lines) if line.startswith("STATUS=")]

    def close(self) -> None:
        self._closed.set()
        self._thread.join(5)
        self.sock.close()


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "inspectd.cli", *args], capture_output=True, text=True,
                          timeout=120, cwd=REPO_ROOT)


def _metric(port: int, name: str) -> float:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    for line in body.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    msg = f"{name} not exported"
    raise AssertionError(msg)


def _fill_up(folder: Path) -> Path:
    """Write one file until the file system is full; returns it (delete it to give space back)."""
    filler = folder / "filler.bin"
    block = b"\0" * 65536
    with open(filler, "wb") as handle:
        while True:
            try:
                handle.write(block)
                handle.flush()
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
                break
        with contextlib.suppress(OSError):
            while True:  # the last few bytes
                os.write(handle.fileno(), b"\0" * 512)
    return filler


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 16 MB tmpfs mounted for the test: a disk that can really be filled and emptied."""
    if os.geteuid() != 0:
        pytest.skip("a full disk is simulated with a tmpfs this test mounts, which needs root")
    mount_point = tmp_path / "small-disk"
    mount_point.mkdir()
    with mounted_tmpfs(mount_point, "size=16m,mode=0755"):
        yield mount_point


def test_a_full_disk_pauses_input_reports_unhealthy_at_once_and_resumes_with_nothing_lost(
    tmp_path, small_tmpfs, micrographs
) -> None:
    notify = NotifySocket(tmp_path / "notify.sock")
    daemon = DaemonProcess(tmp_path, env={"NOTIFY_SOCKET": str(notify.path)})
    daemon.state_dir = small_tmpfs / "state"
    daemon.start()
    listener = Listener(daemon.publish)
    filler = None
    try:
        time.sleep(0.5)  # PUB slow joiner
        first = drop_files(micrographs[:2], daemon.inbox, "a-")
        assert listener.wait(lambda: len(listener.verdicts) == 2), daemon.log_text()
        port = daemon.status()["metrics_port"]
        max_held = daemon.status()["journal"]["max_held"]

        filler = _fill_up(small_tmpfs)
        held = drop_files(micrographs * 5, daemon.inbox, "b-")  # 30 files while the disk is full
        assert listener.wait(lambda: any(m["kind"] == "journal_write_failed" for m in listener.errors)), \
            daemon.log_text()
        failure = next(m for m in listener.errors if m["kind"] == "journal_write_failed")
        assert "full" in failure["error"] and "input is paused" in failure["error"]

        # unhealthy at once, on every channel
        unhealthy = _cli("status", "--control", daemon.control)
        assert unhealthy.returncode == 1, unhealthy.stdout
        assert "NOT healthy" in unhealthy.stdout and "journal cannot be written" in unhealthy.stdout
        assert wait_for(lambda: any("NOT healthy: the journal cannot be written" in line
                                    for line in notify.statuses()), timeout_s=30), notify.lines[-5:]
        assert _metric(port, "inspectd_journal_writable") == 0.0
        assert _metric(port, "inspectd_input_paused") == 1.0
        assert _metric(port, "inspectd_journal_write_failures_total") >= 1.0

        # input waits: a few files are taken (held, bounded), the rest stays in the inbox as it was
        samples = []
        for _ in range(10):
            status = daemon.status()
            samples.append(status["journal"]["held"])
            assert status["journal"]["writable"] is False and status["journal"]["input_paused"] is True
            time.sleep(0.3)
        assert max(samples) <= max_held
        untouched = sorted(p for p in daemon.inbox.glob("*.png") if p.name.startswith("b-"))
        assert len(untouched) >= len(held) - (max_held + FOLDER_BUFFER + 1)
        assert all(p.read_bytes() == m.read_bytes() for p, m in zip(held, micrographs * 5, strict=True)
                   if p in untouched)
        assert len(listener.verdicts) == 2 and daemon.status()["last_seq"] == 2
        assert sorted(p.name for p in (daemon.state_dir / "done").iterdir()) == sorted(p.name for p in first)

        filler.unlink()  # space returns: everything follows by itself, in order, once
        filler = None
        assert listener.wait(lambda: len(listener.verdicts) == 32, timeout_s=240), daemon.log_text()
        daemon.wait_processed(32)
        healthy = _cli("status", "--control", daemon.control)
        assert healthy.returncode == 0, healthy.stdout
        assert _metric(port, "inspectd_journal_writable") == 1.0
        assert _metric(port, "inspectd_input_paused") == 0.0
    finally:
        if filler is not None:
            filler.unlink()
        listener.close()
        code = daemon.terminate()
        notify.close()
    assert code == 0
    assert [m["seq"] for m in listener.verdicts] == list(range(1, 33))
    assert sorted(m["source"] for m in listener.verdicts) == sorted(str(p) for p in first + held)
    assert sorted(p.name for p in (daemon.state_dir / "done").iterdir()) == sorted(p.name for p in first + held)
    assert "journal writable again" in daemon.log_path.read_text()


def test_the_journal_deleted_while_the_daemon_runs_is_rebuilt_and_nothing_is_lost(tmp_path, micrographs) -> None:
    daemon = DaemonProcess(tmp_path).start()
    listener = Listener(daemon.publish)
    try:
        time.sleep(0.5)
        drop_files(micrographs[:3], daemon.inbox, "a-")
        assert listener.wait(lambda: len(listener.verdicts) == 3), daemon.log_text()
        epoch = listener.verdicts[0]["epoch"]
        for leftover in daemon.state_dir.glob("journal.sqlite3*"):
            leftover.unlink()  # a clean-up script gone wrong
        drop_files(micrographs[3:6], daemon.inbox, "b-")
        assert listener.wait(lambda: len(listener.verdicts) == 6), daemon.log_text()
        assert listener.wait(lambda: any(m["kind"] == "journal_restored" for m in listener.errors))
        daemon.wait_processed(6)
    finally:
        listener.close()
        exit_code = daemon.terminate()
    assert exit_code == 0
    assert [m["seq"] for m in listener.verdicts] == [1, 2, 3, 4, 5, 6]
    assert {m["epoch"] for m in listener.verdicts} == {epoch}
    assert "rebuilt from the open database" in daemon.log_path.read_text()
    restarted = DaemonProcess(tmp_path, inbox=daemon.inbox)
    restarted.state_dir = daemon.state_dir
    restarted.start()
    try:
        status = restarted.status()
        assert (status["epoch"], status["last_seq"], status["journal"]["new_stream"]) == (epoch, 6, None)
        assert _replay(restarted.control) == listener.verdicts  # the journal after the restart holds all six, exactly
    finally:
        exit_code = restarted.terminate()
    assert exit_code == 0


def test_a_journal_replaced_while_the_daemon_runs_holds_input_until_the_original_is_back(
    tmp_path, micrographs
) -> None:
    daemon = DaemonProcess(tmp_path).start()
    listener = Listener(daemon.publish)
    journal = daemon.state_dir / "journal.sqlite3"
    aside = daemon.state_dir / "moved-away.sqlite3"
    try:
        time.sleep(0.5)
        drop_files(micrographs[:2], daemon.inbox, "a-")
        assert listener.wait(lambda: len(listener.verdicts) == 2), daemon.log_text()
        os.rename(journal, aside)
        journal.write_text("not the journal")
        waiting = drop_files(micrographs[2:5], daemon.inbox, "b-")
        assert listener.wait(lambda: any("replaced by another file" in m["error"] for m in listener.errors
                                         if m["kind"] == "journal_write_failed")), daemon.log_text()
        unhealthy = _cli("status", "--control", daemon.control)
        assert unhealthy.returncode == 1 and "replaced by another file" in unhealthy.stdout
        assert journal.read_text() == "not the journal"  # never written into
        assert len(listener.verdicts) == 2
        os.replace(aside, journal)  # the original is back: the held verdicts follow by themselves
        assert listener.wait(lambda: len(listener.verdicts) == 5), daemon.log_text()
        daemon.wait_processed(5)
        assert _cli("status", "--control", daemon.control).returncode == 0
    finally:
        listener.close()
        exit_code = daemon.terminate()
    assert exit_code == 0
    assert [m["seq"] for m in listener.verdicts] == [1, 2, 3, 4, 5]
    assert sorted(m["source"] for m in listener.verdicts[2:]) == sorted(str(p) for p in waiting)


def _replay(control: str) -> list[dict]:
    from inspectd.clients.control import request

    return request(control, {"cmd": "replay", "from": 1})["messages"]


# ---- a free-running camera behind a journal that refuses writes --------------------------------


class FreeRunCamera(FrameSource):
    """A free-running camera in memory: a frame every few ms into its drop-oldest buffer."""

    KEY = "free-run-test"

    def __init__(self, frame: np.ndarray) -> None:
        super().__init__("cam", buffer_size=4, drop_oldest=True)
        self.frame = frame
        self.produced = 0
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._set_state(SourceState.INITIALISING)
        self._set_state(SourceState.RUNNING)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stopping.wait(0.005):
            self._publish(SourceItem.from_pixels("cam", self.frame, self.produced))
            self.produced += 1

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        self._close_buffer()
        self._set_state(SourceState.ENDED)


def test_a_camera_behind_a_locked_journal_drops_its_oldest_frames_and_memory_stays_bounded(
    tmp_path, micrographs
) -> None:
    frame = cv2.imread(str(micrographs[0]), cv2.IMREAD_GRAYSCALE)
    context = zmq.Context()
    journal = Journal(tmp_path / "journal.sqlite3", lock_timeout_s=0.05)
    publisher = Publisher("cam-test", ["tcp://127.0.0.1:*"], context=context, heartbeat_interval_s=1.0,
                          epoch=journal.epoch, last_seq=journal.last_seq)
    publisher.start()
    errors: list[dict] = []
    reporter = ErrorReporter(errors.append, station="cam-test", epoch=journal.epoch)
    camera = FreeRunCamera(frame)
    metrics = DaemonMetrics(CollectorRegistry())
    pipeline = Pipeline(station="cam-test", analyzer=Analyzer(Config()), journal=journal, publisher=publisher,
                        sources=[camera], metrics=metrics, report_error=reporter.report)
    blocker = sqlite3.connect(tmp_path / "journal.sqlite3", isolation_level=None)
    try:
        camera.start()
        pipeline.start()
        assert wait_for(lambda: journal.last_seq() >= 3, timeout_s=120)
        blocker.execute("BEGIN EXCLUSIVE")  # another process holds the write lock
        assert wait_for(lambda: pipeline.journal_failure is not None, timeout_s=60)
        drops_at_pause = camera.stats()["drops"]
        held = []
        for _ in range(40):
            held.append(pipeline.journal_state()["held"])
            time.sleep(0.05)
        assert pipeline.input_paused()
        assert max(held) <= pipeline.max_held  # nothing accumulates while the journal refuses
        assert camera.stats()["drops"] > drops_at_pause + 50  # the camera's own buffer dropped its oldest
        assert camera.stats()["queued"] <= 4
        assert metrics.input_paused._value.get() == 1.0 and metrics.journal_writable._value.get() == 0.0
        assert any(m["kind"] == "journal_write_failed" for m in errors)
        seq_at_pause = journal.last_seq()
        blocker.execute("ROLLBACK")
        assert wait_for(lambda: journal.last_seq() > seq_at_pause + pipeline.max_held, timeout_s=120)
        assert pipeline.journal_failure is None
        assert metrics.journal_writable._value.get() == 1.0 and metrics.input_paused._value.get() == 0.0
    finally:
        blocker.close()
        pipeline.stop(grace_s=5.0)
        publisher.close()
        journal.close()
        context.destroy(linger=0)
    with Journal(tmp_path / "journal.sqlite3") as reopened:
        seqs = [m["seq"] for m in reopened.range(1)]
    assert seqs == list(range(1, len(seqs) + 1))  # none lost, none twice

