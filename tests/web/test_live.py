"""The Live page over a real daemon: verdicts pushed to browsers, frames kept, the pipeline never held back.

Everything is real: `inspectd run` in a child process watching a folder (its web UI on
127.0.0.1, a free port the daemon reports in `status`), real synthetic micrographs, the real
journal, Server-Sent Events read over plain HTTP and in headless chromium.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import cv2
import numpy as np
import pytest
import zmq
from prometheus_client import CollectorRegistry

from inspectd import config
from inspectd.daemon.app import Daemon
from inspectd.data import synth
from inspectd.web.live_feed import EventHub, shift_start
from tests.daemon.conftest import drop_files, free_tcp_endpoint, wait_for
from tests.daemon.daemon_process import DaemonProcess
from tests.web.conftest import SCREENSHOTS


class EventReader:
    """A Live stream read over a plain HTTP connection, one Server-Sent Event at a time."""

    def __init__(self, base_url: str, path: str = "/api/live/events", headers: dict[str, str] | None = None) -> None:
        parts = urlsplit(base_url)
        self.connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=120)
        self.connection.request("GET", path, headers=headers or {})
        self.response = self.connection.getresponse()

    def next_event(self) -> tuple[str, dict[str, Any]]:
        kind, data = "message", ""
        while True:
            line = self.response.readline().decode("utf-8")
            if not line:
                msg = "the stream ended"
                raise EOFError(msg)
            line = line.rstrip("\n")
            if line == "":
                if data:
                    return kind, json.loads(data)
                kind = "message"
                continue
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "event":
                kind = value
            elif name == "data":
                data += value

    def verdicts(self, count: int) -> list[dict[str, Any]]:
        """The next `count` verdict events' messages (other events are skipped)."""
        found: list[dict[str, Any]] = []
        while len(found) < count:
            kind, data = self.next_event()
            if kind == "verdict":
                found.append(data["message"])
        return found

    def close(self) -> None:
        self.connection.close()


@pytest.fixture(scope="module")
def micrographs(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("micrographs")
    return synth.write_dataset(folder, 4, 240, 320, seed=21, masks_dir=folder / "masks")


@pytest.fixture
def daemon(tmp_path) -> Iterator[DaemonProcess]:
    process = DaemonProcess(tmp_path, extra={"http": {"listen": "127.0.0.1:0"}}).start()
    process.url = process.status()["http"]
    yield process
    assert process.terminate() == 0


def _json(url: str) -> Any:
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    try:
        connection.request("GET", parts.path + (f"?{parts.query}" if parts.query else ""))
        response = connection.getresponse()
        return response.status, json.loads(response.read() or b"null")
    finally:
        connection.close()


def test_the_live_page_shows_a_dropped_file_s_verdict_and_overlay_pushed_by_the_daemon(daemon, micrographs, page):
    page.goto(f"{daemon.url}/live")
    page.wait_for_selector("#connection.live")
    assert page.locator(".source-card").count() == 1  # the configured source, waiting for its first verdict
    drop_files(micrographs[:1], daemon.inbox)
    card = page.locator(".source-card[data-source='folder']")
    card.locator(".badge.PASS").wait_for()  # pushed over the stream: the page was not reloaded
    card.locator("img[alt='overlay of seq-1']").wait_for()
    assert "seq 1" in card.inner_text() and micrographs[0].name in card.inner_text()
    assert "porosity" in card.inner_text() and "confidence" in card.inner_text()

    # More frames and a file that is no image: each verdict arrives, counters and health follow.
    junk = daemon.work_dir / "truncated.png"
    junk.write_bytes(micrographs[1].read_bytes()[:300])
    drop_files([*micrographs[1:], junk], daemon.inbox, prefix="more-")
    card.locator(".strip button", has_text="5").wait_for()
    card.locator(".badge.ERROR").wait_for()
    assert "No picture" in card.inner_text()
    page.locator("#counters td.num", has_text="4").first.wait_for()
    assert "healthy" in page.locator("#health").inner_text()
    assert "RUNNING" in page.locator("#health").inner_text()

    # The newest frame with a picture, for the screenshot: click its chip in the strip.
    card.locator(".strip button", has_text="4").click()
    card.locator("img[alt='overlay of seq-4']").wait_for()
    page.wait_for_function("document.querySelector(\"img[alt='overlay of seq-4']\").complete")
    assert card.locator("a.review").get_attribute("href") == "/review?key=seq-4"
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "live.png"), full_page=True)


def test_the_stream_delivers_each_new_verdict_and_its_kept_frame(daemon, micrographs):
    reader = EventReader(daemon.url)
    try:
        assert reader.response.status == 200
        assert reader.response.getheader("content-type").startswith("text/event-stream")
        drop_files(micrographs[:2], daemon.inbox)
        seen: dict[str, list[Any]] = {"verdict": [], "frame": []}
        while len(seen["verdict"]) < 2 or len(seen["frame"]) < 2:
            kind, data = reader.next_event()
            if kind in seen:
                seen[kind].append(data)
    finally:
        reader.close()
    assert [event["message"]["seq"] for event in seen["verdict"]] == [1, 2]
    assert {event["source_id"] for event in seen["verdict"]} == {"folder"}
    assert sorted(event["key"] for event in seen["frame"]) == ["seq-1", "seq-2"]

    # The kept frame is what `inspectd analyze` shows: overlay and mask of the frame's own size.
    for name in ("overlay.png", "mask.png", "image.png", "enhanced.png"):
        connection = http.client.HTTPConnection(urlsplit(daemon.url).hostname, urlsplit(daemon.url).port, timeout=60)
        connection.request("GET", f"/api/frames/seq-1/{name}")
        response = connection.getresponse()
        assert response.status == 200 and response.getheader("content-type") == "image/png"
        pixels = cv2.imdecode(np.frombuffer(response.read(), np.uint8), cv2.IMREAD_UNCHANGED)
        connection.close()
        assert pixels.shape[:2] == (240, 320)
    status, meta = _json(f"{daemon.url}/api/frames/seq-1/meta.json")
    assert status == 200 and meta["seq"] == 1 and meta["verdict"] == "PASS"
    status, snapshot = _json(f"{daemon.url}/api/live")
    assert status == 200 and snapshot["mode"] == "daemon"
    [source] = snapshot["sources"]
    assert source["id"] == "folder" and source["latest"]["seq"] == 2
    assert [item["frame"] for item in source["recent"]] == ["seq-2", "seq-1"]
    assert snapshot["status"]["counts"]["last_hour"] == {"PASS": 2}
    assert snapshot["status"]["health"]["healthy"] is True


def test_a_stalled_stream_reader_does_not_hold_back_verdicts(daemon, tmp_path):
    frames = synth.write_dataset(tmp_path / "many", 60, 96, 128, seed=3, masks_dir=tmp_path / "many" / "masks")
    host, port = urlsplit(daemon.url).hostname, urlsplit(daemon.url).port
    stalled = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # fills at once, then never read
    stalled.connect((host, port))
    stalled.sendall(b"GET /api/live/events HTTP/1.1\r\nHost: x\r\n\r\n")
    reader = EventReader(daemon.url)
    try:
        drop_files(frames, daemon.inbox)
        status = daemon.wait_processed(len(frames))  # every file inspected, journaled and published
        assert status["counts"] == {"PASS": len(frames)} and status["last_seq"] == len(frames)
        streamed = reader.verdicts(len(frames))  # a browser that reads gets every one of them too
        assert [m["seq"] for m in streamed] == list(range(1, len(frames) + 1))
        assert _json(f"{daemon.url}/healthz")[0] == 200
    finally:
        reader.close()
        stalled.close()


def test_an_observer_and_a_handler_that_raise_leave_the_daemon_publishing(tmp_path, micrographs, caplog):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    cfg = config.parse_object({
        "station": "faulty", "state_dir": str(tmp_path / "state"), "metrics": {"port": 0},
        "publish": {"bind": [free_tcp_endpoint()]}, "control": {"bind": free_tcp_endpoint()},
        "http": {"listen": "127.0.0.1:0"}, "rules": [{"metric": "porosity_pct", "op": "<=", "limit": 50.0}],
        "sources": [{"kind": "folder", "path": str(inbox), "stable_s": 0.2, "rescan_interval_s": 1.0}],
    })
    context = zmq.Context()
    daemon = Daemon(cfg, context=context, registry=CollectorRegistry())
    try:
        daemon.start()
        calls: list[int] = []

        def broken_observer(message: dict[str, Any], _result: Any) -> None:
            calls.append(message["seq"])
            msg = "observer bug"
            raise RuntimeError(msg)

        def broken_snapshot() -> dict[str, Any]:
            msg = "handler bug"
            raise RuntimeError(msg)

        daemon.pipeline.add_observer(broken_observer)
        daemon.web.context.areas["live"].snapshot = broken_snapshot
        url = daemon.status_facts()["http"]
        status, body = _json(f"{url}/api/live")
        assert status == 500 and body == {"error": "internal error: RuntimeError"}
        reader = EventReader(url)
        try:
            drop_files(micrographs, inbox)
            streamed = reader.verdicts(len(micrographs))
        finally:
            reader.close()
        assert [m["verdict"] for m in streamed] == ["PASS"] * len(micrographs)
        assert wait_for(lambda: daemon.pipeline.progress == len(micrographs), timeout_s=60)
        assert calls == [1, 2, 3, 4]
        assert sum("verdict observer" in r.getMessage() for r in caplog.records) == len(micrographs)
        assert _json(f"{url}/healthz") == (200, {"status": "ok", "mode": "daemon", "station": "faulty"})
    finally:
        daemon.stop()
        context.term()


def test_the_event_ring_reports_a_gap_and_wakes_streams_from_any_thread():
    hub = EventHub(capacity=3)

    async def scenario() -> list[int]:
        waker = asyncio.Event()
        assert hub.open_stream(waker)
        thread = threading.Thread(target=lambda: [hub.publish("verdict", {"seq": n}) for n in range(5)])
        thread.start()
        await asyncio.wait_for(waker.wait(), 60)
        thread.join()
        hub.close_stream(waker)
        return [event_id for event_id, _ in hub.after(0)[0]]

    woken: list[list[int]] = []
    loop_thread = threading.Thread(target=lambda: woken.append(asyncio.run(scenario())))  # a loop of its own, as
    loop_thread.start()  # the server's; the browser fixture may own this thread's loop
    loop_thread.join()
    assert woken == [[3, 4, 5]]
    assert hub.after(0)[1] is True and hub.after(2) == (hub.after(0)[0], False)


def test_the_shift_counter_starts_at_the_latest_shift_start():
    from datetime import datetime

    evening = datetime(2024, 5, 1, 23, 30).astimezone()
    assert shift_start(evening, ["06:00", "14:00", "22:00"]).strftime("%H:%M") == "22:00"
    early = datetime(2024, 5, 2, 5, 59).astimezone()
    assert shift_start(early, ["06:00", "14:00", "22:00"]).strftime("%d %H:%M") == "01 22:00"
