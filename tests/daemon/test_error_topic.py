"""`error.<station>`: which problems go out, what the messages hold, and how repeats are held back."""

from __future__ import annotations

from datetime import datetime, timezone

import zmq

from inspectd.daemon.error_topic import EVENTS_WITH_A_VERDICT, ErrorReporter, describe
from inspectd.sources.base import Severity, StatusUpdate
from inspectd.wire.message import validate
from inspectd.wire.publish import Publisher
from tests.daemon.conftest import recv_messages


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _update(event: str, severity: Severity, **payload: object) -> StatusUpdate:
    return StatusUpdate("cam-1", datetime.now(timezone.utc), severity, event, payload)


def test_source_problems_go_out_once_per_interval_and_say_how_many_were_held_back() -> None:
    sent: list[dict] = []
    counted: list[str] = []
    clock = Clock()
    reporter = ErrorReporter(sent.append, station="line3", epoch=2, repeat_after_s=10.0, counted=counted.append,
                             clock=clock)
    for _ in range(3):
        reporter.on_source_status(_update("connect_failed", Severity.WARNING, error="no device", camera_id="F1"))
        clock.now += 1.0
    reporter.on_source_status(_update("camera_lost", Severity.WARNING, reason="no frame in 5.0 s"))
    clock.now += 10.0
    reporter.on_source_status(_update("connect_failed", Severity.WARNING, error="no device", camera_id="F1"))

    assert [(m["kind"], m["source"], m["error"]) for m in sent] == [
        ("connect_failed", "cam-1", "no device (camera_id=F1)"),
        ("camera_lost", "cam-1", "no frame in 5.0 s"),
        ("connect_failed", "cam-1", "no device (camera_id=F1) (and 2 more like it since the last report)"),
    ]
    assert counted == ["connect_failed"] * 3 + ["camera_lost", "connect_failed"]
    for message in sent:
        validate(message, kind="error")
        assert message["station"] == "line3" and message["epoch"] == 2


def test_info_events_and_problems_that_end_in_a_verdict_are_not_sent_again() -> None:
    sent: list[dict] = []
    reporter = ErrorReporter(sent.append, station="s", epoch=1)
    reporter.on_source_status(_update("reconnected", Severity.INFO, camera_id="F1"))
    for event in sorted(EVENTS_WITH_A_VERDICT):
        reporter.on_source_status(_update(event, Severity.ERROR, reason="its own ERROR verdict says this"))
    assert sent == []
    reporter.on_source_status(_update("state_changed", Severity.ERROR, old="running", new="error"))
    assert [m["error"] for m in sent] == ["state changed (old=running, new=error)"]


def test_a_failing_send_is_logged_never_raised() -> None:
    def refuse(_message: dict) -> None:
        msg = "Publisher is closed"
        raise RuntimeError(msg)

    reporter = ErrorReporter(refuse, station="s", epoch=None)
    assert reporter.report("thread_failed", "boom") is False
    assert describe(_update("events_lost", Severity.WARNING)) == "events lost"


def test_reports_reach_a_subscriber_through_the_real_publisher(zmq_context: zmq.Context) -> None:
    with Publisher("line3", ["tcp://127.0.0.1:*"], context=zmq_context, heartbeat_interval_s=0.05,
                   epoch=7) as publisher:
        sub = zmq_context.socket(zmq.SUB)
        sub.setsockopt(zmq.SUBSCRIBE, b"error.line3")
        sub.connect(publisher.endpoints[0])
        reporter = ErrorReporter(publisher.publish_error, station="line3", epoch=7, repeat_after_s=0.0)
        received: list[dict] = []
        for _ in range(50):  # PUB slow joiner: report until the subscription has arrived
            reporter.report("pipeline_stalled", "no progress for 61.0 s with work pending")
            received = recv_messages(sub, 1, timeout_s=0.1, kind="error")
            if received:
                break
        sub.close()
    assert received and received[0]["kind"] == "pipeline_stalled" and received[0]["epoch"] == 7
