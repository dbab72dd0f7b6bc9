"""A pipeline thread that keeps crashing: restarted with growing pauses, reported each time,
and past the crash limit the daemon stops and exits non-zero for systemd to restart it.

The pipeline runs with a real journal, publisher and analyser; the faults are real exceptions
from a source (in process) or from the analysis stage of a real daemon process.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
import zmq
from prometheus_client import CollectorRegistry

from inspectd.analysis.analyzer import Analyzer
from inspectd.config import Config
from inspectd.daemon import pipeline as pipeline_module
from inspectd.daemon.error_topic import ErrorReporter
from inspectd.daemon.journal import Journal
from inspectd.daemon.metrics import DaemonMetrics
from inspectd.daemon.pipeline import Pipeline
from inspectd.sources.base import FrameSource, SourceItem
from inspectd.wire.message import decode, validate
from inspectd.wire.publish import Publisher
from tests.daemon.conftest import wait_for
from tests.daemon.crashing_daemon import FAULT
from tests.daemon.daemon_process import DaemonProcess

STATION = "restart-test"
FIRST_S, MAX_S, LIMIT = 0.05, 0.2, 5


class FaultySource(FrameSource):
    """A source whose `get` raises for its first `failures` calls (all of them with None),
    then has nothing to give; it notes when each call came."""

    KEY = "faulty"

    def __init__(self, failures: int | None) -> None:
        super().__init__("faulty")
        self.failures = failures
        self.calls: list[float] = []
        self._lock = threading.Lock()

    def start(self) -> None:
        pass

    def stop(self, timeout_s: float = 5.0) -> None:
        pass

    def get(self, timeout_s: float | None = None) -> SourceItem | None:
        with self._lock:
            self.calls.append(time.monotonic())
            failing = self.failures is None or len(self.calls) <= self.failures
        if failing:
            msg = f"source bug on call {len(self.calls)}"
            raise RuntimeError(msg)
        time.sleep(timeout_s or 0.0)
        return None


class Harness:
    """A pipeline wired like the daemon's, with `error.<station>` read by a real SUB socket."""

    def __init__(self, tmp_path: Path, context: zmq.Context, source: FaultySource) -> None:
        self.source = source
        self.journal = Journal(tmp_path / "journal.sqlite3")
        self.publisher = Publisher(STATION, ["tcp://127.0.0.1:*"], context=context, heartbeat_interval_s=1.0,
                                   epoch=self.journal.epoch, last_seq=self.journal.last_seq)
        self.publisher.start()
        self.errors = ErrorReporter(self.publisher.publish_error, station=STATION, epoch=self.journal.epoch)
        self.subscriber = context.socket(zmq.SUB)
        self.subscriber.setsockopt(zmq.SUBSCRIBE, f"error.{STATION}".encode())
        self.subscriber.setsockopt(zmq.LINGER, 0)
        self.subscriber.connect(self.publisher.endpoints[0])
        self.fatal: list[str] = []
        self.pipeline = Pipeline(station=STATION, analyzer=Analyzer(Config()), journal=self.journal,
                                 publisher=self.publisher, sources=[source],
                                 metrics=DaemonMetrics(CollectorRegistry()), report_error=self.errors.report,
                                 on_fatal=self.fatal.append)

    def joined(self) -> bool:
        """Slow joiner: true once a probe error sent now comes through the SUB socket."""
        self.errors.report("probe", "probe", throttle=False)
        return any(message["kind"] == "probe" for message in self.received(timeout_ms=100))

    def received(self, timeout_ms: int = 0) -> list[dict]:
        messages = []
        while self.subscriber.poll(timeout_ms):
            message = decode(self.subscriber.recv_multipart()[1])
            validate(message, kind="error")
            messages.append(message)
            timeout_ms = 0
        return messages

    def close(self) -> None:
        self.pipeline.stop(grace_s=0.5)
        self.subscriber.close()
        self.publisher.close()
        self.journal.close()


@pytest.fixture
def fast_restarts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pipeline_module, "THREAD_RESTART_FIRST_S", FIRST_S)
    monkeypatch.setattr(pipeline_module, "THREAD_RESTART_MAX_S", MAX_S)
    monkeypatch.setattr(pipeline_module, "THREAD_CRASH_LIMIT", LIMIT)


@pytest.fixture
def context() -> Iterator[zmq.Context]:
    ctx = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


def test_a_thread_crashing_every_time_backs_off_reports_and_gives_up(tmp_path, context, fast_restarts) -> None:
    harness = Harness(tmp_path, context, FaultySource(failures=None))
    try:
        assert wait_for(harness.joined, timeout_s=30)
        harness.pipeline.start()
        assert wait_for(lambda: harness.fatal, timeout_s=60)
        reports: list[dict] = []
        assert wait_for(lambda: reports.extend(harness.received()) or
                        [m["kind"] for m in reports].count("pipeline_failed") == 1, timeout_s=30)
    finally:
        harness.close()
    calls = harness.source.calls
    assert len(calls) == LIMIT  # not restarted after the limit
    pauses = [later - earlier for earlier, later in zip(calls, calls[1:], strict=False)]
    expected = [min(FIRST_S * 2**k, MAX_S) for k in range(LIMIT - 1)]  # 0.05, 0.1, 0.2, 0.2: doubling, capped
    assert all(pause >= 0.9 * wanted for pause, wanted in zip(pauses, expected, strict=True)), pauses
    kinds = [m["kind"] for m in reports if m["kind"] != "probe"]
    assert kinds == ["thread_failed"] * (LIMIT - 1) + ["pipeline_failed"]  # each crash, none held back
    assert "RuntimeError: source bug on call 1" in reports[[m["kind"] for m in reports].index("thread_failed")]["error"]
    assert harness.fatal == [harness.pipeline.fatal_error]
    assert f"{LIMIT} crashes within" in harness.fatal[0]


def test_a_thread_that_crashes_now_and_then_is_restarted_and_keeps_running(tmp_path, context,
                                                                           fast_restarts) -> None:
    harness = Harness(tmp_path, context, FaultySource(failures=LIMIT - 2))
    try:
        harness.pipeline.start()
        assert wait_for(lambda: len(harness.source.calls) > LIMIT + 5, timeout_s=60)
    finally:
        harness.close()
    assert harness.fatal == [] and harness.pipeline.fatal_error is None
    assert harness.pipeline.last_error.startswith("thread acquire-faulty failed: RuntimeError")


_RESTART_LINE = re.compile(r'^ts=(\S+) level=ERROR .*msg="pipeline thread analyse-0 failed \(crash (\d+) of \d+ '
                           r'allowed within \d+ s\); restarting it in ([\d.]+) s"')


@pytest.mark.slow
def test_the_daemon_exits_non_zero_when_a_worker_raises_on_every_frame(tmp_path) -> None:
    daemon = DaemonProcess(tmp_path, module="tests.daemon.crashing_daemon",
                           extra={"pipeline": {"shutdown_grace_s": 2.0}})
    daemon.start()
    context = zmq.Context()
    errors = context.socket(zmq.SUB)
    errors.setsockopt(zmq.SUBSCRIBE, b"error.e2e")
    errors.setsockopt(zmq.LINGER, 0)
    errors.connect(daemon.publish)
    received: list[dict] = []
    try:
        time.sleep(0.5)  # PUB slow joiner
        for index in range(pipeline_module.THREAD_CRASH_LIMIT + 3):
            (daemon.inbox / f"frame_{index:02d}.png").write_bytes(b"any bytes: analysis fails before decoding")
        deadline = time.monotonic() + 300
        while daemon.proc.poll() is None and time.monotonic() < deadline:
            if errors.poll(200):
                received.append(decode(errors.recv_multipart()[1]))
        while errors.poll(500):
            received.append(decode(errors.recv_multipart()[1]))
        code = daemon.proc.wait(timeout=60)
        daemon.log.close()
    finally:
        if daemon.proc.poll() is None:
            daemon.kill()
        errors.close()
        context.term()
    log = daemon.log_path.read_text(encoding="utf-8")
    assert code == 1, log[-4000:]
    restarts = [_RESTART_LINE.match(line) for line in log.splitlines()]
    restarts = [(_timestamp(m[0]), int(m[2]), float(m[3])) for m in restarts if m]
    limit = pipeline_module.THREAD_CRASH_LIMIT
    assert [crash for _, crash, _ in restarts] == list(range(1, limit))
    delays = [delay for _, _, delay in restarts]
    assert delays == [min(pipeline_module.THREAD_RESTART_FIRST_S * 2**k, pipeline_module.THREAD_RESTART_MAX_S)
                      for k in range(limit - 1)]
    gave_up_at = [_timestamp(line) for line in log.splitlines() if "level=CRITICAL logger=inspectd.daemon.pipeline" in line]
    assert len(gave_up_at) == 1
    crash_times = [at for at, _, _ in restarts] + gave_up_at
    for announced_at, next_at, delay in zip(crash_times[:-1], crash_times[1:], delays, strict=True):
        assert (next_at - announced_at).total_seconds() >= 0.9 * delay  # it did wait before restarting
    assert "level=CRITICAL" in log and "stopping the daemon" in log and FAULT in log
    kinds = [message["kind"] for message in received]
    assert kinds.count("thread_failed") == limit - 1 and kinds.count("pipeline_failed") == 1, kinds


def _timestamp(log_line: str) -> datetime:
    return datetime.fromisoformat(log_line.split(" ", 1)[0].removeprefix("ts=").replace("Z", "+00:00"))
