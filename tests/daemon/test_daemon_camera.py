"""`inspectd run` with the real GigE Vision simulator: triggered part ids round-trip into verdicts."""

from __future__ import annotations

import time

import zmq

from inspectd.clients.subscribe import VerdictSubscriber
from inspectd.wire.message import decode, validate
from tests.daemon.conftest import free_tcp_endpoint
from tests.daemon.daemon_process import DaemonProcess
from tests.daemon.test_source_aravis import FakeCamera, needs_fake_camera


@needs_fake_camera
def test_triggered_camera_part_ids_round_trip_into_verdicts(tmp_path) -> None:
    camera = FakeCamera(tmp_path)
    camera.start()
    trigger_endpoint = free_tcp_endpoint()
    daemon = DaemonProcess(tmp_path, extra={"sources": [{
        "kind": "aravis", "id": "line-cam", "camera_id": camera.device_id, "mode": "triggered",
        "trigger_endpoint": trigger_endpoint, "frame_timeout_s": 6.0}],
        # The simulator sends a test pattern, not a micrograph: flagged, but its PASS/FAIL kept here.
        "trust": {"ood": {"action": "warn"}}})
    try:
        daemon.start()
        part_ids = [f"PART-{n:03d}" for n in range(4)]
        trigger = zmq.Context.instance().socket(zmq.REQ)
        trigger.setsockopt(zmq.LINGER, 0)
        trigger.connect(trigger_endpoint)
        errors = zmq.Context.instance().socket(zmq.SUB)
        errors.setsockopt(zmq.LINGER, 0)
        errors.setsockopt(zmq.SUBSCRIBE, b"error.e2e")
        errors.connect(daemon.publish)
        with VerdictSubscriber(daemon.publish, daemon.control, from_seq=1) as subscriber:
            for part_id in part_ids:
                trigger.send_json({"part_id": part_id})
                assert trigger.poll(10_000), "no answer from the trigger socket"
                assert trigger.recv_json()["ok"] is True
            verdicts = _collect(subscriber, len(part_ids))
            status = daemon.status()
            # camera gone: a trigger still gets an explicit answer, never silence
            camera.kill()
            trigger.send_json({"part_id": "PART-LOST"})
            assert trigger.poll(10_000)
            trigger.recv_json()
            lost = _collect(subscriber, 1)
            # ... and the line controller hears why on error.<station>
            camera_errors = _errors_until(errors, "camera_lost")
        trigger.close()
        errors.close()
    finally:
        code = daemon.terminate()
        camera.kill()
    assert code == 0
    assert [m["part_id"] for m in verdicts] == part_ids
    for message in verdicts:
        assert message["source_kind"] == "camera"
        assert message["source"].startswith(camera.device_id) or "line-cam" in message["source"]
        assert message["verdict"] in ("PASS", "FAIL")
        assert message["out_of_distribution"] is True and message["reason"].startswith("warning: out of distribution")
        assert message["image"] == {"width": 512, "height": 512, "bit_depth": 8}
    assert len(lost) == 1 and lost[0]["part_id"] == "PART-LOST"
    assert lost[0]["verdict"] == "NO_INSPECTION" and lost[0]["reason"]
    assert camera_errors and camera_errors[-1]["kind"] == "camera_lost", f"no camera_lost on error.e2e, got {camera_errors}"
    for message in camera_errors:
        validate(message, kind="error")
        assert message["source"] == "line-cam" and message["station"] == "e2e" and message["error"]
    assert status["sources"][0]["kind"] == "aravis"
    assert status["sources"][0]["stats"]["triggers"] >= len(part_ids)


def _collect(subscriber: VerdictSubscriber, count: int, timeout_s: float = 120.0) -> list[dict]:
    verdicts = []
    deadline = time.monotonic() + timeout_s
    while len(verdicts) < count and time.monotonic() < deadline:
        message = subscriber.poll(0.5)
        if message is not None:
            verdicts.append(message)
    return verdicts


def _errors_until(sock: zmq.Socket, kind: str, timeout_s: float = 60.0) -> list[dict]:
    """error.<station> messages up to and including the first of `kind` (all of them on timeout)."""
    received: list[dict] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not (received and received[-1]["kind"] == kind):
        if sock.poll(200):
            received.append(decode(sock.recv_multipart()[1]))
    return received
