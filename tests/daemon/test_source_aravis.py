"""Aravis source against the real GigE Vision simulator `arv-fake-gv-camera-0.8`.

The simulator listens on 127.0.0.1:3956 (GVCP), so only one can run per machine: each
test starts its own under a unique serial (and kills/restarts it), and skips, naming the
reason, if another process holds the port. Skipped where the simulator (Debian `aravis-tools`) or PyGObject
with the Aravis typelib (`gir1.2-aravis-0.8`) is missing.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import zmq

from inspectd.errors import SourceConnectionError
from inspectd.sources.aravis_camera import AravisCameraSource, list_cameras, load_aravis
from inspectd.sources.base import SourceItem, SourceState
from tests.daemon.conftest import Recorder, send_trigger, wait_for

FAKE_CAMERA = shutil.which("arv-fake-gv-camera-0.8")
try:
    load_aravis()
    ARAVIS_MISSING = None
except SourceConnectionError as exc:
    ARAVIS_MISSING = str(exc)

needs_fake_camera = pytest.mark.skipif(
    FAKE_CAMERA is None or ARAVIS_MISSING is not None,
    reason=ARAVIS_MISSING or "arv-fake-gv-camera-0.8 not installed (apt-get install aravis-tools)",
)

FAKE_SIZE = (512, 512)
GVCP_PORT = 3956


class FakeCamera:
    """One `arv-fake-gv-camera-0.8 -i 127.0.0.1` process the test can kill and restart."""

    def __init__(self, tmp_path: Path, lost_per_thousand: int = 0) -> None:
        self.serial = "T" + uuid.uuid4().hex[:10]
        self.device_id = f"Aravis-Fake-{self.serial}"
        self.lost_per_thousand = lost_per_thousand
        self.log_path = tmp_path / f"fake-{self.serial}.log"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        # A second simulator would still answer discovery (broadcast) but never get the
        # GVCP port, so the test would talk to the wrong process: refuse to share it.
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            probe.bind(("127.0.0.1", GVCP_PORT))
        except OSError:
            pytest.skip(f"another GigE camera simulator holds 127.0.0.1:{GVCP_PORT}")
        finally:
            probe.close()
        args = [FAKE_CAMERA, "-i", "127.0.0.1", "-s", self.serial]
        if self.lost_per_thousand:
            args += ["-r", str(self.lost_per_thousand)]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        time.sleep(0.2)  # let it bind before the first (1 s) discovery round
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            if self.device_id in list_cameras():
                return
        log_text = self.log_path.read_text(errors="replace")
        self.kill()
        pytest.fail(f"fake camera {self.device_id} never became discoverable: {log_text[-2000:]}")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)
        self.process = None


@pytest.fixture
def fake_camera(tmp_path: Path):
    camera = FakeCamera(tmp_path)
    camera.start()
    yield camera
    camera.kill()


def next_item(source: AravisCameraSource, timeout_s: float = 15.0) -> SourceItem:
    item = source.get(timeout_s=timeout_s)
    assert item is not None, source.stats()
    return item


@needs_fake_camera
def test_frames_flow(fake_camera: FakeCamera) -> None:
    source = AravisCameraSource.from_settings(id="gige", camera_id=fake_camera.device_id, fps_cap=20, buffer_size=8)
    source.start()
    try:
        assert source.state is SourceState.RUNNING
        items = [next_item(source) for _ in range(5)]
    finally:
        source.stop()
    numbers = [item.frame_number for item in items]
    assert numbers == sorted(numbers) and len(set(numbers)) == 5
    camera_ids = [item.metadata["camera_frame_id"] for item in items]
    assert camera_ids == sorted(camera_ids)
    for item in items:
        assert item.pixels.shape == FAKE_SIZE and item.pixels.dtype == np.uint8
        assert item.source == f"{fake_camera.device_id}#{item.frame_number}"
        assert item.metadata["pixel_format"] == "Mono8"
        assert item.pixels.std() > 0  # the simulator's diagonal ramp, not an empty buffer
    stats = source.stats()
    assert (
        stats["frames"] >= 5 and stats["incomplete_buffers"] == 0
        if "incomplete_buffers" in stats
        else True
    )
    assert source.state is SourceState.ENDED


@needs_fake_camera
def test_camera_killed_and_restarted_reconnects(fake_camera: FakeCamera) -> None:
    events = Recorder()
    source = AravisCameraSource.from_settings(
        id="gige",
        camera_id=fake_camera.device_id,
        fps_cap=20,
        frame_timeout_s=0.5,
        lost_after_timeouts=2,
        reconnect_initial_s=0.2,
        reconnect_max_s=1.0,
        on_status=events,
    )
    source.start()
    try:
        next_item(source)
        fake_camera.kill()
        assert wait_for(lambda: source.stats()["camera_lost"] >= 1, timeout_s=20)
        assert source.state is SourceState.RECONNECTING
        while source.get(timeout_s=0.1) is not None:  # frames captured before the kill
            pass
        fake_camera.start()
        after = next_item(source, timeout_s=30)
        assert after.pixels.shape == FAKE_SIZE
        stats = source.stats()
        assert stats["reconnects"] >= 1 and stats["frame_timeouts"] >= 1
        assert source.state is SourceState.RUNNING
        names = events.events()
        assert names.index("camera_lost") < names.index("reconnected")
    finally:
        source.stop()


@needs_fake_camera
def test_triggered_part_ids_and_no_inspection_while_camera_down(
    fake_camera: FakeCamera, zmq_context: zmq.Context
) -> None:
    source = AravisCameraSource.from_settings(
        id="gige-trig",
        camera_id=fake_camera.device_id,
        mode="triggered",
        trigger_endpoint="tcp://127.0.0.1:*",
        frame_timeout_s=2.0,
        reconnect_initial_s=0.2,
        reconnect_max_s=1.0,
        zmq_context=zmq_context,
    )
    source.start()
    try:
        endpoint = source.trigger_endpoint
        assert source.get(timeout_s=0.5) is None  # software-triggered: nothing until asked
        for part in ("S-1", "S-2", "S-3"):
            reply = send_trigger(zmq_context, endpoint, {"part_id": part})
            assert reply["ok"] is True
            item = next_item(source)
            assert item.part_id == part
            assert item.metadata["trigger_id"] == reply["trigger_id"]
            assert item.pixels.shape == FAKE_SIZE

        fake_camera.kill()
        reply = send_trigger(zmq_context, endpoint, {"part_id": "S-down"})
        assert reply["ok"] is True  # accepted; the outcome comes as an item
        down = next_item(source, timeout_s=30)
        assert down.part_id == "S-down" and down.pixels is None
        assert down.metadata["outcome"] == "NO_INSPECTION"
        assert down.metadata["no_inspection_reason"] == "camera_lost"
        assert down.metadata["trigger_id"] == reply["trigger_id"]
        assert down.error.startswith("NO_INSPECTION: camera_lost")

        fake_camera.start()
        assert wait_for(lambda: source.state is SourceState.RUNNING, timeout_s=30)
        reply = send_trigger(zmq_context, endpoint, {"part_id": "S-back"})
        back = next_item(source)
        while back.pixels is None:  # a trigger racing the reconnect may still be refused
            reply = send_trigger(zmq_context, endpoint, {"part_id": "S-back"})
            back = next_item(source)
        assert back.part_id == "S-back" and back.pixels.shape == FAKE_SIZE
        assert source.stats()["reconnects"] >= 1
    finally:
        source.stop()


@needs_fake_camera
def test_incomplete_buffers_are_counted_and_never_inspected(tmp_path: Path) -> None:
    # 0.5 % of GVSP packets dropped: with ~190 packets a frame most frames are incomplete.
    camera = FakeCamera(tmp_path, lost_per_thousand=5)
    source = AravisCameraSource.from_settings(
        id="gige-lossy", camera_id=camera.device_id, frame_timeout_s=2.0, buffer_size=64
    )
    camera.start()
    source.start()
    try:
        items = [next_item(source, timeout_s=30) for _ in range(3)]
        assert wait_for(lambda: source.stats().get("incomplete_buffers", 0) >= 1, timeout_s=20)
    finally:
        source.stop()
        camera.kill()
    for item in items:
        assert item.pixels.shape == FAKE_SIZE
    stats = source.stats()
    assert stats["buffer_missing_packets"] >= 1
    assert stats["camera_lost"] == 0  # broken frames prove the camera is there


@needs_fake_camera
def test_triggered_on_a_lossy_link_triggers_again_until_a_complete_frame_comes(
    tmp_path: Path, zmq_context: zmq.Context
) -> None:
    # 0.3 % of GVSP packets dropped: about 4 in 10 frames arrive incomplete, and a triggered
    # camera sends no other frame, so each of those triggers needs another. With the most
    # retries the config allows (10, one second each) a part goes without a complete frame
    # about once in 10,000 triggers; 20 triggers all but surely meet a broken frame.
    camera = FakeCamera(tmp_path, lost_per_thousand=3)
    source = AravisCameraSource.from_settings(
        id="gige-lossy-triggered", camera_id=camera.device_id, mode="triggered", trigger_endpoint="tcp://127.0.0.1:*",
        frame_timeout_s=11.0, trigger_retries=10, zmq_context=zmq_context,
    )
    camera.start()
    source.start()
    try:
        endpoint = source.trigger_endpoint
        items = []
        for n in range(20):
            assert send_trigger(zmq_context, endpoint, {"part_id": f"L-{n}"})["ok"] is True
            items.append(next_item(source, timeout_s=60))
    finally:
        source.stop()
        camera.kill()
    assert [item.part_id for item in items] == [f"L-{n}" for n in range(20)]
    assert all(item.pixels is not None and item.pixels.shape == FAKE_SIZE for item in items), [
        item.error for item in items]
    stats = source.stats()
    assert stats["retriggers"] >= stats["incomplete_buffers"] >= 1  # each broken frame was triggered again
    assert stats["no_inspections"] == 0


@needs_fake_camera
def test_missing_camera_keeps_retrying() -> None:
    source = AravisCameraSource.from_settings(
        id="gige-none",
        camera_id=f"Aravis-Fake-{uuid.uuid4().hex[:8]}",
        reconnect_initial_s=0.1,
        reconnect_max_s=0.2,
        start_wait_s=5.0,
    )
    source.start()
    try:
        assert source.state is SourceState.RECONNECTING
        assert (
            "not found" in (source.stats()["last_error"] or "")
            or source.stats()["connect_attempts"] >= 1
        )
    finally:
        source.stop()
    assert source.state is SourceState.ENDED


def test_without_pygobject_construction_names_the_install(monkeypatch: pytest.MonkeyPatch) -> None:
    """The module imports without PyGObject; building the source says what to install."""
    monkeypatch.setitem(sys.modules, "gi", None)
    with pytest.raises(SourceConnectionError, match=r"PyGObject<3\.51"):
        AravisCameraSource.from_settings(id="gige-nogi", camera_id="any")
