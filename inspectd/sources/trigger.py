"""Triggers for the camera sources: a ZeroMQ REP socket that takes `{"part_id": ...}`.

`TriggerServer` (loopback by default) answers each trigger message at once with
`{"ok": true, "trigger_id": "..."}` (or `{"ok": false, "error": "..."}` when the message is
bad or too many triggers are pending); the camera loop (`inspectd.sources.camera`) takes
the accepted triggers in order. REP rather than PULL, so a PLC bridge knows the trigger
arrived (and hears "busy" instead of nothing). A trigger that gets no frame becomes a
`no_inspection_item`: never silence.

Example, a trigger round trip (the `client` is what a PLC bridge runs)::

    >>> import json, zmq
    >>> server = TriggerServer("tcp://127.0.0.1:*", source_id="cam0")
    >>> server.start()
    >>> client = zmq.Context.instance().socket(zmq.REQ)
    >>> _ = client.connect(server.bound_endpoint)
    >>> client.send_json({"part_id": "A-17"})
    >>> reply = client.recv_json(); reply["ok"], server.next(timeout_s=1.0).part_id
    (True, 'A-17')
    >>> client.close(0); server.stop()
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import zmq

from inspectd.errors import SourceConnectionError
from inspectd.sources.base import (
    SourceItem,
)
from inspectd.types import VerdictResult

logger = logging.getLogger(__name__)

DEFAULT_TRIGGER_ENDPOINT = "tcp://127.0.0.1:5560"


@dataclass(frozen=True)
class Trigger:
    """One accepted trigger message; `fields` keeps everything the sender put besides part_id."""

    trigger_id: str
    part_id: str
    received_time: datetime
    received_monotonic: float
    fields: Mapping[str, Any] = field(default_factory=dict)


class TriggerServer:
    """A REP socket that queues trigger messages for one camera source.

    Requests are JSON objects with a non-empty string `part_id`; the reply is
    `{"ok": true, "trigger_id": ..., "part_id": ..., "pending": n}` once queued, else
    `{"ok": false, "error": ...}` (bad JSON, no part_id, `max_pending` triggers waiting, or
    intake closed because the source stopped/ended). The reply only confirms receipt;
    the outcome (verdict or NO_INSPECTION) follows through the pipeline, carrying the
    part_id and `metadata["trigger_id"]`. The socket lives in its own thread.
    """

    def __init__(
        self,
        endpoint: str = DEFAULT_TRIGGER_ENDPOINT,
        *,
        source_id: str = "camera",
        max_pending: int = 64,
        context: zmq.Context | None = None,
        poll_interval_s: float = 0.05,
    ) -> None:
        if max_pending < 1:
            msg = f"max_pending must be >= 1, got {max_pending}"
            raise ValueError(msg)
        self.endpoint = endpoint
        self.source_id = source_id
        self.max_pending = max_pending
        self._context = context
        self._poll_ms = max(1, int(poll_interval_s * 1000))
        self._queue: queue.Queue[Trigger] = queue.Queue()
        self._lock = threading.Lock()
        self._closed_reason: str | None = None
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._bind_error: str | None = None
        self.bound_endpoint: str | None = None
        self.received = 0
        self.refused = 0

    def start(self) -> None:
        """Bind (in the server thread) and return once listening; bind errors raise here."""
        with self._lock:
            self._closed_reason = None  # (re)open intake, also for a restarted source
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._ready.clear()
        self._bind_error = None
        self._thread = threading.Thread(
            target=self._serve, name=f"trigger-{self.source_id}", daemon=True
        )
        self._thread.start()
        self._ready.wait(10.0)
        if self._bind_error is not None:
            self._thread.join(1.0)
            self._thread = None
            msg = f"{self.source_id}: cannot bind trigger endpoint {self.endpoint}: {self._bind_error}"
            raise SourceConnectionError(msg)

    def stop(self, timeout_s: float = 2.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    def close_intake(self, reason: str) -> None:
        """Answer every further request `{"ok": false, "error": reason}` (source stopped)."""
        with self._lock:
            self._closed_reason = reason

    def next(self, timeout_s: float = 0.0) -> Trigger | None:
        """The oldest pending trigger, or None if none arrives within `timeout_s`."""
        try:
            if timeout_s <= 0:
                return self._queue.get_nowait()
            return self._queue.get(timeout=timeout_s)
        except queue.Empty:
            return None

    def drain(self) -> list[Trigger]:
        """Take every pending trigger (to answer them NO_INSPECTION on stop)."""
        taken: list[Trigger] = []
        while True:
            trig = self.next()
            if trig is None:
                return taken
            taken.append(trig)

    def pending(self) -> int:
        return self._queue.qsize()

    def _serve(self) -> None:
        context = self._context or zmq.Context.instance()
        sock = context.socket(zmq.REP)
        sock.setsockopt(zmq.LINGER, 0)
        try:
            sock.bind(self.endpoint)
            self.bound_endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        except zmq.ZMQError as exc:
            self._bind_error = str(exc)
            sock.close(0)
            self._ready.set()
            return
        self._ready.set()
        logger.info("source %s: trigger endpoint %s", self.source_id, self.bound_endpoint)
        try:
            while not self._stop.is_set():
                if not sock.poll(self._poll_ms, zmq.POLLIN):
                    continue
                request = sock.recv()
                reply = self._handle(request)
                sock.send(json.dumps(reply).encode("utf-8"))
        except zmq.ZMQError as exc:
            logger.error("source %s: trigger socket failed: %s", self.source_id, exc)
        finally:
            sock.close(0)

    def _handle(self, request: bytes) -> dict[str, Any]:
        received_monotonic = time.monotonic()
        received_time = datetime.now(timezone.utc)
        try:
            message = json.loads(request.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            return self._refuse(f"not a JSON object: {exc}")
        if not isinstance(message, dict):
            return self._refuse(f"not a JSON object: got {type(message).__name__}")
        part_id = message.get("part_id")
        if not isinstance(part_id, str) or not part_id.strip():
            return self._refuse("'part_id' (a non-empty string) is required")
        with self._lock:
            if self._closed_reason is not None:
                return self._refuse(self._closed_reason)
            if self._queue.qsize() >= self.max_pending:
                return self._refuse(f"busy: {self.max_pending} triggers already pending")
            trig = Trigger(
                trigger_id=uuid.uuid4().hex,
                part_id=part_id,
                received_time=received_time,
                received_monotonic=received_monotonic,
                fields={k: v for k, v in message.items() if k != "part_id"},
            )
            self._queue.put(trig)
            self.received += 1
            pending = self._queue.qsize()
        return {"ok": True, "trigger_id": trig.trigger_id, "part_id": part_id, "pending": pending}

    def _refuse(self, reason: str) -> dict[str, Any]:
        self.refused += 1
        logger.warning("source %s: trigger refused: %s", self.source_id, reason)
        return {"ok": False, "error": reason}


def no_inspection_item(
    source_id: str, camera_id: str, trig: Trigger, reason: str, detail: str
) -> SourceItem:
    """The explicit answer to a trigger that got no frame: an error item with the reason.

    >>> t = Trigger("t1", "A-17", datetime.now(timezone.utc), 0.0)
    >>> item = no_inspection_item("cam0", "cam0", t, "timeout", "no frame in 2.0 s")
    >>> item.error, item.part_id, item.metadata["no_inspection_reason"]
    ('NO_INSPECTION: timeout: no frame in 2.0 s', 'A-17', 'timeout')
    """
    return SourceItem(
        source_id=source_id,
        kind="camera",
        source=f"{camera_id}#trigger-{trig.trigger_id}",
        capture_time=trig.received_time,
        sha256="",
        part_id=trig.part_id,
        error=f"{VerdictResult.NO_INSPECTION.value}: {reason}: {detail}",
        metadata={
            "outcome": VerdictResult.NO_INSPECTION.value,
            "no_inspection_reason": reason,
            "trigger_id": trig.trigger_id,
            "trigger": dict(trig.fields),
        },
    )
