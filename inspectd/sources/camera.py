"""Camera acquisition shared by the OpenCV and Aravis sources: free-run or triggered.

Two modes, one loop (`CameraSource`), so both camera backends behave the same way:

* `free_run`: frames flow as fast as the camera delivers them, capped at `fps_cap`. The
  buffer drops the OLDEST queued frame when the pipeline falls behind (counted in `drops`).
* `triggered`: a ZeroMQ REP socket (`TriggerServer`, loopback by default) takes trigger
  messages `{"part_id": "A-17", ...}` and answers at once `{"ok": true, "trigger_id":
  "..."}` (or `{"ok": false, "error": "..."}` when the message is bad or too many triggers
  are pending). The loop then grabs one frame (a software trigger on GenICam cameras,
  the next frame on OpenCV) and the item carries the trigger's `part_id`. Every accepted
  trigger yields exactly one item: the frame, or an explicit NO_INSPECTION item (no
  pixels, `error="NO_INSPECTION: <reason>: ..."`, `metadata["outcome"] ==
  "NO_INSPECTION"`, `metadata["no_inspection_reason"]` one of `timeout`, `camera_lost`,
  `incomplete_frame`, `ended`, `stopping`). Triggered mode never drops items: an
  accepted trigger is a promise. REP rather than PULL, so a PLC bridge knows the trigger
  arrived (and hears "busy" instead of nothing).

Cameras disappear: a lost connection (backend error, `lost_after_timeouts` frame timeouts
in a row, a GigE control-lost signal) closes the device and reconnects with exponential
backoff (`reconnect_initial_s` doubling up to `reconnect_max_s`), emitting `camera_lost`,
`connect_failed` and `reconnected` status events and counting `camera_lost`,
`reconnects`, `frame_timeouts`.

Backends subclass `CameraSource` and implement `_open`, `_close`, `_read` (and may
override `_trigger_and_read`, `_idle`, `_lost`, `_backend_stats`). The loop runs in one
thread, which is the only one touching the device.
"""

from __future__ import annotations

import abc
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator

from inspectd.clients.backoff import Backoff
from inspectd.config import StrictModel, ZmqEndpoint
from inspectd.errors import ConfigError, SourceConnectionError
from inspectd.sources.base import (
    FrameSource,
    Severity,
    SourceContext,
    SourceItem,
    SourceState,
    SourceStateError,
)
from inspectd.sources.trigger import (
    DEFAULT_TRIGGER_ENDPOINT,
    Trigger,
    TriggerServer,
    no_inspection_item,
)

logger = logging.getLogger(__name__)

CameraMode = Literal["free_run", "triggered"]


class CameraSourceFields(StrictModel):
    """The config fields every camera source shares (its section adds `kind` and its own)."""

    id: str = Field("camera", pattern=r"^[A-Za-z0-9_.-]+$", description="Source id in verdicts and status.")
    mode: CameraMode = Field("free_run", description="free_run (fps-capped) or triggered.")
    fps_cap: float | None = Field(None, gt=0.0, le=10_000.0, description="Most frames per second handed on in free-run.")
    frame_timeout_s: float = Field(2.0, ge=0.01, le=3600.0, description="Longest wait for one frame.")
    lost_after_timeouts: int = Field(3, ge=1, le=10_000, description="Frame timeouts in a row that count as camera lost.")
    trigger_retries: int = Field(1, ge=0, le=10, description="Triggered: trigger again this many times when no complete "
                                 "frame came; frame_timeout_s is shared out evenly between the tries.")
    trigger_endpoint: ZmqEndpoint = Field(DEFAULT_TRIGGER_ENDPOINT, description="ZeroMQ REP endpoint for trigger "
                                          "messages (bound in triggered mode).")
    max_pending_triggers: int = Field(64, ge=1, le=100_000, description="Triggers queued beyond this are refused.")
    reconnect_initial_s: float = Field(0.5, ge=0.01, le=3600.0, description="First reconnect back-off, seconds.")
    reconnect_max_s: float = Field(30.0, ge=0.01, le=3600.0, description="Longest reconnect back-off, seconds.")
    buffer_size: int = Field(4, ge=1, le=1000, description="Frames queued; free-run drops the OLDEST beyond it.")

    @model_validator(mode="after")
    def _verify_backoff(self) -> CameraSourceFields:
        if self.reconnect_initial_s > self.reconnect_max_s:
            msg = (f"reconnect_initial_s ({self.reconnect_initial_s}) must not exceed reconnect_max_s "
                   f"({self.reconnect_max_s})")
            raise ValueError(msg)
        return self


class EndOfStream(Exception):  # noqa: N818 - a signal between backend and loop, not a failure
    """Raised by a backend's `_read` when a finite stream (a video file) has no more frames."""


@dataclass(frozen=True)
class Grab:
    """One frame a backend read: grey pixels plus backend details for `SourceItem.metadata`."""

    pixels: np.ndarray
    capture_time: datetime
    metadata: Mapping[str, Any] = field(default_factory=dict)


_CAMERA_COUNTERS = (
    "frames",
    "frame_timeouts",
    "camera_lost",
    "connect_attempts",
    "skipped_fps_cap",
    "triggers",
    "retriggers",
    "no_inspections",
    "no_inspections_undelivered",
)


class CameraSource(FrameSource):
    """The acquisition loop every camera backend shares (see the module docstring).

    Its settings are a `CameraSourceFields` section (a backend's section extends it), where
    each one's default and range live:
      mode: "free_run" | "triggered".
      fps_cap: most frames per second handed on in free-run (None = as delivered).
      frame_timeout_s: longest wait for one frame (free-run read, or after a trigger).
      lost_after_timeouts: this many frame timeouts in a row = camera lost -> reconnect.
      trigger_retries: triggered mode: trigger again this many times when no complete frame
        came (a frame or trigger packet lost on the wire; the part is still in position,
        since the line waits for its verdict); `frame_timeout_s` is shared out evenly.
      trigger_endpoint: ZeroMQ REP bind address for triggers (loopback by default).
      max_pending_triggers: triggers queued beyond this are refused in the REP reply.
      reconnect_initial_s / reconnect_max_s: exponential reconnect backoff.
      buffer_size: frames queued for the pipeline (free-run drops the oldest beyond it).
    The constructor adds what only exists at run time: the `SourceContext` (status callback,
    the ZeroMQ context the trigger socket binds on), the `camera_id` a backend names its
    device by, and `start_wait_s`, how long `start()` waits for the first connection attempt.
    """

    KEY = ""

    def __init__(
        self,
        settings: CameraSourceFields,
        context: SourceContext | None = None,
        *,
        camera_id: str,
        start_wait_s: float = 5.0,
    ) -> None:
        context = context or SourceContext()
        # Free-run keeps the freshest frames; triggered never drops (each trigger is owed one).
        super().__init__(
            settings.id,
            buffer_size=settings.buffer_size,
            drop_oldest=(settings.mode == "free_run"),
            on_status=context.on_status,
        )
        self.settings = settings
        self.camera_id = camera_id
        self.mode: CameraMode = settings.mode
        self.fps_cap = settings.fps_cap
        self.frame_timeout_s = settings.frame_timeout_s
        self.lost_after_timeouts = settings.lost_after_timeouts
        self.trigger_retries = settings.trigger_retries
        self.start_wait_s = start_wait_s
        self._backoff = Backoff(settings.reconnect_initial_s, settings.reconnect_max_s)
        self._triggers: TriggerServer | None = None
        if settings.mode == "triggered":
            self._triggers = TriggerServer(
                settings.trigger_endpoint,
                source_id=settings.id,
                max_pending=settings.max_pending_triggers,
                context=context.zmq_context,
            )
        self._stopping = threading.Event()
        self._first_attempt = threading.Event()
        self._thread: threading.Thread | None = None
        self._connected = False
        self._ever_connected = False
        self._frame_number = 0
        self._timeouts_in_a_row = 0
        self._next_due = 0.0
        self._throttle: dict[str, tuple[float, int]] = {}
        self._incomplete_status: str | None = None  # set by a backend that got a broken frame
        for name in _CAMERA_COUNTERS:  # present from the start, so metrics see zeros
            self._count(name, 0)

    # ---- what a backend implements -------------------------------------------------------

    @property
    def live(self) -> bool:
        """True for a real camera (frames are discarded to honour fps_cap), False for a file."""
        return True

    @abc.abstractmethod
    def _open(self) -> None:
        """Connect and start acquisition; raise SourceConnectionError if unreachable."""

    @abc.abstractmethod
    def _close(self, lost: bool) -> None:
        """Release the device; never raises. `lost`: it is gone, skip polite commands."""

    @abc.abstractmethod
    def _read(self, timeout_s: float) -> Grab | None:
        """Next frame, None on timeout; SourceConnectionError if lost, EndOfStream at the end."""

    def _trigger_and_read(self, timeout_s: float) -> Grab | None:
        """Grab one frame for a trigger (default: the next frame the device delivers)."""
        return self._read(timeout_s)

    def _idle(self) -> None:
        """Called in triggered mode while no trigger waits (a live OpenCV device drains here)."""

    def _lost(self) -> str | None:
        """A reason if the backend has learnt out of band that the device is gone."""
        return None

    def _backend_stats(self) -> dict[str, Any]:
        return {}

    def _saw_incomplete_frame(self, status: str) -> None:
        """Backends call this for a frame that arrived broken: the camera is there, so frame
        timeouts stop counting towards `lost_after_timeouts`; a trigger answered with
        NO_INSPECTION then says `incomplete_frame` instead of `timeout`."""
        self._incomplete_status = status
        self._timeouts_in_a_row = 0

    # ---- FrameSource ---------------------------------------------------------------------

    @property
    def trigger_endpoint(self) -> str | None:
        """The bound trigger address (with the real port when configured as `:*`)."""
        return None if self._triggers is None else self._triggers.bound_endpoint

    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._set_state(SourceState.INITIALISING)
        self._reopen_buffer()
        self._stopping.clear()
        self._first_attempt.clear()
        if self._triggers is not None:
            try:
                self._triggers.start()
            except SourceConnectionError as exc:
                self._set_state(SourceState.ERROR, error=str(exc))
                raise
        self._thread = threading.Thread(
            target=self._run, name=f"camera-{self.source_id}", daemon=True
        )
        self._thread.start()
        self._first_attempt.wait(self.start_wait_s)

    def stop(self, timeout_s: float = 5.0) -> None:
        if self._state is SourceState.NOT_STARTED:
            self._set_state(SourceState.ENDED)
            return
        self._stopping.set()
        if self._triggers is not None:
            self._triggers.close_intake("source is stopping")
        thread = self._thread
        if thread is not None:
            thread.join(timeout_s * 0.8)
            if thread.is_alive():  # blocked handing on an item: wake it by closing the buffer
                self._close_buffer()
                thread.join(timeout_s * 0.2)
            if thread.is_alive():
                logger.error(
                    "source %s: acquisition thread did not stop in %.1f s",
                    self.source_id,
                    timeout_s,
                )
            self._thread = None
        if self._triggers is not None:
            for trig in self._triggers.drain():  # only if the loop could not answer them
                self._answer_no_inspection(trig, "stopping", "the source stopped", wait_s=0.0)
            self._triggers.stop()
        self._close_buffer()
        if self._state is not SourceState.ENDED:
            self._safe_state(SourceState.ENDED, force=True)

    def stats(self) -> dict[str, Any]:
        counters = super().stats()
        counters["mode"] = self.mode
        counters["camera_id"] = self.camera_id
        counters["connected"] = self._connected
        if self._triggers is not None:
            counters["triggers_received"] = self._triggers.received
            counters["triggers_refused"] = self._triggers.refused
            counters["triggers_pending"] = self._triggers.pending()
            counters["trigger_endpoint"] = self._triggers.bound_endpoint
        counters.update(self._backend_stats())
        return counters

    # ---- the loop ------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._loop()
        except Exception as exc:  # a bug, not a camera problem: report, end in ERROR
            logger.exception("source %s: acquisition loop crashed", self.source_id)
            self._emit("loop_crashed", Severity.ERROR, error=f"{type(exc).__name__}: {exc}")
            self._safe_state(SourceState.ERROR, error=str(exc))
        finally:
            self._first_attempt.set()
            if self._connected:
                self._disconnect(lost=False)
            self._answer_pending("stopping" if self._stopping.is_set() else "ended")

    def _loop(self) -> None:
        while not self._stopping.is_set():
            if not self._connected:
                if not self._connect():
                    self._first_attempt.set()
                    self._wait_answering_triggers(self._backoff.next())
                    continue
                self._first_attempt.set()
            try:
                lost_reason = self._lost()
                if lost_reason:
                    raise SourceConnectionError(lost_reason)
                if self.mode == "free_run":
                    self._free_run_step()
                else:
                    self._trigger_step()
            except EndOfStream as exc:
                self._emit(
                    "end_of_stream", Severity.INFO, frames=self._frame_number, detail=str(exc)
                )
                self._disconnect(lost=False)
                self._answer_pending("ended")
                self._safe_state(SourceState.ENDED)
                self._close_buffer()  # `finished` turns True once the pipeline drained it
                return
            except SourceConnectionError as exc:
                self._on_lost(str(exc))
            except ConfigError as exc:
                self._emit("camera_unusable", Severity.ERROR, error=str(exc))
                self._disconnect(lost=False)
                self._safe_state(SourceState.ERROR, error=str(exc))
                return

    def _connect(self) -> bool:
        self._count("connect_attempts")
        try:
            self._open()
        except SourceConnectionError as exc:
            self._emit_throttled(
                "connect_failed", Severity.WARNING, camera_id=self.camera_id, error=str(exc)
            )
            self._safe_state(SourceState.RECONNECTING, reason=str(exc))
            return False
        self._connected = True
        self._timeouts_in_a_row = 0
        self._next_due = 0.0
        if self._ever_connected:
            self._count("reconnects")
            self._emit("reconnected", Severity.INFO, camera_id=self.camera_id)
        else:
            self._emit("connected", Severity.INFO, camera_id=self.camera_id)
        self._ever_connected = True
        self._safe_state(SourceState.RUNNING)
        return True

    def _on_lost(self, reason: str) -> None:
        # The state first: whoever sees the count or the event sees RECONNECTING too.
        self._safe_state(SourceState.RECONNECTING, reason=reason)
        self._count("camera_lost")
        self._emit("camera_lost", Severity.WARNING, camera_id=self.camera_id, reason=reason)
        self._disconnect(lost=True)  # may take seconds (a GigE device waits on GVCP retries)
        # Wait before reopening: a device that opens but fails every read must not spin.
        self._wait_answering_triggers(self._backoff.next())

    def _disconnect(self, lost: bool) -> None:
        self._connected = False
        try:
            self._close(lost)
        except Exception:  # _close must not raise; if it does, the device is dropped anyway
            logger.exception("source %s: closing the camera failed", self.source_id)

    def _free_run_step(self) -> None:
        period_s = None if self.fps_cap is None else 1.0 / self.fps_cap
        if period_s is not None and not self.live:
            # A file has no clock of its own: pace it instead of skipping frames.
            wait_s = self._next_due - time.monotonic()
            if wait_s > 0 and self._stopping.wait(wait_s):
                return
        grab = self._read(self.frame_timeout_s)
        if grab is None:
            self._frame_timeout()
            return
        self._timeouts_in_a_row = 0
        now = time.monotonic()
        if period_s is not None:
            if self.live and now < self._next_due:
                self._count("skipped_fps_cap")
                return
            self._next_due = (
                max(self._next_due + period_s, now) if self._next_due else now + period_s
            )
        self._publish_frame(grab, part_id=None, extra={})

    def _trigger_step(self) -> None:
        assert self._triggers is not None
        trig = self._triggers.next(timeout_s=0.0 if self.live else 0.05)
        if trig is None:
            if self.live:
                self._idle()
                trig = self._triggers.next(timeout_s=0.02)
            if trig is None:
                return
        self._count("triggers")
        waited_s = time.monotonic() - trig.received_monotonic
        if waited_s > self.frame_timeout_s:
            detail = f"trigger waited {waited_s:.2f} s before the camera was free"
            self._answer_no_inspection(trig, "timeout", detail)
            return
        self._incomplete_status = None
        try:
            grab = self._trigger_with_retries()
        except SourceConnectionError as exc:
            self._answer_no_inspection(trig, "camera_lost", str(exc))
            raise
        except EndOfStream:
            self._answer_no_inspection(trig, "ended", "the video ended")
            raise
        if grab is None:
            if self._incomplete_status is not None:
                detail = f"only incomplete frames ({self._incomplete_status}) within {self._tries_text()}"
                self._answer_no_inspection(trig, "incomplete_frame", detail)
            else:
                self._answer_no_inspection(
                    trig, "timeout", f"no frame within {self._tries_text()}"
                )
            self._frame_timeout()
            return
        self._timeouts_in_a_row = 0
        latency_ms = (time.monotonic() - trig.received_monotonic) * 1000.0
        extra = {
            "trigger_id": trig.trigger_id,
            "trigger_latency_ms": round(latency_ms, 3),
            "trigger": dict(trig.fields),
        }
        self._publish_frame(grab, part_id=trig.part_id, extra=extra)

    def _tries_text(self) -> str:
        tries = self.trigger_retries + 1
        return f"{self.frame_timeout_s} s" + (f" ({tries} triggers)" if tries > 1 else "")

    def _trigger_with_retries(self) -> Grab | None:
        """One frame for the trigger in hand: trigger, and again while tries are left."""
        tries = self.trigger_retries + 1
        for attempt in range(tries):
            if attempt:
                self._count("retriggers")
                logger.info("source %s: no complete frame for the trigger; triggering again (%d of %d)",
                            self.source_id, attempt, self.trigger_retries)
            grab = self._trigger_and_read(self.frame_timeout_s / tries)
            if grab is not None:
                return grab
        return None

    def _frame_timeout(self) -> None:
        self._count("frame_timeouts")
        self._timeouts_in_a_row += 1
        self._emit_throttled(
            "frame_timeout",
            Severity.WARNING,
            timeout_s=self.frame_timeout_s,
            in_a_row=self._timeouts_in_a_row,
        )
        if self._timeouts_in_a_row >= self.lost_after_timeouts:
            msg = f"{self._timeouts_in_a_row} frame timeouts of {self.frame_timeout_s} s in a row"
            raise SourceConnectionError(msg)

    def _publish_frame(self, grab: Grab, *, part_id: str | None, extra: dict[str, Any]) -> None:
        self._backoff.reset()  # only a delivered frame proves the connection works
        item = SourceItem.from_pixels(
            self.source_id,
            grab.pixels,
            self._frame_number,
            camera_id=self.camera_id,
            part_id=part_id,
            capture_time=grab.capture_time,
            metadata={**grab.metadata, **extra},
        )
        self._frame_number += 1
        self._count("frames")
        if self.mode == "free_run":
            self._publish(item)  # never blocks: the buffer drops its oldest frame instead
            return
        while not self._publish(item, timeout_s=0.2):
            if self._buffer.closed:
                logger.error(
                    "source %s: buffer closed, %s not handed on", self.source_id, item.source
                )
                return

    def _answer_no_inspection(
        self, trig: Trigger, reason: str, detail: str, *, wait_s: float | None = None
    ) -> None:
        item = no_inspection_item(self.source_id, self.camera_id, trig, reason, detail)
        self._count("no_inspections")
        self._emit(
            "no_inspection",
            Severity.WARNING,
            part_id=trig.part_id,
            trigger_id=trig.trigger_id,
            reason=reason,
            detail=detail,
        )
        if wait_s is not None:
            if not self._publish(item, timeout_s=wait_s):
                self._count("no_inspections_undelivered")
                logger.error(
                    "source %s: NO_INSPECTION for part %s could not be handed on",
                    self.source_id,
                    trig.part_id,
                )
            return
        while not self._publish(item, timeout_s=0.2):
            if self._buffer.closed:
                self._count("no_inspections_undelivered")
                return

    def _answer_pending(self, reason: str) -> None:
        """Refuse new triggers and answer every queued one NO_INSPECTION (`reason`)."""
        if self._triggers is None:
            return
        self._triggers.close_intake(f"source {reason}")
        for trig in self._triggers.drain():
            self._answer_no_inspection(trig, reason, f"the source {reason}", wait_s=0.5)

    def _wait_answering_triggers(self, delay_s: float) -> None:
        """Sleep before the next connection attempt; triggers meanwhile get NO_INSPECTION."""
        deadline = time.monotonic() + delay_s
        while not self._stopping.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            if self._triggers is None:
                self._stopping.wait(remaining)
                return
            trig = self._triggers.next(timeout_s=min(remaining, 0.05))
            if trig is not None:
                self._count("triggers")
                self._answer_no_inspection(
                    trig, "camera_lost", f"camera {self.camera_id} is not connected"
                )

    # ---- helpers -------------------------------------------------------------------------

    def _safe_state(self, new: SourceState, *, force: bool = False, **payload: Any) -> None:
        """State change from the loop thread, which must live on whatever happens.

        A stop racing with the loop wins: once stopping, only ENDED is taken. Any other
        transition the state machine refuses is a bug: it becomes an `illegal_state_change`
        status update at ERROR naming the transition (logged, counted in `errors`, the
        source's last error); the state stays as it was and the loop goes on rather than
        dying with the exception.
        """
        if self._stopping.is_set() and not force and new is not SourceState.ENDED:
            return
        try:
            self._set_state(new, **payload)
        except SourceStateError as exc:
            if self._stopping.is_set():  # the stop set ENDED between the check and the change
                logger.debug("source %s: %s", self.source_id, exc)
                return
            self._count("errors")
            self._emit("illegal_state_change", Severity.ERROR, error=str(exc), **payload)

    def _emit_throttled(self, event: str, severity: Severity, **payload: Any) -> None:
        """At most one event per name per second; the rest are counted in `suppressed`."""
        now = time.monotonic()
        last, suppressed = self._throttle.get(event, (0.0, 0))
        if now - last < 1.0:
            self._throttle[event] = (last, suppressed + 1)
            return
        self._throttle[event] = (now, 0)
        self._emit(event, severity, suppressed=suppressed, **payload)
