"""Control-chart alarms on ZeroMQ: a real journal, a real PUB socket on 127.0.0.1, a real SUB.

The planted drift of `test_trends` is committed frame by frame; each rule break must arrive
on `alarm.<station>` once, on the frame that completes it, with the documented fields, and
never again while it goes on, after a restart of the monitor or after the settings change.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import zmq
from prometheus_client import CollectorRegistry
from starlette.testclient import TestClient

from inspectd import config
from inspectd.daemon.app import Daemon
from inspectd.daemon.journal import JOURNAL_FILE, Journal
from inspectd.reports.spc import NELSON, RULE_NAMES, control_limits, find_rule_breaks
from inspectd.web.alarms import AlarmMonitor, SpcSettingsError, load_settings
from inspectd.web.app import create_app
from inspectd.web.auth import AccessGuard
from inspectd.web.context import WebContext
from inspectd.wire.message import decode, validate
from inspectd.wire.publish import Publisher
from tests.web.conftest import make_context
from tests.web.test_trends import POROSITY, STATION, commit_frames, frame_draft

BASELINE = {"metrics": ["porosity_pct", "unmelted_fraction_pct"], "rule_set": "nelson",
            "baseline_from": 1, "baseline_to": 30}
HANG_GUARD_S = 60.0  # only so a broken build fails instead of hanging; nothing is timed


@pytest.fixture
def zmq_context() -> Iterator[zmq.Context]:
    context = zmq.Context()
    yield context
    context.term()


@pytest.fixture
def publisher(zmq_context) -> Iterator[Publisher]:
    with Publisher(STATION, ["tcp://127.0.0.1:*"], context=zmq_context, heartbeat_interval_s=0.05,
                   linger_ms=0) as running:
        yield running


def subscribe(zmq_context: zmq.Context, endpoint: str) -> zmq.Socket:
    """A SUB on `endpoint` for alarms (and heartbeats and errors, to know it is connected and where the end is)."""
    sub = zmq_context.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    for prefix in (b"alarm.", b"heartbeat.", b"error."):
        sub.setsockopt(zmq.SUBSCRIBE, prefix)
    sub.connect(endpoint)
    while next_frame(sub)[0] != f"heartbeat.{STATION}".encode():  # connected: heartbeats come through
        pass
    return sub


def next_frame(sub: zmq.Socket) -> tuple[bytes, dict]:
    if not sub.poll(int(HANG_GUARD_S * 1000)):
        pytest.fail("nothing arrived on the SUB socket")
    topic_frame, payload = sub.recv_multipart()
    return topic_frame, decode(payload)


def alarms_until_end_marker(sub: zmq.Socket, publisher: Publisher) -> list[tuple[bytes, dict]]:
    """Every alarm published so far: PUB keeps order, so all of them arrive before an error sent after them."""
    publisher.publish_error({"kind": "end-of-test"})
    received = []
    while True:
        topic_frame, message = next_frame(sub)
        if topic_frame.startswith(b"error."):
            return received
        if topic_frame.startswith(b"alarm."):
            received.append((topic_frame, message))


def save_baseline(state: Path, body: dict = BASELINE) -> dict:
    answer = TestClient(create_app(make_context(state, config=config.Config(station=STATION)))).post(
        "/api/trends/settings", json=body)
    assert answer.status_code == 200, answer.text
    return answer.json()


def first_detection(series: np.ndarray) -> dict[tuple[str, str | None, int], int]:
    """(rule, direction, first index) of each break in `series` -> the index of the frame that completes it."""
    limits = control_limits(series[:30])
    seen: dict[tuple[str, str | None, int], int] = {}
    for length in range(1, series.size + 1):
        for found in find_rule_breaks(series[:length], limits, NELSON):
            seen.setdefault((found.rule, found.direction, found.first), length - 1)
    return seen


def test_each_break_is_published_once_on_the_frame_that_completes_it(tmp_path, zmq_context, publisher):
    state = tmp_path / "state"
    state.mkdir()
    journal = Journal(state / JOURNAL_FILE)
    try:
        commit_frames(journal, 0, 30)
        save_baseline(state)
        sub = subscribe(zmq_context, publisher.endpoints[0])
        monitor = AlarmMonitor(state, station=STATION, publish=publisher.publish_alarm)
        assert monitor.poll() == []  # the first look: what is journaled already is not news
        assert monitor.status()["watching"] == ["porosity_pct", "unmelted_fraction_pct"]
        raised_on: dict[int, list[dict]] = {}
        for index in range(30, len(POROSITY)):
            commit_frames(journal, index, index + 1)
            raised_on[index + 1] = monitor.poll()
    finally:
        journal.close()

    published = [alarm for alarms in raised_on.values() for alarm in alarms]
    expected = first_detection(POROSITY)
    assert sorted((a["rule"], a["direction"], a["seqs"][0] - 1) for a in published) == sorted(expected)
    for seq, alarms in raised_on.items():  # each on the frame that completes its pattern, and only then
        assert sorted((a["rule"], a["seqs"][0] - 1) for a in alarms) == sorted(
            (rule, first) for (rule, _, first), completed in expected.items() if completed == seq - 1)
    assert {a["metric"] for a in published} == {"porosity_pct"}  # unmelted fraction stayed in control
    assert min(a["window"]["first_seq"] for a in published) >= 56

    received = alarms_until_end_marker(sub, publisher)
    assert [message for _, message in received] == published  # each once, in order, nothing more
    for topic_frame, message in received:
        assert topic_frame == f"alarm.{STATION}".encode()
        validate(message, kind="alarm")
        assert message["station"] == STATION and message["kind"] == "spc_rule_break"
        assert message["rule_name"] == RULE_NAMES[message["rule"]]
        assert message["window"]["first_seq"] == message["seqs"][0]
        assert message["window"]["last_seq"] == message["seqs"][-1]
        assert message["window"]["points"] == len(message["seqs"]) == len(message["values"])
        assert message["values"] == pytest.approx([POROSITY[seq - 1] for seq in message["seqs"]])
        assert message["limits"]["baseline_first_seq"] == 1 and message["limits"]["baseline_last_seq"] == 30
        assert message["limits"]["ucl"] == pytest.approx(control_limits(POROSITY[:30]).ucl)
        assert message["part_ids"][0] == f"P{(message['seqs'][0] - 1) // 3 + 1:03d}"
        assert isinstance(message["epoch"], int) and message["time"].endswith("Z")
    trend = next(message for _, message in received if message["rule"] == "N3")
    assert (trend["metric"], trend["unit"], trend["direction"], len(trend["seqs"])) == ("porosity_pct", "%", "rising", 6)
    sub.close()


def test_a_restart_or_new_settings_do_not_announce_breaks_already_journaled(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    with Journal(state / JOURNAL_FILE) as journal:
        commit_frames(journal, 0, len(POROSITY))
    save_baseline(state)
    sent: list[dict] = []
    monitor = AlarmMonitor(state, station=STATION, publish=sent.append)
    assert monitor.poll() == [] and monitor.poll() == []
    save_baseline(state, {**BASELINE, "rule_set": "western_electric"})
    assert monitor.poll() == [] and sent == []
    assert monitor.status()["rule_set"] == "western_electric"
    with Journal(state / JOURNAL_FILE) as journal:  # the drift goes on: the same breaks, still not news
        journal.commit(frame_draft(len(POROSITY), float(POROSITY[-1]) + 0.1, 18.0), "one-more")
    assert monitor.poll() == [] and sent == []


def test_a_break_longer_than_the_monitor_keeps_is_still_one_alarm(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    sent: list[dict] = []
    with Journal(state / JOURNAL_FILE) as journal:
        commit_frames(journal, 0, 30)
        save_baseline(state)
        monitor = AlarmMonitor(state, station=STATION, publish=sent.append, history_points=20)
        monitor.poll()
        limits = control_limits(POROSITY[:30])
        shifted = limits.centre + 1.5 * limits.sigma + 0.02 * np.resize([1.0, -1.0, 0.5], 60)  # 60 frames high
        for offset, value in enumerate(shifted):
            journal.commit(frame_draft(30 + offset, float(value), 18.0), f"shift-{offset}")
            monitor.poll()
    keys = [(alarm["metric"], alarm["rule"], alarm["direction"]) for alarm in sent]
    assert len(keys) == len(set(keys))
    assert {("porosity_pct", "N2", "high"), ("porosity_pct", "N6", "high")} <= set(keys)


def test_without_settings_the_monitor_idles_and_a_damaged_file_is_reported(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    with Journal(state / JOURNAL_FILE) as journal:
        commit_frames(journal, 0, 40)
    monitor = AlarmMonitor(state, station=STATION, publish=lambda alarm: pytest.fail("nothing to publish"))
    assert monitor.poll() == [] and monitor.status()["watching"] == []
    (state / "ui").mkdir()
    (state / "ui" / "spc.json").write_text("[1, 2")
    assert monitor.poll() == []
    assert "not JSON" in monitor.status()["problem"]
    with pytest.raises(SpcSettingsError):
        load_settings(state / "ui")


def test_the_daemon_runs_the_monitor_and_publishes_through_its_publisher(tmp_path, zmq_context):
    """`inspectd run`: settings saved on the page, frames journaled by the daemon, alarms on its PUB socket."""
    (tmp_path / "in").mkdir()
    cfg = config.parse_object({"station": STATION, "state_dir": str(tmp_path / "state"),
                               "sources": [{"kind": "folder", "path": str(tmp_path / "in")}],
                               "publish": {"bind": ["tcp://127.0.0.1:*"], "heartbeat_interval_s": 0.1},
                               "control": {"bind": "tcp://127.0.0.1:*"}, "metrics": {"enabled": False}})
    daemon = Daemon(cfg, context=zmq_context, registry=CollectorRegistry())
    daemon.start()
    try:
        assert daemon.alarms is not None
        state = Path(cfg.state_dir)
        commit_frames(daemon.journal, 0, 30)
        client = TestClient(create_app(WebContext(cfg, state, AccessGuard(None), daemon=daemon)))
        view = client.post("/api/trends/settings", json=BASELINE).json()
        assert (view["mode"], view["publishing"], view["topic"]) == ("daemon", True, f"alarm.{STATION}")
        assert "publishes a new rule break once on ZeroMQ topic alarm.line-3" in view["note"]
        sub = subscribe(zmq_context, daemon.publisher.endpoints[0])
        deadline = time.monotonic() + HANG_GUARD_S
        while daemon.alarms.status()["last_seq"] != 30 or not daemon.alarms.status()["watching"]:
            assert time.monotonic() < deadline, "the monitor never took the saved settings"
            time.sleep(0.05)
        commit_frames(daemon.journal, 30, len(POROSITY))
        rules: list[str] = []
        while "N1" not in rules or "N3" not in rules:
            topic_frame, message = next_frame(sub)
            if topic_frame == f"alarm.{STATION}".encode():
                validate(message, kind="alarm")
                rules.append(message["rule"])
        listed = client.get("/api/trends/alarms").json()
        assert {"N1", "N3"} <= {alarm["rule"] for alarm in listed["alarms"]}
        assert listed["monitor"]["published"] >= 2
        sub.close()
    finally:
        daemon.stop()
