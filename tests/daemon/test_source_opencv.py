"""OpenCV camera source against real MJPG video files, and the ZeroMQ trigger path."""

from __future__ import annotations

import os
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import zmq

from inspectd.clients.backoff import Backoff
from inspectd.errors import ConfigError, SourceConnectionError
from inspectd.sources.base import Severity, SourceItem, SourceState, sha256_of_pixels
from inspectd.sources.opencv_camera import (
    OpenCVCameraSource,
    OpenCVSourceConfig,
    is_live_target,
    to_grey,
)
from inspectd.sources.registry import create_source
from inspectd.sources.trigger import TriggerServer
from tests.daemon.conftest import Recorder, send_trigger, wait_for

WIDTH, HEIGHT = 64, 48
LEVEL_STEP = 12  # grey level added per frame, so frame order is visible in the pixels


def write_video(path: Path, n_frames: int) -> Path:
    """An MJPG .avi whose frame i is a flat BGR image of grey level 20 + 12*i."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (WIDTH, HEIGHT))
    assert writer.isOpened()
    for i in range(n_frames):
        writer.write(np.full((HEIGHT, WIDTH, 3), 20 + LEVEL_STEP * i, np.uint8))
    writer.release()
    return path


def level_index(item: SourceItem) -> int:
    """Which frame of the file an item shows, from its brightness."""
    assert item.pixels is not None
    return round((float(item.pixels.mean()) - 20) / LEVEL_STEP)


def take(source: OpenCVCameraSource, n: int, timeout_s: float = 10.0) -> list[SourceItem]:
    items = []
    deadline = time.monotonic() + timeout_s
    while len(items) < n and time.monotonic() < deadline:
        item = source.get(timeout_s=0.5)
        if item is not None:
            items.append(item)
    return items


def test_video_file_frames_flow_then_end(tmp_path: Path) -> None:
    video = write_video(tmp_path / "clip.avi", 6)
    events = Recorder()
    source = OpenCVCameraSource.from_settings(id="cam-a", device=str(video), buffer_size=16, on_status=events)
    source.start()
    items = take(source, 6)
    assert wait_for(lambda: source.state is SourceState.ENDED)
    assert source.get(timeout_s=0.2) is None
    assert source.finished

    assert [item.frame_number for item in items] == list(range(6))
    assert [level_index(item) for item in items] == list(range(6))
    for item in items:
        assert item.kind == "camera"
        assert item.pixels.shape == (HEIGHT, WIDTH) and item.pixels.dtype == np.uint8
        assert item.sha256 == sha256_of_pixels(item.pixels)
        assert item.source == f"{video}#{item.frame_number}"
        assert item.part_id is None
        assert item.capture_time.tzinfo is not None
    stats = source.stats()
    assert stats["frames"] == 6 and stats["drops"] == 0 and stats["state"] == "ENDED"
    assert "connected" in events.events() and "end_of_stream" in events.events()
    source.stop()
    assert source.state is SourceState.ENDED


def test_an_illegal_state_change_in_the_loop_is_reported_not_swallowed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    events = Recorder()
    source = OpenCVCameraSource.from_settings(id="cam-bug", device=str(tmp_path / "none.avi"), on_status=events)
    with caplog.at_level("ERROR", logger="inspectd.sources"):
        source._safe_state(SourceState.RUNNING)  # NOT_STARTED -> RUNNING: the machine refuses it
    assert source.state is SourceState.NOT_STARTED
    update = events.updates[-1]
    assert update.event == "illegal_state_change" and update.severity is Severity.ERROR
    assert update.payload["error"] == "illegal source state transition NOT_STARTED -> RUNNING"
    assert "illegal source state transition NOT_STARTED -> RUNNING" in caplog.text
    assert source.stats()["errors"] == 1
    source._stopping.set()  # a stop racing with the loop: only ENDED is taken, quietly
    source._safe_state(SourceState.RUNNING)
    assert source.state is SourceState.NOT_STARTED and len(events.updates) == 1
    source.stop()
    assert source.state is SourceState.ENDED


def test_loop_rewinds_and_frame_numbers_keep_increasing(tmp_path: Path) -> None:
    video = write_video(tmp_path / "loop.avi", 4)
    source = OpenCVCameraSource.from_settings(id="cam-loop", device=str(video), at_end="loop", buffer_size=64)
    source.start()
    try:
        items = take(source, 10)
    finally:
        source.stop()
    assert len(items) == 10
    numbers = [item.frame_number for item in items]
    assert numbers == sorted(numbers) and len(set(numbers)) == 10
    # Free-run may drop frames if this test lags, so check each frame against its file
    # position rather than expecting an exact sequence.
    assert [level_index(item) for item in items] == [
        item.metadata["file_frame_index"] for item in items
    ]
    assert max(numbers) >= 8 and source.stats()["rewinds"] >= 2


def test_free_run_drops_the_oldest_frames_when_the_pipeline_lags(tmp_path: Path) -> None:
    video = write_video(tmp_path / "burst.avi", 12)
    source = OpenCVCameraSource.from_settings(id="cam-burst", device=str(video), buffer_size=3)
    source.start()
    assert wait_for(lambda: source.state is SourceState.ENDED)  # nobody consumed meanwhile
    stats = source.stats()
    assert stats["frames"] == 12
    assert stats["drops"] == 9 and stats["queued"] == 3
    kept = take(source, 3)
    assert [item.frame_number for item in kept] == [9, 10, 11]  # the freshest survive
    assert [level_index(item) for item in kept] == [9, 10, 11]
    source.stop()


def test_absent_camera_reconnects_with_backoff_until_it_appears(tmp_path: Path) -> None:
    target = tmp_path / "later.avi"
    events = Recorder()
    source = OpenCVCameraSource.from_settings(
        id="cam-late",
        device=str(target),
        reconnect_initial_s=0.05,
        reconnect_max_s=0.2,
        start_wait_s=2.0,
        buffer_size=16,
        on_status=events,
    )
    source.start()
    try:
        assert source.state is SourceState.RECONNECTING
        assert wait_for(lambda: source.stats()["connect_attempts"] >= 3)
        assert "connect_failed" in events.events()
        # The "camera" appears (atomically, as a finished file).
        write_video(tmp_path / "staging.avi", 3)
        os.replace(tmp_path / "staging.avi", target)
        items = take(source, 3)
        assert [item.frame_number for item in items] == [0, 1, 2]
        assert "connected" in events.events()
    finally:
        source.stop()


def test_triggered_part_ids_round_trip_and_end_gives_no_inspection(
    tmp_path: Path, zmq_context: zmq.Context
) -> None:
    video = write_video(tmp_path / "parts.avi", 3)
    source = OpenCVCameraSource.from_settings(
        id="cam-trig",
        device=str(video),
        mode="triggered",
        trigger_endpoint="tcp://127.0.0.1:*",
        zmq_context=zmq_context,
    )
    source.start()
    try:
        endpoint = source.trigger_endpoint
        assert endpoint and endpoint.startswith("tcp://127.0.0.1:")
        assert source.get(timeout_s=0.3) is None  # no trigger, no frame
        replies, items = [], []
        for part in ("P-1", "P-2", "P-3", "P-4"):
            reply = send_trigger(zmq_context, endpoint, {"part_id": part, "station": "s1"})
            assert reply["ok"] is True and reply["part_id"] == part
            replies.append(reply)
            item = source.get(timeout_s=10)
            assert item is not None
            items.append(item)
        # Three frames carry their part ids, in order, with the trigger id echoed back.
        for i in range(3):
            assert items[i].part_id == f"P-{i + 1}"
            assert items[i].pixels is not None and items[i].error is None
            assert items[i].metadata["trigger_id"] == replies[i]["trigger_id"]
            assert items[i].metadata["trigger"] == {"station": "s1"}
            assert level_index(items[i]) == i
        # The video is over: the fourth trigger is answered explicitly, not ignored.
        last = items[3]
        assert last.pixels is None and last.part_id == "P-4"
        assert last.metadata["outcome"] == "NO_INSPECTION"
        assert last.metadata["no_inspection_reason"] == "ended"
        assert last.metadata["trigger_id"] == replies[3]["trigger_id"]
        assert last.error.startswith("NO_INSPECTION: ended")
        assert wait_for(lambda: source.state is SourceState.ENDED)
        refused = send_trigger(zmq_context, endpoint, {"part_id": "P-5"})
        assert refused["ok"] is False and "ended" in refused["error"]
        stats = source.stats()
        assert stats["triggers"] == 4 and stats["no_inspections"] == 1
        assert stats["triggers_received"] == 4 and stats["triggers_refused"] == 1
    finally:
        source.stop()


def test_trigger_server_refuses_bad_messages_and_overflow(zmq_context: zmq.Context) -> None:
    server = TriggerServer("tcp://127.0.0.1:*", source_id="t", max_pending=2, context=zmq_context)
    server.start()
    try:
        endpoint = server.bound_endpoint
        assert send_trigger(zmq_context, endpoint, b"not json")["ok"] is False
        assert send_trigger(zmq_context, endpoint, ["P-1"])["ok"] is False
        assert "part_id" in send_trigger(zmq_context, endpoint, {"part": "P-1"})["error"]
        assert send_trigger(zmq_context, endpoint, {"part_id": ""})["ok"] is False
        first = send_trigger(zmq_context, endpoint, {"part_id": "A"})
        second = send_trigger(zmq_context, endpoint, {"part_id": "B"})
        assert first["ok"] and second["ok"] and first["trigger_id"] != second["trigger_id"]
        busy = send_trigger(zmq_context, endpoint, {"part_id": "C"})
        assert busy["ok"] is False and busy["error"].startswith("busy")
        assert [server.next().part_id, server.next().part_id] == ["A", "B"]
        assert server.next() is None
        assert server.received == 2 and server.refused == 5
    finally:
        server.stop()


def test_trigger_endpoint_in_use_fails_at_start(zmq_context: zmq.Context) -> None:
    holder = TriggerServer("tcp://127.0.0.1:*", context=zmq_context)
    holder.start()
    try:
        source = OpenCVCameraSource.from_settings(
            id="cam-clash",
            device="missing.avi",
            mode="triggered",
            trigger_endpoint=holder.bound_endpoint,
            zmq_context=zmq_context,
        )
        with pytest.raises(SourceConnectionError, match="cannot bind trigger endpoint"):
            source.start()
        assert source.state is SourceState.ERROR
        source.stop()
    finally:
        holder.stop()


def test_registry_builds_the_opencv_source(tmp_path: Path) -> None:
    video = write_video(tmp_path / "reg.avi", 2)
    source = create_source("opencv", id="cam-reg", device=str(video), buffer_size=8)
    assert isinstance(source, OpenCVCameraSource)
    with source:
        assert len(take(source, 2)) == 2
    with pytest.raises(ConfigError):
        create_source("opencv", id="cam-bad", device=0, fps=10)


def test_settings_are_checked_by_the_config_section() -> None:
    with pytest.raises(ConfigError, match="opencv source: mode = 'sometimes': Input should be 'free_run' or 'triggered'"):
        OpenCVCameraSource.from_settings(id="c", device=0, mode="sometimes")
    with pytest.raises(ConfigError, match="fps_cap = 0: Input should be greater than 0"):
        OpenCVCameraSource.from_settings(id="c", device=0, fps_cap=0)
    with pytest.raises(ConfigError, match="at_end = 'bounce'"):
        OpenCVCameraSource.from_settings(id="c", device=0, at_end="bounce")
    with pytest.raises(ConfigError, match="reconnect_initial_s .* must not exceed reconnect_max_s"):
        OpenCVCameraSource.from_settings(id="c", device=0, reconnect_initial_s=5.0, reconnect_max_s=1.0)
    # the section's defaults are the source's: the constructor has none of its own
    source = OpenCVCameraSource(OpenCVSourceConfig(id="c", device="3"))
    assert (source.source_id, source.device, source.mode, source.frame_timeout_s) == ("c", 3, "free_run", 2.0)
    assert source._buffer.maxsize == OpenCVSourceConfig.model_fields["buffer_size"].default


def test_helpers() -> None:
    assert is_live_target(0) and is_live_target("2") and is_live_target("rtsp://10.0.0.5/stream")
    assert not is_live_target("/data/clip.avi")
    assert to_grey(np.zeros((3, 4, 4), np.uint8)).shape == (3, 4)
    assert to_grey(np.zeros((3, 4, 1), np.uint8)).shape == (3, 4)
    backoff = Backoff(0.1, 0.5)
    assert [backoff.next() for _ in range(5)] == [0.1, 0.2, 0.4, 0.5, 0.5]
    backoff.reset()
    assert backoff.next() == 0.1
