"""ZeroMQ PUB of verdicts, heartbeats, daemon errors and alarms: `[topic, json]` multipart messages.

A ZeroMQ socket is not thread-safe, and the pipeline must never wait for a subscriber: so one
private I/O thread owns the PUB socket, and `publish_verdict` / `publish_error` only put the
encoded frames on an in-process queue. PUB drops messages for a slow or stalled subscriber at
the high-water mark without telling anyone; that is expected, consumers fill the gap by
replay from the journal. ZeroMQ transport heartbeats are on, so a frozen peer is disconnected
(and its queue freed) within seconds instead of holding memory until TCP gives up.

Example:
    >>> import zmq
    >>> publisher = Publisher("s1", ["tcp://127.0.0.1:*"], context=zmq.Context(), heartbeat_interval_s=0.1)
    >>> publisher.endpoints[0].startswith("tcp://127.0.0.1:")
    True
    >>> publisher.start()
    >>> publisher.publish_verdict({"seq": 1, "verdict": "PASS"})
    >>> publisher.flush(timeout_s=5.0)
    True
    >>> publisher.close()
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import zmq

from inspectd.errors import InspectdError
from inspectd.wire.message import build_heartbeat, encode, topic

if TYPE_CHECKING:
    from inspectd.wire.curve import CurveServer

logger = logging.getLogger(__name__)

DEFAULT_PUBLISH_ENDPOINT = "tcp://127.0.0.1:5556"
_STOP = object()


class EndpointBindError(InspectdError):
    """A ZeroMQ socket could not bind its endpoint (address in use, bad address, permissions)."""


def bind_all(socket: zmq.Socket, endpoints: Iterable[str]) -> list[str]:
    """Bind `socket` to every endpoint; return the resolved ones (a `*` port becomes a number).

    Example:
        >>> import zmq
        >>> sock = zmq.Context.instance().socket(zmq.PUB)
        >>> bind_all(sock, ["tcp://127.0.0.1:*"])[0].startswith("tcp://127.0.0.1:")
        True
        >>> sock.close(linger=0)
    """
    bound = []
    for endpoint in endpoints:
        try:
            socket.bind(endpoint)
        except zmq.ZMQError as exc:
            msg = f"cannot bind ZeroMQ endpoint {endpoint!r}: {exc}"
            raise EndpointBindError(msg) from exc
        bound.append(socket.getsockopt_string(zmq.LAST_ENDPOINT))
    return bound


def set_transport_heartbeats(socket: zmq.Socket, *, interval_ms: int, timeout_ms: int) -> None:
    """ZMTP PING every `interval_ms`; drop the peer when no traffic came for `timeout_ms`.

    TTL tells the remote side to time us out likewise if *we* freeze.

    Example:
        >>> import zmq
        >>> sock = zmq.Context.instance().socket(zmq.SUB)
        >>> set_transport_heartbeats(sock, interval_ms=1000, timeout_ms=3000)
        >>> sock.getsockopt(zmq.HEARTBEAT_TIMEOUT)
        3000
        >>> sock.close(linger=0)
    """
    socket.setsockopt(zmq.HEARTBEAT_IVL, int(interval_ms))
    socket.setsockopt(zmq.HEARTBEAT_TIMEOUT, int(timeout_ms))
    # TTL is sent in units of 100 ms by ZMTP and must be >= 100 ms.
    socket.setsockopt(zmq.HEARTBEAT_TTL, max(100, int(timeout_ms)))


class Publisher:
    """PUB socket bound to `bind_endpoints`, fed from any thread, never blocking the caller.

    `last_seq` returns the last journaled seq for heartbeats (e.g. `journal.last_seq`);
    without it the heartbeat carries the highest seq published so far. `epoch` is the
    journal's boot epoch. `sndhwm` is the per-subscriber queue, in messages, beyond which PUB
    drops. `linger_ms` is how long `close()` may still deliver queued frames.

    Example:
        >>> import zmq
        >>> with Publisher("s1", ["tcp://127.0.0.1:*"], context=zmq.Context()) as publisher:
        ...     publisher.publish_error({"error": "camera lost"})
    """

    def __init__(
        self,
        station: str,
        bind_endpoints: Sequence[str] = (DEFAULT_PUBLISH_ENDPOINT,),
        *,
        context: zmq.Context | None = None,
        heartbeat_interval_s: float = 1.0,
        sndhwm: int = 10_000,
        curve_server: CurveServer | None = None,
        epoch: int | None = None,
        last_seq: Callable[[], int] | None = None,
        zmq_heartbeat_ivl_ms: int = 1000,
        zmq_heartbeat_timeout_ms: int = 3000,
        linger_ms: int = 1000,
    ) -> None:
        if heartbeat_interval_s <= 0:
            msg = f"heartbeat_interval_s must be > 0, got {heartbeat_interval_s}"
            raise ValueError(msg)
        if not bind_endpoints:
            msg = "Publisher needs at least one bind endpoint"
            raise ValueError(msg)
        if curve_server is not None and context is None:
            context = curve_server.context
        self.station = station
        self.epoch = epoch
        self.heartbeat_interval_s = float(heartbeat_interval_s)
        self._last_seq_fn = last_seq
        self._context = context or zmq.Context.instance()
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._counts_lock = threading.Condition()
        self._queued = 0
        self._handled = 0
        self.sent_count = 0  # verdicts and errors handed to ZeroMQ (PUB may still drop them)
        self.heartbeat_count = 0
        self.failed_count = 0
        self._highest_seq = 0
        self._verdict_topic = topic("verdict", station)
        self._error_topic = topic("error", station)
        self._heartbeat_topic = topic("heartbeat", station)
        self._alarm_topic = topic("alarm", station)

        socket = self._context.socket(zmq.PUB)
        try:
            socket.setsockopt(zmq.SNDHWM, int(sndhwm))
            socket.setsockopt(zmq.LINGER, int(linger_ms))
            set_transport_heartbeats(socket, interval_ms=zmq_heartbeat_ivl_ms, timeout_ms=zmq_heartbeat_timeout_ms)
            if curve_server is not None:
                curve_server.apply(socket)
            self.endpoints = bind_all(socket, bind_endpoints)
        except BaseException:
            socket.close(linger=0)
            raise
        # From start() on, only the I/O thread touches the socket (thread start is the
        # memory barrier ZeroMQ asks for when a socket changes threads).
        self._socket = socket
        logger.info("publishing %s on %s", station, ", ".join(self.endpoints))

    def __enter__(self) -> Publisher:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def start(self) -> None:
        """Start the I/O thread: queued messages go out, heartbeats begin (the first at once)."""
        if self._thread is not None:
            return
        if self._closed:
            msg = "Publisher is closed"
            raise RuntimeError(msg)
        self._thread = threading.Thread(target=self._run, name=f"publish-{self.station}", daemon=True)
        self._thread.start()

    def publish_verdict(self, message: Mapping[str, Any]) -> None:
        """Queue a journaled verdict on `verdict.<station>`; returns at once, never blocks."""
        seq = message.get("seq")
        if isinstance(seq, int) and seq > self._highest_seq:
            self._highest_seq = seq
        self._enqueue(self._verdict_topic, encode(message))

    def publish_error(self, message_dict: Mapping[str, Any]) -> None:
        """Queue a daemon-level error (see `message.build_error_message`) on `error.<station>`."""
        self._enqueue(self._error_topic, encode(message_dict))

    def publish_alarm(self, message_dict: Mapping[str, Any]) -> None:
        """Queue a control-chart alarm (see `message.build_alarm_message`) on `alarm.<station>`."""
        self._enqueue(self._alarm_topic, encode(message_dict))

    def flush(self, timeout_s: float = 5.0) -> bool:
        """Wait until every queued message was handed to ZeroMQ; False on timeout.

        Handed over is not delivered: PUB may still drop it for a slow subscriber.
        """
        deadline = time.monotonic() + timeout_s
        with self._counts_lock:
            while self._handled < self._queued:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._thread is None or not self._thread.is_alive():
                    return False
                self._counts_lock.wait(remaining)
        return True

    def close(self, timeout_s: float = 5.0) -> None:
        """Send what is queued, stop the I/O thread, close the socket (after `linger_ms`)."""
        if self._closed:
            return
        self._closed = True
        if self._thread is None:
            self._socket.close(linger=0)
            return
        self._queue.put(_STOP)
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            logger.warning("publisher I/O thread did not stop within %.1f s", timeout_s)

    # -- the I/O thread ----------------------------------------------------------------------

    def _enqueue(self, topic_bytes: bytes, payload: bytes) -> None:
        if self._closed:
            msg = "Publisher is closed"
            raise RuntimeError(msg)
        with self._counts_lock:
            self._queued += 1
        self._queue.put((topic_bytes, payload))

    def _run(self) -> None:
        next_heartbeat = time.monotonic()
        try:
            while True:
                now = time.monotonic()
                if now >= next_heartbeat:
                    self._send_heartbeat()
                    # Skip missed beats after a stall instead of sending a burst.
                    next_heartbeat = max(next_heartbeat + self.heartbeat_interval_s, now)
                try:
                    item = self._queue.get(timeout=max(0.0, next_heartbeat - time.monotonic()))
                except queue.Empty:
                    continue
                if item is _STOP:
                    break
                if self._send(*item):
                    self.sent_count += 1
                with self._counts_lock:
                    self._handled += 1
                    self._counts_lock.notify_all()
        except Exception:  # never let the thread die silently
            logger.exception("publisher I/O thread failed")
        finally:
            self._socket.close()

    def _send(self, topic_bytes: bytes, payload: bytes) -> bool:
        try:
            # NOBLOCK: PUB drops at the HWM rather than blocking, but make sure of it.
            self._socket.send_multipart([topic_bytes, payload], flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:
            self.failed_count += 1
            return False
        except zmq.ZMQError as exc:
            self.failed_count += 1
            logger.warning("publish on %s failed: %s", topic_bytes.decode(), exc)
            return False
        return True

    def _send_heartbeat(self) -> None:
        try:
            last_seq = self._last_seq_fn() if self._last_seq_fn is not None else self._highest_seq
        except Exception as exc:  # journal closed during shutdown: skip this beat
            logger.debug("heartbeat skipped, last_seq unavailable: %s", exc)
            return
        beat = build_heartbeat(station=self.station, epoch=self.epoch, last_seq=last_seq)
        if self._send(self._heartbeat_topic, encode(beat)):
            self.heartbeat_count += 1
