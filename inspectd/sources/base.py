"""What every frame source shares: its state machine, status events, items and bounded buffer.

A source runs its own threads and hands the pipeline `SourceItem`s through a `FrameBuffer`.
Problems inside those threads never escape as exceptions: they become `StatusUpdate` events
(delivered to the `on_status` callback) and counters in `stats()`, so one bad camera or file
cannot kill the daemon (the roboflow/inference `VideoSource` model).

Example, a minimal source that yields one in-memory frame::

    >>> import numpy as np
    >>> class OneFrame(FrameSource):
    ...     KEY = "one-frame"
    ...     def start(self):
    ...         self._set_state(SourceState.INITIALISING)
    ...         self._set_state(SourceState.RUNNING)
    ...         self._publish(SourceItem.from_pixels("cam0", np.zeros((2, 2), np.uint8), 0))
    ...     def stop(self, timeout_s=5.0):
    ...         self._close_buffer()
    ...         self._set_state(SourceState.ENDED)
    >>> src = OneFrame("cam0", buffer_size=4, drop_oldest=True)
    >>> src.start(); src.get(timeout_s=1.0).source
    'cam0#0'
    >>> src.stop(); src.state.value, src.stats()["items"]
    ('ENDED', 1)
"""

from __future__ import annotations

import abc
import collections
import dataclasses
import enum
import hashlib
import inspect
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar, Generic, NamedTuple, TypeVar

import numpy as np

from inspectd.config import validate_section
from inspectd.errors import InspectdError

logger = logging.getLogger(__name__)

T = TypeVar("T")
SourceT = TypeVar("SourceT", bound="FrameSource")


class SourceStateError(InspectdError):
    """A source was asked to move between two states its state machine does not connect."""


class SourceState(str, enum.Enum):
    NOT_STARTED = "NOT_STARTED"
    INITIALISING = "INITIALISING"
    RUNNING = "RUNNING"
    RECONNECTING = "RECONNECTING"
    PAUSED = "PAUSED"
    ENDED = "ENDED"
    ERROR = "ERROR"


# Allowed next states for each state. ENDED and ERROR may be started again (INITIALISING),
# because the daemon restarts a failed source rather than rebuilding it.
ALLOWED_TRANSITIONS: Mapping[SourceState, frozenset[SourceState]] = MappingProxyType(
    {
        SourceState.NOT_STARTED: frozenset({SourceState.INITIALISING, SourceState.ENDED}),
        SourceState.INITIALISING: frozenset(
            {SourceState.RUNNING, SourceState.RECONNECTING, SourceState.ERROR, SourceState.ENDED}
        ),
        SourceState.RUNNING: frozenset(
            {SourceState.PAUSED, SourceState.RECONNECTING, SourceState.ERROR, SourceState.ENDED}
        ),
        SourceState.RECONNECTING: frozenset(
            {SourceState.RUNNING, SourceState.ERROR, SourceState.ENDED}
        ),
        SourceState.PAUSED: frozenset(
            {SourceState.RUNNING, SourceState.RECONNECTING, SourceState.ERROR, SourceState.ENDED}
        ),
        SourceState.ENDED: frozenset({SourceState.INITIALISING}),
        SourceState.ERROR: frozenset(
            {SourceState.INITIALISING, SourceState.RECONNECTING, SourceState.ENDED}
        ),
    }
)


def check_transition(current: SourceState, new: SourceState) -> None:
    """Raise `SourceStateError` unless `current -> new` is in `ALLOWED_TRANSITIONS`.

    >>> check_transition(SourceState.RUNNING, SourceState.PAUSED)
    >>> check_transition(SourceState.NOT_STARTED, SourceState.RUNNING)
    Traceback (most recent call last):
    ...
    inspectd.sources.base.SourceStateError: illegal source state transition NOT_STARTED -> RUNNING
    """
    if new not in ALLOWED_TRANSITIONS[current]:
        msg = f"illegal source state transition {current.value} -> {new.value}"
        raise SourceStateError(msg)


class Severity(str, enum.Enum):
    DEBUG = "DEBUG"
    INFO = "INFO"
    WARNING = "WARNING"
    ERROR = "ERROR"


@dataclass(frozen=True)
class StatusUpdate:
    """One thing that happened inside a source (state change, reconnect, unreadable file ...).

    `event` is a short snake_case name (`state_changed`, `file_quarantined`, `frame_timeout`);
    `payload` holds the details a status page or metric needs.
    """

    source_id: str
    time: datetime
    severity: Severity
    event: str
    payload: Mapping[str, Any] = field(default_factory=dict)


class ItemOutcome(str, enum.Enum):
    """What the pipeline did with an item; passed back to the source by `FrameSource.ack`."""

    OK = "ok"  # inspected and journaled (PASS or FAIL)
    QUARANTINED = "quarantined"  # unreadable / undecodable: journaled as ERROR, file set aside


def sha256_of_pixels(pixels: np.ndarray) -> str:
    """Hex sha256 of a frame's raw bytes (C order), the image hash a camera verdict carries.

    The array's own buffer is hashed (the same bytes as `tobytes()`): no 5 MB copy of every
    2560x1920 frame, ~1 ms less per frame at capture.

    >>> sha256_of_pixels(np.zeros((1, 1), np.uint8))[:12]
    '6e340b9cffb3'
    """
    return hashlib.sha256(np.ascontiguousarray(pixels)).hexdigest()


@dataclass(frozen=True, eq=False)
class SourceItem:
    """What a source hands the pipeline: one file's bytes or one camera frame.

    Files carry `payload` (read once, so the hash and the decoder see the same bytes) and
    `path`; cameras carry `pixels`. `sha256` is of the payload, or of `pixels.tobytes()`.
    An item the source could not read (permission denied, too large, trigger timed out)
    carries `error` and no data: the pipeline turns it into an ERROR verdict and acks it
    `QUARANTINED`. `metadata` holds source-specific extras (trigger id, exposure ...).
    Identity equality: two items are the same only if they are the same object.
    """

    source_id: str
    kind: str  # "file" | "camera"
    source: str  # file path, or "camera-id#frame-number"
    capture_time: datetime
    sha256: str
    part_id: str | None = None
    frame_number: int | None = None
    payload: bytes | None = None
    pixels: np.ndarray | None = None
    path: Path | None = None
    error: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in ("file", "camera"):
            msg = f"SourceItem.kind must be 'file' or 'camera', got {self.kind!r}"
            raise ValueError(msg)
        has_payload = self.payload is not None
        has_pixels = self.pixels is not None
        if has_payload and has_pixels:
            msg = f"{self.source}: a SourceItem carries payload or pixels, not both"
            raise ValueError(msg)
        if not (has_payload or has_pixels or self.error):
            msg = f"{self.source}: a SourceItem without payload or pixels must carry an error"
            raise ValueError(msg)
        if self.capture_time.tzinfo is None:
            msg = f"{self.source}: capture_time must be timezone-aware (UTC)"
            raise ValueError(msg)

    @property
    def key(self) -> tuple[str, str]:
        """(source, identity): the journal's identity of a file, its path plus its content
        hash; for an entry whose content was never read (refused, unreadable) the path plus
        which entry it was (`metadata["entry_id"]`), so a new entry under an old name is new.
        """
        return (self.source, self.sha256 or str(self.metadata.get("entry_id", "")))

    @classmethod
    def from_pixels(
        cls,
        source_id: str,
        pixels: np.ndarray,
        frame_number: int,
        *,
        camera_id: str | None = None,
        part_id: str | None = None,
        capture_time: datetime | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> SourceItem:
        """A camera frame item with its hash and `source` = "camera-id#frame" filled in.

        >>> SourceItem.from_pixels("cam0", np.zeros((2, 2), np.uint8), 7).source
        'cam0#7'
        """
        return cls(
            source_id=source_id,
            kind="camera",
            source=f"{camera_id or source_id}#{frame_number}",
            capture_time=capture_time or datetime.now(timezone.utc),
            sha256=sha256_of_pixels(pixels),
            part_id=part_id,
            frame_number=frame_number,
            pixels=pixels,
            metadata=dict(metadata or {}),
        )


class FrameBuffer(Generic[T]):
    """Bounded thread-safe FIFO between a source's thread and the pipeline.

    `drop_oldest=True` (cameras in free-run): `put` never blocks; when full the OLDEST
    queued item is discarded, counted in `drops` and passed to `on_drop`, so the pipeline
    always works on the freshest frame. `drop_oldest=False` (folders): `put` blocks until
    there is room and never drops. Every wait takes a timeout, and `close()` wakes all
    waiters, so shutdown is never stuck.

    >>> buf = FrameBuffer(2, drop_oldest=True)
    >>> for i in range(3): _ = buf.put(i)
    >>> buf.drops, buf.get(timeout_s=0), buf.get(timeout_s=0)
    (1, 1, 2)
    """

    def __init__(
        self,
        maxsize: int,
        drop_oldest: bool,
        on_drop: Callable[[T], None] | None = None,
    ) -> None:
        if maxsize < 1:
            msg = f"FrameBuffer maxsize must be >= 1, got {maxsize}"
            raise ValueError(msg)
        self.maxsize = maxsize
        self.drop_oldest = drop_oldest
        self._on_drop = on_drop
        self._items: collections.deque[T] = collections.deque()
        self._lock = threading.Lock()
        self._not_empty = threading.Condition(self._lock)
        self._not_full = threading.Condition(self._lock)
        self._closed = False
        self.drops = 0
        self.puts = 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    @property
    def closed(self) -> bool:
        return self._closed

    def put(self, item: T, timeout_s: float | None = None) -> bool:
        """Queue `item`; False if the buffer is closed or (blocking mode) `timeout_s` ran out."""
        dropped: T | None = None
        has_dropped = False
        with self._lock:
            if self._closed:
                return False
            if len(self._items) >= self.maxsize:
                if self.drop_oldest:
                    dropped = self._items.popleft()
                    has_dropped = True
                    self.drops += 1
                else:
                    deadline = None if timeout_s is None else time.monotonic() + timeout_s
                    while len(self._items) >= self.maxsize and not self._closed:
                        remaining = None if deadline is None else deadline - time.monotonic()
                        if remaining is not None and remaining <= 0:
                            return False
                        self._not_full.wait(remaining)
                    if self._closed:
                        return False
            self._items.append(item)
            self.puts += 1
            self._not_empty.notify()
        if has_dropped and self._on_drop is not None:
            try:
                self._on_drop(dropped)  # type: ignore[arg-type]
            except Exception:  # a faulty hook must not break the producer
                logger.exception("FrameBuffer on_drop callback failed")
        return True

    def get(self, timeout_s: float | None = None) -> T | None:
        """Oldest queued item, or None after `timeout_s`, or once closed and drained."""
        with self._lock:
            deadline = None if timeout_s is None else time.monotonic() + timeout_s
            while not self._items:
                if self._closed:
                    return None
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                self._not_empty.wait(remaining)
            item = self._items.popleft()
            self._not_full.notify()
            return item

    def drain(self) -> list[T]:
        """Remove and return everything queued (used on stop to release what was not taken)."""
        with self._lock:
            items = list(self._items)
            self._items.clear()
            self._not_full.notify_all()
            return items

    def close(self) -> None:
        """Refuse further puts and wake every waiter; queued items can still be taken."""
        with self._lock:
            self._closed = True
            self._not_empty.notify_all()
            self._not_full.notify_all()

    def reopen(self) -> None:
        """Accept puts again (a stopped source being started again)."""
        with self._lock:
            self._closed = False


StatusCallback = Callable[[StatusUpdate], None]


class FrameSource(abc.ABC):
    """Base of every source: a small state machine feeding a `FrameBuffer`.

    Subclasses set `KEY` (the config's `kind:` value) and `config_class` (their pydantic
    config section, with `kind: Literal[KEY]`), implement `start()` and `stop(timeout_s)`,
    run their own threads, call `_set_state`, `_publish(item)`, `_emit(event, ...)` and
    `_count(name)`; the pipeline calls `get`, then `ack`. `stats()` counters: items, drops,
    errors, reconnects, queued, plus whatever a subclass counts with `_count`.

    A source with a `config_class` is constructed as `cls(settings, context, **runtime)`:
    its validated section, the `SourceContext`, and keyword-only objects that exist only at
    run time. The section is the one place where a setting's default and checks live; the
    constructor reads it and checks nothing again. Build one in code with `from_settings`.
    """

    KEY: ClassVar[str] = ""
    config_class: ClassVar[type[Any] | None] = None

    @classmethod
    def from_config(cls, cfg: Any, context: SourceContext) -> FrameSource:
        """Build the source from its validated config section and what the daemon provides.

        The default is `cls(cfg, context)`; a source whose constructor wants more than the
        context holds directly (the folder: done/ and quarantine/ under the state dir)
        overrides this.
        """
        return cls(cfg, context)  # type: ignore[call-arg]

    @classmethod
    def from_settings(cls: type[SourceT], **settings: Any) -> SourceT:
        """Build the source in code from keyword settings, checked by its config section.

        A key naming a `SourceContext` field (`on_status`, `zmq_context`, `max_file_bytes`,
        `is_done` ...) goes to the context, a keyword-only parameter of the constructor (a
        run-time object such as the folder's `done_dir`) to the constructor, and every other
        key is a config key: `config_class` validates it by the rules a `sources:` entry of
        the config file obeys, so a wrong value is a `ConfigError` naming its key.

        >>> from inspectd.sources.folder import FolderSource
        >>> FolderSource.from_settings(id="inbox", path="/srv/in", stable_s=-1)
        Traceback (most recent call last):
        ...
        inspectd.errors.ConfigError: folder source: stable_s = -1: Input should be greater than or equal to 0
        >>> FolderSource.from_settings(id="inbox", path="/srv/in", create_dirs=True).settings.stable_s
        0.5
        """
        if cls.config_class is None:
            msg = f"{cls.__name__} declares no config_class to build it from settings"
            raise TypeError(msg)
        context_keys = {f.name for f in dataclasses.fields(SourceContext)} & settings.keys()
        context = SourceContext(**{key: settings.pop(key) for key in context_keys})
        parameters = inspect.signature(cls.__init__).parameters.values()
        runtime_keys = {p.name for p in parameters if p.kind is p.KEYWORD_ONLY} & settings.keys()
        runtime = {key: settings.pop(key) for key in runtime_keys}
        section = validate_section(cls.config_class, settings, origin=f"{cls.KEY or cls.__name__} source")
        return cls(section, context, **runtime)  # type: ignore[call-arg]

    def __init__(
        self,
        source_id: str,
        *,
        buffer_size: int = 16,
        drop_oldest: bool = False,
        on_status: StatusCallback | None = None,
    ) -> None:
        self.source_id = source_id
        self._on_status = on_status
        self._state = SourceState.NOT_STARTED
        self._state_lock = threading.Lock()
        self._stats_lock = threading.Lock()
        self._counters: dict[str, int] = {"items": 0, "errors": 0, "reconnects": 0}
        self._last_error: str | None = None
        self._started_monotonic: float | None = None
        self._buffer: FrameBuffer[SourceItem] = FrameBuffer(
            buffer_size, drop_oldest=drop_oldest, on_drop=self._on_item_dropped
        )

    # ---- what the pipeline calls -------------------------------------------------------

    @abc.abstractmethod
    def start(self) -> None:
        """Connect / begin watching and start the source's threads; returns once RUNNING."""

    @abc.abstractmethod
    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the threads (joined within `timeout_s`), close the buffer, end in ENDED."""

    def get(self, timeout_s: float | None = None) -> SourceItem | None:
        """Next item, or None when none arrived within `timeout_s` (or the source ended)."""
        return self._buffer.get(timeout_s)

    def ack(self, item: SourceItem, outcome: ItemOutcome, reason: str | None = None) -> Path | None:
        """Tell the source the item is journaled; returns where a file went (if it moved).

        Cameras have nothing to release; the folder source moves the file to done/quarantine.
        """
        return None

    @property
    def state(self) -> SourceState:
        return self._state

    @property
    def finished(self) -> bool:
        """True once the source ended (or failed for good) and nothing is left to take."""
        return self._state in (SourceState.ENDED, SourceState.ERROR) and len(self._buffer) == 0

    def stats(self) -> dict[str, Any]:
        """Counters and state for `status` replies and metrics (a fresh dict each call)."""
        with self._stats_lock:
            counters: dict[str, Any] = dict(self._counters)
        counters["drops"] = self._buffer.drops
        counters["queued"] = len(self._buffer)
        counters["state"] = self._state.value
        counters["last_error"] = self._last_error
        counters["uptime_s"] = (
            0.0
            if self._started_monotonic is None
            else round(time.monotonic() - self._started_monotonic, 3)
        )
        return counters

    def __enter__(self) -> FrameSource:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # ---- helpers for subclasses -------------------------------------------------------

    def _set_state(self, new: SourceState, **payload: Any) -> None:
        """Move the state machine (raises `SourceStateError` if illegal) and emit the change."""
        with self._state_lock:
            old = self._state
            if old is new:
                return
            check_transition(old, new)
            self._state = new
            if new is SourceState.INITIALISING:
                self._started_monotonic = time.monotonic()
        severity = Severity.ERROR if new is SourceState.ERROR else Severity.INFO
        self._emit("state_changed", severity, old=old.value, new=new.value, **payload)

    def _emit(self, event: str, severity: Severity = Severity.INFO, **payload: Any) -> None:
        """Log and deliver a status update; a failing callback is logged, never raised."""
        update = StatusUpdate(
            source_id=self.source_id,
            time=datetime.now(timezone.utc),
            severity=severity,
            event=event,
            payload=payload,
        )
        if severity is Severity.ERROR:
            self._last_error = f"{event}: {payload}"
        logger.log(
            logging.getLevelName(severity.value), "source %s: %s %s", self.source_id, event, payload
        )
        if self._on_status is not None:
            try:
                self._on_status(update)
            except Exception:
                logger.exception("source %s: status callback failed", self.source_id)

    def _count(self, name: str, n: int = 1) -> None:
        with self._stats_lock:
            self._counters[name] = self._counters.get(name, 0) + n

    def _publish(self, item: SourceItem, timeout_s: float | None = None) -> bool:
        """Queue an item for the pipeline; False if closed or (blocking) timed out."""
        queued = self._buffer.put(item, timeout_s)
        if queued:
            self._count("items")
        return queued

    def _close_buffer(self) -> None:
        self._buffer.close()

    def _reopen_buffer(self) -> None:
        self._buffer.reopen()

    def _on_item_dropped(self, item: SourceItem) -> None:
        """Hook for drop-oldest buffers (a subclass may override to answer a trigger)."""
        logger.debug("source %s: dropped %s (buffer full)", self.source_id, item.source)


class FileKey(NamedTuple):
    """The journal's identity of a file: its path as shown plus its content hash (for an
    entry without readable content, `Entry.entry_id`)."""

    path: str
    sha256: str


@dataclass(frozen=True)
class SourceContext:
    """What the daemon gives every source it builds, besides the source's own config section."""

    on_status: StatusCallback | None = None
    zmq_context: Any = None  # the daemon's zmq.Context (cameras bind their trigger socket on it)
    state_dir: Path = Path("inspectd-state")  # done/ and quarantine/ live here
    max_file_bytes: int = 1 << 31  # input.max_file_bytes
    is_done: IsDone | None = None  # the journal's lookup (see IsDone)


# The daemon's journal lookup, handed to sources that must not deliver a file twice. Falsy: never processed. An ItemOutcome (or any other truthy
# value, taken as OK): processed before; the source only finishes the interrupted move.
IsDone = Callable[[FileKey], Any]
