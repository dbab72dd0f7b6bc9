"""The metrics endpoint under idle and trickling clients: bounded threads, scrapes still answered.

Real sockets on 127.0.0.1 against the real exporter (and, for the regression, the real daemon).
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator

import pytest
from prometheus_client import CollectorRegistry

from inspectd.daemon.metrics import METRICS_MAX_CONNECTIONS, BoundedMetricsServer, DaemonMetrics
from tests.daemon.conftest import wait_for
from tests.daemon.daemon_process import DaemonProcess

CONNECTION_THREAD = "inspectd-metrics-connection"


@pytest.fixture
def exporter() -> Iterator[tuple[BoundedMetricsServer, int]]:
    metrics = DaemonMetrics(CollectorRegistry())
    metrics.ready.set(1)
    server, port = metrics.serve("127.0.0.1", 0, max_connections=4, idle_timeout_s=1.0, deadline_s=3.0)
    yield server, port
    server.shutdown()
    server.server_close()


def _scrape(port: int) -> bytes | None:
    """The metrics page, or None while the exporter refuses or resets the connection."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
            return answer.read()
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return None


def _connect_idle(port: int, count: int) -> list[socket.socket]:
    clients = []
    for _ in range(count):
        client = socket.create_connection(("127.0.0.1", port), timeout=10)
        clients.append(client)
    return clients


def _connection_threads() -> int:
    return sum(thread.name == CONNECTION_THREAD for thread in threading.enumerate())


def _closed_by_peer(client: socket.socket) -> bool:
    client.setblocking(False)
    try:
        return client.recv(4096) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True  # reset


class _Sampler:
    """Samples `count()` in a thread until stopped; keeps the largest value seen."""

    def __init__(self, count: Callable[[], int]) -> None:
        self.count = count
        self.most = count()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.most = max(self.most, self.count())

    def __enter__(self) -> _Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()


def test_a_scrape_answers_and_leaves_no_thread_behind(exporter) -> None:
    server, port = exporter
    for _ in range(30):
        page = _scrape(port)
        assert page is not None and b"inspectd_ready 1.0" in page
    assert wait_for(lambda: server.open_connections() == 0 and _connection_threads() == 0)


def test_400_idle_connections_hold_at_most_the_limit_of_threads(exporter) -> None:
    server, port = exporter
    with _Sampler(_connection_threads) as threads:
        clients = _connect_idle(port, 400)
        try:
            # Idle connections beyond the limit are answered and closed at once; those
            # admitted are closed by the idle timeout; then a scrape is answered again.
            assert wait_for(lambda: sum(_closed_by_peer(c) for c in clients) == len(clients), timeout_s=120)
            assert wait_for(lambda: _scrape(port) is not None, timeout_s=120)
        finally:
            for client in clients:
                client.close()
    assert threads.most <= server.max_connections
    assert server.refused_count > 0


def test_slow_partial_requests_are_cut_off_at_the_deadline(exporter) -> None:
    server, port = exporter
    clients = _connect_idle(port, server.max_connections)
    stop = threading.Event()

    def trickle() -> None:
        # One header byte per client every 0.2 s: well inside the idle timeout, never done.
        for client in clients:
            with contextlib.suppress(OSError):
                client.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        while not stop.wait(0.2):
            for client in clients:
                with contextlib.suppress(OSError):
                    client.sendall(b"X")

    trickler = threading.Thread(target=trickle, daemon=True)
    with _Sampler(_connection_threads) as threads:
        trickler.start()
        try:
            assert wait_for(lambda: all(_closed_by_peer(c) for c in clients), timeout_s=120)
            assert wait_for(lambda: _scrape(port) is not None, timeout_s=120)
        finally:
            stop.set()
            trickler.join()
            for client in clients:
                client.close()
    assert threads.most <= server.max_connections


def _task_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads through /proc")
def test_the_daemon_keeps_its_thread_count_under_idle_and_trickling_connections(tmp_path) -> None:
    daemon = DaemonProcess(tmp_path).start()
    clients: list[socket.socket] = []
    stop = threading.Event()
    try:
        port = daemon.status()["metrics_port"]
        assert _scrape(port) is not None
        baseline = _task_count(daemon.proc.pid)
        with _Sampler(lambda: _task_count(daemon.proc.pid)) as threads:
            clients = _connect_idle(port, 400)
            slow = _connect_idle(port, 20)
            for client in slow:
                with contextlib.suppress(OSError):  # refused at once when all slots are taken
                    client.sendall(b"GET /metrics HTTP/1.1\r\n")

            def trickle() -> None:  # a header line a second: a request that never ends
                while not stop.wait(1.0):
                    for client in slow:
                        with contextlib.suppress(OSError):
                            client.sendall(b"X-Slow: 1\r\n")

            trickler = threading.Thread(target=trickle, daemon=True)
            trickler.start()
            clients += slow
            assert wait_for(lambda: _scrape(port) is not None, timeout_s=180, interval_s=0.5)
            stop.set()
            trickler.join()
        assert daemon.status()["ready"]
    finally:
        stop.set()
        for client in clients:
            client.close()
        exit_code = daemon.terminate()
    assert exit_code == 0
    # The accept loop and the reaper run already at the baseline; connections add at most the limit.
    assert threads.most <= baseline + METRICS_MAX_CONNECTIONS + 2, (baseline, threads.most)
