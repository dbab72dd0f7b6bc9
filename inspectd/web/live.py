"""The Live page area: the latest verdict and overlay per source, counters, health, pushed as they happen.

Routes:
- `GET /live` the page (`static/live.html`, `live.js`).
- `GET /api/live` JSON for the page's first paint (`LiveFeed.snapshot`): per source the latest
  verdict message, the recent verdicts (`http.live_frames`) with the frames still kept, the
  counters of the last hour and the current shift, and the daemon's health (`inspectd
  status`'s facts; null under `inspectd ui`). Its `event_id` is where the stream takes over.
- `GET /api/live/events?after=EVENT_ID` Server-Sent Events (`text/event-stream`): `verdict`
  (`{source_id, message, frame}`), `frame` (`{source_id, seq, key}` once a verdict's overlay is
  kept), `status` (as the snapshot's `status`), `resync` (the page should fetch `/api/live`
  again: it fell behind, or the journal started a new stream); a comment every 15 s keeps an
  idle stream open. At most `live_feed.MAX_STREAMS` at once (503 beyond).
- `GET /api/frames/<key>/<file>` one file of a kept frame (`frame_store.FILES`: image.png,
  enhanced.png, mask.png, overlay.png, meta.json) for every page; 404 once it is no longer
  kept, 400 for a key or file name that is not one (nothing is ever read outside the store).

    $ curl -N http://127.0.0.1:8080/api/live/events
    id: 7
    event: verdict
    data: {"source_id":"folder","message":{"seq":41,"verdict":"PASS",...},"frame":null}
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import Receive, Scope, Send

from inspectd.web.context import WebContext
from inspectd.web.frame_store import UnknownFrameError
from inspectd.web.live_feed import KEEPALIVE_S, SEND_TIMEOUT_S, LiveFeed
from inspectd.web.routing import static_page

logger = logging.getLogger(__name__)

AREA = "live"
EVENTS_PER_CHUNK = 64
MEDIA_TYPES = {".png": "image/png", ".json": "application/json"}


def routes(context: WebContext) -> list[BaseRoute]:

    feed = feed_of(context)
    return [
        static_page("live"),
        Route("/api/live", _snapshot(feed), methods=["GET"]),
        Route("/api/live/events", EventStream(feed), methods=["GET"]),
        Route("/api/frames/{key}/{name}", _frame_file(context), methods=["GET"]),
    ]


def feed_of(context: WebContext) -> LiveFeed:
    """The server's one LiveFeed, registered as the daemon's verdict observer on first use."""
    feed = context.areas.get(AREA)
    if feed is None:
        feed = LiveFeed(context)
        context.areas[AREA] = feed
        context.verdict_observers.append(feed.observe)
    return feed


def _snapshot(feed: LiveFeed) -> Any:
    async def handler(_request: Request) -> Response:
        return JSONResponse(await run_in_threadpool(feed.snapshot), headers={"Cache-Control": "no-store"})
    return handler


def _frame_file(context: WebContext) -> Any:
    async def handler(request: Request) -> Response:
        key, name = request.path_params["key"], request.path_params["name"]
        try:
            path = await run_in_threadpool(context.frames.path, key, name)
        except UnknownFrameError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        if path is None:
            return JSONResponse({"error": f"frame {key} is not kept (any more): the UI keeps the newest frames "
                                          f"within http.overlay_cache_mb"}, status_code=404)
        return FileResponse(str(path), media_type=MEDIA_TYPES[path.suffix],
                            headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"})
    return handler


class _StalledClient(Exception):
    """The browser took no event for SEND_TIMEOUT_S."""


class EventStream:
    """`GET /api/live/events` as a plain ASGI app, so each write can be timed out and a
    disconnect noticed while the stream waits for the next event."""

    def __init__(self, feed: LiveFeed) -> None:
        self.feed = feed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope)
        hub = self.feed.hub
        waker = asyncio.Event()
        if not hub.open_stream(waker):
            refused = JSONResponse({"error": f"too many live streams open (at most {hub.max_streams}); close a Live "
                                             "page elsewhere or try again"}, status_code=503,
                                   headers={"Retry-After": "10"})
            await refused(scope, receive, send)
            return
        disconnected = asyncio.Event()
        watcher = asyncio.create_task(_watch_disconnect(receive, disconnected, waker))
        try:
            await run_in_threadpool(self.feed.start)
            await send({"type": "http.response.start", "status": 200, "headers": [
                (b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache, no-store"),
                (b"x-accel-buffering", b"no"), (b"x-content-type-options", b"nosniff")]})
            await self._pump(send, _cursor(request, hub.last_id), disconnected, waker)
        except _StalledClient:
            logger.warning("live page: a browser took no event for %.0f s; its stream is closed", SEND_TIMEOUT_S)
        finally:
            watcher.cancel()
            hub.close_stream(waker)

    async def _pump(self, send: Send, cursor: int | None, disconnected: asyncio.Event, waker: asyncio.Event) -> None:
        hub = self.feed.hub
        first = "retry: 3000\n\n"
        if cursor is None:  # a Last-Event-ID from before a restart of the server: start afresh
            first += _resync("the server restarted")
            cursor = hub.last_id
        await _write(send, first)
        while not hub.closed and not disconnected.is_set():
            waker.clear()
            events, gap = hub.after(cursor)
            if gap:  # fell behind the ring: the page reloads its snapshot rather than replay
                cursor = hub.last_id
                await _write(send, _resync("this page fell behind"))
                continue
            if events:
                events = events[:EVENTS_PER_CHUNK]
                cursor = events[-1][0]
                await _write(send, "".join(text for _, text in events))
                continue
            try:
                await asyncio.wait_for(waker.wait(), KEEPALIVE_S)
            except asyncio.TimeoutError:
                await _write(send, ": keep-alive\n\n")
        if not disconnected.is_set():
            await asyncio.wait_for(send({"type": "http.response.body", "body": b"", "more_body": False}),
                                   SEND_TIMEOUT_S)


def _cursor(request: Request, last_id: int) -> int | None:
    """Where the stream starts: after the browser's Last-Event-ID (a reconnect), else `after`, else now."""
    text = request.headers.get("last-event-id") or request.query_params.get("after")
    if text is None or not text.isdigit() or len(text) > 18:
        return last_id
    cursor = int(text)
    return cursor if cursor <= last_id else None


def _resync(reason: str) -> str:
    return f"event: resync\ndata: {{\"reason\": \"{reason}\"}}\n\n"


async def _write(send: Send, text: str) -> None:
    try:
        await asyncio.wait_for(send({"type": "http.response.body", "body": text.encode(), "more_body": True}),
                               SEND_TIMEOUT_S)
    except asyncio.TimeoutError:
        raise _StalledClient from None


async def _watch_disconnect(receive: Receive, disconnected: asyncio.Event, waker: asyncio.Event) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            disconnected.set()
            waker.set()
            return
