"""What the Live page shows as it happens: verdicts pushed to every open browser, frames kept on disk.

Why one shared feed rather than a query per browser: a station may have a dozen screens open
on the Live page, and none of them may cost the pipeline anything or multiply the journal
queries. So there is one `EventHub` per server, a short ring of numbered events (`verdict`,
`frame`, `status`, `resync`) that every Server-Sent Events stream reads with a cursor of its
own. A browser that stops reading costs nothing but its cursor: its stream waits on the
socket (at most the transport's buffer is held), and after `SEND_TIMEOUT_S` without progress
the stream is ended; the others read on. Where the events come from:

- under `inspectd run --http`, `LiveFeed.observe` is a pipeline observer: on the publish
  thread it only appends the message to the ring and the frame to a short render queue
  (drop-oldest, `RENDER_QUEUE` frames), and returns. A thread of its own renders the overlay
  (`inspectd.reports.report.render_overlay`, the same picture as `inspectd analyze`) and writes the
  frame's entry `seq-<N>` to the `FrameStore`, then announces it as a `frame` event;
- under `inspectd ui` (no daemon), one thread tails the journal by seq every `TAIL_EVERY_S`
  for all browsers together.

The same thread publishes a `status` event every `STATUS_EVERY_S` while a browser watches:
verdict counts for the last hour and the current shift (`http.shift_starts`), and the
daemon's health, the same facts as `inspectd status`.

    >>> hub = EventHub(capacity=2)
    >>> [hub.publish("verdict", {"seq": n}) for n in (1, 2, 3)]
    [1, 2, 3]
    >>> events, gap = hub.after(0)
    >>> [event_id for event_id, _ in events], gap
    ([2, 3], True)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Iterable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from inspectd.clients.health import describe, health_problems
from inspectd.reports.report import render_overlay, to_display_uint8
from inspectd.web.journal_reader import JournalUnreadableError
from inspectd.wire.message import utc_iso

if TYPE_CHECKING:
    from inspectd.analysis.analyzer import FrameResult
    from inspectd.config import Config
    from inspectd.web.context import WebContext

logger = logging.getLogger(__name__)

RING_EVENTS = 512  # events a reconnecting browser can catch up on; further behind it reloads
RENDER_QUEUE = 4  # frames waiting for their overlay; a burst drops the oldest (their verdicts still show)
MAX_STREAMS = 16  # open Live pages per server; uvicorn's own limit (64) leaves room for the other pages
KEEPALIVE_S = 15.0  # a comment line this often keeps proxies and the browser from closing an idle stream
SEND_TIMEOUT_S = 30.0  # a browser that has not taken an event for this long loses its stream
TAIL_EVERY_S = 0.5  # `inspectd ui`: how often the one journal tail looks for new verdicts
STATUS_EVERY_S = 2.0  # counters and health, while a browser watches
LOOKBACK_ROWS = 2000  # newest journal rows the first paint groups by source
TAIL_BATCH = 500


class EventHub:
    """A numbered ring of encoded SSE events; `publish` from any thread, streams read with a cursor.

    Browsers are woken on the server's event loop (`call_soon_threadsafe`, coalesced), never
    from the publishing thread directly, so `publish` costs a lock and a deque append.
    """

    def __init__(self, capacity: int = RING_EVENTS, max_streams: int = MAX_STREAMS) -> None:
        self.max_streams = max_streams
        self._events: deque[tuple[int, str]] = deque(maxlen=capacity)
        self._next_id = 1
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wakers: set[asyncio.Event] = set()
        self._wake_pending = False
        self.streams = 0
        self.closed = False

    @property
    def last_id(self) -> int:
        with self._lock:
            return self._next_id - 1

    def publish(self, kind: str, payload: dict[str, Any]) -> int:
        """Append one event (JSON `payload`); returns its id."""
        body = json.dumps(payload, allow_nan=False, default=str, separators=(",", ":"))
        with self._lock:
            event_id = self._next_id
            self._next_id += 1
            self._events.append((event_id, f"id: {event_id}\nevent: {kind}\ndata: {body}\n\n"))
            loop, schedule = self._loop, not self._wake_pending
            if loop is not None and schedule:
                self._wake_pending = True
        if loop is not None and schedule:
            try:
                loop.call_soon_threadsafe(self._wake_all)
            except RuntimeError:  # the server's loop has ended
                pass
        return event_id

    def after(self, cursor: int) -> tuple[list[tuple[int, str]], bool]:
        """Events with id > cursor, and whether some of them already left the ring (a gap)."""
        with self._lock:
            events = [event for event in self._events if event[0] > cursor]
            first = self._events[0][0] if self._events else self._next_id
        return events, cursor < first - 1

    # ---- event-loop side ---------------------------------------------------------------

    def open_stream(self, waker: asyncio.Event) -> bool:
        """Count a stream in (False: the cap is reached); on the server's loop."""
        if self.closed or self.streams >= self.max_streams:
            return False
        self._loop = asyncio.get_running_loop()
        self.streams += 1
        self._wakers.add(waker)
        return True

    def close_stream(self, waker: asyncio.Event) -> None:
        self._wakers.discard(waker)
        self.streams -= 1

    def _wake_all(self) -> None:
        with self._lock:
            self._wake_pending = False
        for waker in list(self._wakers):
            waker.set()

    def close(self) -> None:
        """End every stream (server stopping)."""
        self.closed = True
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._wake_all)


class SourceNames:
    """Which configured source a verdict came from, read from its message alone.

    A message names the file or `camera#frame`, not the source id; the journal is all there
    is under `inspectd ui`, so the id comes from the config: a file under a folder source's
    path is that source's, a camera frame's prefix is a camera source's id or device. Anything
    else is named by its folder (files) or its prefix (cameras).

        >>> from inspectd import config
        >>> names = SourceNames(config.parse_object({"sources": [{"kind": "folder", "id": "line1",
        ...                                                        "path": "/data/in"}]}))
        >>> names.of({"source_kind": "file", "source": "/data/in/a.png"}), names.of({"source": "cam7#12"})
        ('line1', 'cam7')
    """

    def __init__(self, cfg: Config) -> None:
        self.order: list[str] = []
        self._folders: list[tuple[str, str]] = []
        self._cameras: dict[str, str] = {}
        for source in cfg.sources:
            self.order.append(source.id)
            path = getattr(source, "path", None)
            if source.kind == "folder" and path is not None:
                self._folders.append((str(Path(path).expanduser().resolve()), source.id))
                continue
            self._cameras[source.id] = source.id
            for attribute in ("camera_id", "device"):
                value = getattr(source, attribute, None)
                if value is not None:
                    self._cameras[str(value)] = source.id
            if source.kind == "aravis" and getattr(source, "camera_id", None) is None:
                self._cameras["aravis:first"] = source.id

    def of(self, message: dict[str, Any]) -> str:
        source = str(message.get("source") or "")
        if message.get("source_kind") == "file":
            for folder, source_id in self._folders:
                if source.startswith(folder.rstrip("/") + "/"):
                    return source_id
            return Path(source).parent.name or "files"
        prefix = source.rpartition("#")[0] or source or "unknown"
        return self._cameras.get(prefix, prefix)


def shift_start(now: datetime, starts: Iterable[str]) -> datetime:
    """The latest shift start (local HH:MM) at or before `now` (aware), as an aware local time.

        >>> local = datetime(2024, 5, 1, 3, 0).astimezone()
        >>> shift_start(local, ["06:00", "22:00"]).strftime("%d %H:%M")
        '30 22:00'
    """
    local_now = now.astimezone()
    candidates = []
    for text in starts:
        hours, minutes = (int(part) for part in text.split(":"))
        for days_back in (0, 1):
            day = (local_now - timedelta(days=days_back)).date()
            moment = datetime(day.year, day.month, day.day, hours, minutes).astimezone()
            if moment <= local_now:
                candidates.append(moment)
    return max(candidates)


class LiveFeed:
    """The Live page's state of one server: hub, frame rendering (daemon), journal tail (offline)."""

    def __init__(self, context: WebContext, hub: EventHub | None = None) -> None:
        self.context = context
        self.hub = hub or EventHub()
        self.names = SourceNames(context.config)
        self.dropped_frames = 0
        self._pending: deque[tuple[dict[str, Any], FrameResult]] = deque(maxlen=RENDER_QUEUE)
        self._wake_render = threading.Event()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._ticker_lock = threading.Lock()
        self._ticker_started = False
        self._tail_seq = 0
        self._verdicts_since_status = threading.Event()
        if context.daemon is not None:
            self._spawn(self._render_loop, "web-live-frames")

    # ---- daemon side: the pipeline observer --------------------------------------------

    def observe(self, message: dict[str, Any], result: FrameResult) -> None:
        """Pipeline observer (publish thread): announce the verdict, queue the frame, return."""
        self.hub.publish("verdict", self._verdict_event(message, frame=None))
        self._verdicts_since_status.set()
        if result.enhanced is not None and result.mask is not None:
            if len(self._pending) == self._pending.maxlen:
                self.dropped_frames += 1
            self._pending.append((message, result))
            self._wake_render.set()

    def _render_loop(self) -> None:
        while not self._stopping.is_set():
            self._wake_render.wait(0.5)
            self._wake_render.clear()
            while not self._stopping.is_set():
                try:
                    message, result = self._pending.popleft()
                except IndexError:
                    break
                try:
                    key = self.store_frame(message, result)
                except Exception:  # noqa: BLE001 - one frame that cannot be kept must not end the feed
                    logger.exception("live page: could not keep the frame of seq %s", message.get("seq"))
                    continue
                self.hub.publish("frame", {"source_id": self.names.of(message), "seq": message.get("seq"),
                                           "key": key})

    def store_frame(self, message: dict[str, Any], result: FrameResult) -> str:
        """Write the frame's FrameStore entry `seq-<N>`: pixels, enhanced, mask, overlay, the message."""
        metrics = result.measurements.metrics if result.measurements is not None else None
        enhanced, mask = result.enhanced, result.mask
        assert enhanced is not None and mask is not None
        overlay = render_overlay(enhanced, mask, metrics)
        key = f"seq-{int(message['seq'])}"
        pixels = result.frame.pixels
        self.context.frames.put(key, image=None if pixels is None else np.ascontiguousarray(pixels),
                                enhanced=to_display_uint8(enhanced), mask=mask.astype(np.uint8), overlay=overlay,
                                meta=message)
        return key

    # ---- shared: status ticker, and the journal tail without a daemon -------------------

    def start(self) -> None:
        """Start the status ticker (and, offline, the journal tail) once; called by the first
        snapshot or stream, so a server nobody looks at queries nothing."""
        with self._ticker_lock:
            if self._ticker_started or self._stopping.is_set():
                return
            self._ticker_started = True
            if self.context.daemon is None:
                self._tail_seq = self._last_seq()  # before the first snapshot reads: nothing falls between
        self._spawn(self._ticker_loop, "web-live-feed")

    def _ticker_loop(self) -> None:
        last_status = -STATUS_EVERY_S
        offline = self.context.daemon is None
        while not self._stopping.is_set():
            if offline:
                self._tail_once()
            now = time.monotonic()
            # Every STATUS_EVERY_S, and after new verdicts at most once a second (the counters moved).
            due = now - last_status >= STATUS_EVERY_S or (
                self._verdicts_since_status.is_set() and now - last_status >= 1.0)
            if self.hub.streams > 0 and due:
                self._verdicts_since_status.clear()
                try:
                    self.hub.publish("status", self.status())
                except Exception:  # noqa: BLE001 - the next tick tries again
                    logger.exception("live page: could not gather the status")
                last_status = now
            self._stopping.wait(TAIL_EVERY_S if offline else 0.25)

    def _tail_once(self) -> None:
        try:
            last = self._last_seq()
            if last < self._tail_seq:  # a new journal (new epoch): its seq starts again at 1
                self._tail_seq = 0
                self.hub.publish("resync", {"reason": "the journal starts a new stream"})
            while last > self._tail_seq:
                messages = self.context.journal.since(self._tail_seq, TAIL_BATCH)
                if not messages:
                    break
                for message in messages:
                    self.hub.publish("verdict", self._verdict_event(message, frame=self._kept_frame(message)))
                self._tail_seq = int(messages[-1]["seq"])
                self._verdicts_since_status.set()
        except JournalUnreadableError:
            pass  # no journal yet: the page says so; tried again next tick
        except Exception:  # noqa: BLE001 - the tail must outlive one odd row
            logger.exception("live page: journal tail failed; trying again")

    def _last_seq(self) -> int:
        try:
            return self.context.journal.last_seq()
        except JournalUnreadableError:
            return 0

    def close(self) -> None:
        self._stopping.set()
        self._wake_render.set()
        self.hub.close()
        for thread in self._threads:
            thread.join(5.0)
        self._threads.clear()

    def _spawn(self, target: Any, name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    # ---- what the page reads -------------------------------------------------------------

    def _verdict_event(self, message: dict[str, Any], frame: str | None) -> dict[str, Any]:
        return {"source_id": self.names.of(message), "message": message, "frame": frame}

    def _kept_frame(self, message: dict[str, Any]) -> str | None:
        seq = message.get("seq")
        if not isinstance(seq, int):
            return None
        key = f"seq-{seq}"
        return key if self.context.frames.path(key, "overlay.png") is not None else None

    def status(self) -> dict[str, Any]:
        """Counters (last hour, current shift) and health; blocking (journal, daemon): call off the loop."""
        now = datetime.now(timezone.utc)
        start = shift_start(now, self.context.config.http.shift_starts)
        journal = self.context.journal
        try:
            hour = journal.counts_since(utc_iso(now - timedelta(hours=1)))
            shift = journal.counts_since(utc_iso(start.astimezone(timezone.utc)))
            journal_error = None
        except JournalUnreadableError as exc:
            hour, shift, journal_error = {}, {}, str(exc)
        daemon = self.context.daemon
        health = None
        if daemon is not None:
            facts = daemon.status_facts()
            problems = health_problems(facts)
            health = {"healthy": not problems, "problems": problems, "lines": describe(facts, problems),
                      "facts": facts, "dropped_frames": self.dropped_frames}
        return {"mode": "offline" if daemon is None else "daemon", "station": self.context.station,
                "time": utc_iso(now), "counts": {"last_hour": hour, "shift": shift},
                "shift_start": start.isoformat(timespec="minutes"), "journal_error": journal_error,
                "health": health}

    def snapshot(self) -> dict[str, Any]:
        """The first paint: per source its latest verdict, recent verdicts and kept frames, plus status.

        `event_id` is read before the journal, so a stream opened with `after=event_id` misses
        nothing (it may repeat a verdict the snapshot has; the page keys them by seq).
        """
        self.start()
        event_id = self.hub.last_id
        per_source: dict[str, list[dict[str, Any]]] = {}
        journal_error = None
        try:
            messages = self.context.journal.latest(LOOKBACK_ROWS)
        except JournalUnreadableError as exc:
            messages, journal_error = [], str(exc)
        keep = self.context.config.http.live_frames
        for message in reversed(messages):  # newest first
            recent = per_source.setdefault(self.names.of(message), [])
            if len(recent) < keep:
                recent.append(message)
        sources = []
        for source_id in [*self.names.order, *sorted(set(per_source) - set(self.names.order))]:
            recent = per_source.get(source_id, [])
            sources.append({
                "id": source_id,
                "latest": recent[0] if recent else None,
                "recent": [{"seq": m.get("seq"), "verdict": m.get("verdict"), "source": m.get("source"),
                            "publish_time": m.get("publish_time"), "frame": self._kept_frame(m)} for m in recent],
            })
        return {"event_id": event_id, "station": self.context.station,
                "mode": "offline" if self.context.daemon is None else "daemon", "live_frames": keep,
                "sources": sources, "journal_error": journal_error, "status": self.status()}
