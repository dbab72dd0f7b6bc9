"""Prometheus metrics of the daemon, on a registry passed in (tests use a fresh one).

Example:
    >>> from prometheus_client import CollectorRegistry
    >>> metrics = DaemonMetrics(CollectorRegistry())
    >>> metrics.verdicts.labels(result="PASS").inc()
"""

from __future__ import annotations

import logging
import socket
import sys
import threading
import time
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app

logger = logging.getLogger(__name__)

# Stage latencies span ~1 ms (verdict) to seconds (a U-Net on a big frame).
LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

# The exporter answers one request per connection (HTTP/1.0, then close), and a scraper
# sends its request at once and reads a few kilobytes: a handful of connections at a time
# is plenty, each done in milliseconds. The limits keep an idle or trickling client from
# holding a thread for long, and many of them from holding many threads.
METRICS_MAX_CONNECTIONS = 8
METRICS_IDLE_TIMEOUT_S = 5.0  # the longest wait for one read or write on a connection
METRICS_CONNECTION_DEADLINE_S = 15.0  # the longest a connection stays open, however it trickles


class DaemonMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.frames = Counter("inspectd_frames", "Frames (fields) analysed or refused", ["source"], registry=registry)
        self.verdicts = Counter("inspectd_verdicts", "Verdicts published, by result", ["result"], registry=registry)
        self.stage_latency = Histogram(
            "inspectd_stage_latency_seconds", "Time spent in each pipeline stage", ["stage"],
            buckets=LATENCY_BUCKETS_S, registry=registry,
        )
        self.capture_to_publish = Histogram(
            "inspectd_capture_to_publish_seconds", "From capture (or file arrival) to publish",
            buckets=LATENCY_BUCKETS_S, registry=registry,
        )
        self.queue_depth = Gauge("inspectd_queue_depth", "Items waiting in a pipeline queue", ["queue"],
                                 registry=registry)
        self.drops = Gauge("inspectd_source_drops", "Frames a source dropped (free-run, pipeline behind)",
                           ["source"], registry=registry)
        self.source_errors = Counter("inspectd_source_errors", "Source problems (status events of WARNING or "
                                     "worse)", ["source"], registry=registry)
        self.daemon_errors = Counter("inspectd_daemon_errors", "Daemon-level problems reported on error.<station> "
                                     "(also those held back as repeats), by kind", ["kind"], registry=registry)
        self.ready = Gauge("inspectd_ready", "1 once warm-up is done and sources run", registry=registry)
        # Back-pressure on a journal that refuses writes (disk full, read-only, I/O error, replaced).
        self.journal_writable = Gauge("inspectd_journal_writable", "1 while verdicts can be written to the "
                                      "journal, 0 while writes fail (input is paused meanwhile)", registry=registry)
        self.input_paused = Gauge("inspectd_input_paused", "1 while the pipeline takes no input because the "
                                  "journal refuses writes", registry=registry)
        self.items_held = Gauge("inspectd_items_held", "Items taken from the sources whose verdicts are not "
                                "journaled yet (at most pipeline.queue_size + 2 x workers)", registry=registry)
        self.journal_write_failures = Counter("inspectd_journal_write_failures", "Attempts to write a verdict "
                                              "to the journal that failed (each is retried)", registry=registry)
        self.journal_writable.set(1)

    def serve(self, host: str, port: int, *, max_connections: int = METRICS_MAX_CONNECTIONS,
              idle_timeout_s: float = METRICS_IDLE_TIMEOUT_S,
              deadline_s: float = METRICS_CONNECTION_DEADLINE_S) -> tuple[BoundedMetricsServer, int]:
        """Start the HTTP exporter (`BoundedMetricsServer`) in a daemon thread; returns
        (server, bound port). Stop it with `server.shutdown()` then `server.server_close()`."""
        server = BoundedMetricsServer((host, port), make_wsgi_app(self.registry), max_connections=max_connections,
                                      idle_timeout_s=idle_timeout_s, deadline_s=deadline_s)
        threading.Thread(target=server.serve_forever, name="inspectd-metrics", daemon=True).start()
        return server, server.server_port


class _QuietHandler(WSGIRequestHandler):
    """One request per connection; a scrape is not worth a log line."""

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        pass


class BoundedMetricsServer(WSGIServer):
    """A WSGI server with a thread per connection, but at most `max_connections` of them.

    prometheus_client's own server starts a thread per connection with no timeout, so idle
    connections pile up threads without end. Here a connection past the limit is answered
    503 and closed at once; every read or write waits at most `idle_timeout_s`; and a
    connection still open `deadline_s` after it was accepted (a client trickling its request
    a byte at a time) is shut down by one reaper thread. Threads: the accept loop, the
    reaper and at most `max_connections` handlers, whatever clients do.

    Example:
        >>> from prometheus_client import CollectorRegistry
        >>> server, port = DaemonMetrics(CollectorRegistry()).serve("127.0.0.1", 0)
        >>> import urllib.request
        >>> b"inspectd_ready" in urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read()
        True
        >>> server.shutdown(); server.server_close()
    """

    # Connections waiting in the kernel to be accepted (socketserver's default is 5): accepting
    # is quick, and a short queue would make a scraper's SYN wait for a retry behind a burst.
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], app: object, *, max_connections: int,
                 idle_timeout_s: float, deadline_s: float) -> None:
        host, port = address
        family, _, _, _, sockaddr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                       flags=socket.AI_PASSIVE)[0]
        self.address_family = family  # read by the base class when it creates the socket
        self.max_connections = int(max_connections)
        self.idle_timeout_s = float(idle_timeout_s)
        self.deadline_s = float(deadline_s)
        self.refused_count = 0
        self._slots = threading.BoundedSemaphore(self.max_connections)
        self._open: dict[socket.socket, float] = {}  # connection -> monotonic deadline
        self._open_lock = threading.Lock()
        self._closed = threading.Event()
        super().__init__((sockaddr[0], port), _QuietHandler)
        self.set_app(app)
        self._reaper = threading.Thread(target=self._reap, name="inspectd-metrics-reaper", daemon=True)
        self._reaper.start()

    def open_connections(self) -> int:
        with self._open_lock:
            return len(self._open)

    def process_request(self, request: socket.socket, client_address: object) -> None:
        if not self._slots.acquire(blocking=False):
            self.refused_count += 1
            _refuse(request)
            self.shutdown_request(request)
            return
        request.settimeout(self.idle_timeout_s)
        with self._open_lock:
            self._open[request] = time.monotonic() + self.deadline_s
        try:
            threading.Thread(target=self._serve_connection, args=(request, client_address),
                             name="inspectd-metrics-connection", daemon=True).start()
        except BaseException:
            self._release(request)
            raise

    def handle_error(self, request: object, client_address: object) -> None:
        # Timeouts and resets are what the limits are for; a traceback on stderr would only
        # let a client fill the log.
        logger.debug("metrics connection from %s ended: %s", client_address, _current_error())

    def server_close(self) -> None:
        self._closed.set()
        super().server_close()
        with self._open_lock:
            connections = list(self._open)
        for connection in connections:
            _shut(connection)

    def _serve_connection(self, request: socket.socket, client_address: object) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:  # noqa: BLE001 - a failed request ends its connection, nothing more
            self.handle_error(request, client_address)
        finally:
            self._release(request)

    def _release(self, request: socket.socket) -> None:
        with self._open_lock:
            self._open.pop(request, None)
        self.shutdown_request(request)
        self._slots.release()

    def _reap(self) -> None:
        interval_s = min(1.0, self.deadline_s / 4)
        while not self._closed.wait(interval_s):
            now = time.monotonic()
            with self._open_lock:
                overdue = [connection for connection, deadline in self._open.items() if deadline <= now]
            for connection in overdue:
                _shut(connection)  # its handler's blocked read or write returns; the handler ends


def _refuse(connection: socket.socket) -> None:
    """A best-effort 503 on a connection over the limit, without waiting for the client."""
    try:
        connection.setblocking(False)
        connection.send(b"HTTP/1.0 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Length: 0\r\n"
                        b"Connection: close\r\n\r\n")
    except OSError:
        pass


def _shut(connection: socket.socket) -> None:
    try:
        connection.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # closed meanwhile


def _current_error() -> str:
    error = sys.exc_info()[1]
    return "unknown error" if error is None else f"{type(error).__name__}: {error}"
