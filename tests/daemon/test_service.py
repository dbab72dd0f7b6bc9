"""sd_notify over a real unix datagram socket, and the stall-aware watchdog thread."""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from pathlib import Path

import pytest

from inspectd.daemon.service import Notifier, StallWatchdog, watchdog_interval_s
from tests.daemon.conftest import wait_for


class NotifyListener:
    """A bound AF_UNIX datagram socket standing in for systemd's NOTIFY_SOCKET."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        bind_to = "\0" + address[1:] if address.startswith("@") else address
        self.sock.bind(bind_to)
        self.sock.settimeout(0.05)
        self.messages: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.messages.append(data.decode())

    def snapshot(self) -> list[str]:
        with self._lock:
            return list(self.messages)

    def count(self, line: str) -> int:
        return sum(msg.splitlines().count(line) for msg in self.snapshot())

    def wait_for(self, predicate, timeout_s: float = 10.0) -> bool:
        return wait_for(predicate, timeout_s)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


@pytest.fixture
def listener(tmp_path: Path):
    lst = NotifyListener(str(tmp_path / "notify.sock"))
    yield lst
    lst.close()


def test_notifier_sends_state_lines(listener: NotifyListener) -> None:
    notifier = Notifier(environ={"NOTIFY_SOCKET": listener.address})
    assert notifier.enabled
    assert notifier.status("warming up:\n  numba JIT")
    assert notifier.ready()
    assert notifier.watchdog()
    assert notifier.reloading()
    assert notifier.stopping()
    assert listener.wait_for(lambda: len(listener.snapshot()) == 5)
    messages = listener.snapshot()
    assert messages[0] == "STATUS=warming up: numba JIT"  # one line, whatever the input
    assert messages[1] == "READY=1"
    assert messages[2] == "WATCHDOG=1"
    assert messages[3].splitlines()[0] == "RELOADING=1"
    assert messages[3].splitlines()[1].startswith("MONOTONIC_USEC=")
    assert messages[4] == "STOPPING=1"
    notifier.close()


def test_notifier_abstract_namespace_socket() -> None:
    address = f"@inspectd-test-{uuid.uuid4().hex}"
    lst = NotifyListener(address)
    try:
        notifier = Notifier(address)
        assert notifier.ready("ready, 2 sources")
        assert lst.wait_for(lambda: lst.snapshot() == ["READY=1\nSTATUS=ready, 2 sources"])
    finally:
        lst.close()


def test_notifier_without_socket_is_a_no_op() -> None:
    notifier = Notifier(environ={})
    assert not notifier.enabled
    assert notifier.ready() is False
    assert notifier.watchdog() is False


def test_notifier_survives_a_vanished_socket(tmp_path: Path) -> None:
    notifier = Notifier(str(tmp_path / "gone.sock"))
    assert notifier.watchdog() is False  # logged, not raised
    assert notifier.watchdog() is False


def test_watchdog_interval_from_environment() -> None:
    assert watchdog_interval_s({"WATCHDOG_USEC": "2000000"}) == 2.0
    assert (
        watchdog_interval_s({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}) == 2.0
    )
    assert watchdog_interval_s({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "junk"}) is None
    assert watchdog_interval_s({}) is None


def test_stall_watchdog_withholds_pings_while_stuck_and_resumes(listener: NotifyListener) -> None:
    notifier = Notifier(listener.address)
    frames_done = [0]
    busy = [True]
    stalls: list[str] = []
    dog = StallWatchdog(
        notifier,
        progress=lambda: frames_done[0],
        busy=lambda: busy[0],
        stall_after_s=0.3,
        watchdog_usec=100_000,  # pings every 50 ms while healthy
        describe=lambda: "segment stage busy since frame 7",
        on_stall=stalls.append,
    )
    assert dog.check_interval_s == pytest.approx(0.05)

    # Healthy while progress keeps coming with work pending.
    dog.start()
    try:
        deadline = time.monotonic() + 10
        while listener.count("WATCHDOG=1") < 5 and time.monotonic() < deadline:
            frames_done[0] += 1
            time.sleep(0.02)
        assert listener.count("WATCHDOG=1") >= 5

        # Work pending, no progress: pings stop once stall_after_s has passed.
        assert listener.wait_for(lambda: bool(stalls), timeout_s=10)
        assert dog.stalled and "segment stage busy since frame 7" in stalls[0]
        assert listener.wait_for(
            lambda: any(m.startswith("STATUS=STALLED") for m in listener.snapshot())
        )
        pings_when_stalled = dog.pings
        time.sleep(0.4)  # several check intervals
        assert dog.pings == pings_when_stalled
        assert len(stalls) == 1  # reported once, not every check
        # Every ping the watchdog counted did reach the socket, and no other.
        assert listener.wait_for(lambda: listener.count("WATCHDOG=1") == pings_when_stalled)

        # Progress returns: pings resume.
        deadline = time.monotonic() + 10
        while (
            listener.count("WATCHDOG=1") <= pings_when_stalled + 2 and time.monotonic() < deadline
        ):
            frames_done[0] += 1
            time.sleep(0.02)
        assert listener.count("WATCHDOG=1") > pings_when_stalled + 2
        assert not dog.stalled
    finally:
        dog.stop()


def test_idle_pipeline_stays_healthy(listener: NotifyListener) -> None:
    """No work pending = healthy, even though nothing has progressed for a long time."""
    dog = StallWatchdog(
        Notifier(listener.address),
        progress=lambda: 0,
        busy=lambda: False,
        stall_after_s=0.05,
        check_interval_s=0.02,
    )
    with dog:
        assert listener.wait_for(lambda: listener.count("WATCHDOG=1") >= 5)
    assert not dog.stalled
    assert dog.stalls == 0


def test_failing_probe_counts_as_stuck() -> None:
    def broken() -> int:
        msg = "stage table locked"
        raise RuntimeError(msg)

    dog = StallWatchdog(
        Notifier(environ={}),
        progress=broken,
        busy=lambda: True,
        stall_after_s=0.01,
        check_interval_s=0.01,
    )
    dog.check()
    time.sleep(0.03)
    assert dog.check() is False
    assert dog.stalled
