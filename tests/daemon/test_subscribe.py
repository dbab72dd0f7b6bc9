"""The reference subscriber against a real journal, PUB and control socket: no gaps, no duplicates."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from inspectd.clients.control import ControlTimeoutError
from inspectd.clients.subscribe import VerdictSubscriber, format_line, run
from inspectd.daemon.control_server import ControlServer, replay_handler
from inspectd.wire.message import build_error_message, validate
from tests.daemon.conftest import MiniDaemon, free_tcp_endpoint, make_draft, wait_for
from tests.daemon.daemon_process import DaemonProcess

REPO_ROOT = Path(__file__).resolve().parents[2]


def collect(subscriber: VerdictSubscriber, until_seq: int, *, timeout_s: float = 20.0,
            retry_replay: bool = False) -> list[dict]:
    """Poll until `until_seq` was delivered; validate every message against the schema.

    `retry_replay` keeps polling through replay failures, as a bridge would while the
    daemon restarts.
    """
    delivered: list[dict] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and (not delivered or delivered[-1]["seq"] < until_seq):
        try:
            message = subscriber.poll(0.2)
        except ControlTimeoutError:
            if not retry_replay:
                raise
            continue
        if message is not None:
            validate(message)
            delivered.append(message)
    return delivered


def seqs(messages: list[dict]) -> list[int]:
    return [m["seq"] for m in messages]


def joined(subscriber: VerdictSubscriber) -> bool:
    """Slow joiner: wait until a heartbeat came through, so the subscription is in place."""
    subscriber.poll(0.02)
    return subscriber.last_heartbeat is not None


def test_live_verdicts_in_order_from_now_on(mini_daemon, zmq_context):
    mini_daemon.emit(5)  # before the subscriber exists: not delivered without from_seq
    assert mini_daemon.publisher.flush(10.0)
    with VerdictSubscriber(mini_daemon.publish_endpoint, mini_daemon.control_endpoint,
                           context=zmq_context) as subscriber:
        assert wait_for(lambda: joined(subscriber))
        sent = mini_daemon.emit(100)
        delivered = collect(subscriber, 105)
    assert delivered == sent
    assert seqs(delivered) == list(range(6, 106))


def test_late_joiner_replays_from_seq_then_goes_live(mini_daemon, zmq_context):
    mini_daemon.emit(40)
    with VerdictSubscriber(mini_daemon.publish_endpoint, mini_daemon.control_endpoint,
                           from_seq=1, context=zmq_context) as subscriber:
        publishing = threading.Thread(target=lambda: [mini_daemon.emit(1) or time.sleep(0.002) for _ in range(60)])
        publishing.start()  # live traffic while the subscriber catches up
        delivered = collect(subscriber, 100)
        publishing.join()
    assert seqs(delivered) == list(range(1, 101))
    assert subscriber.replayed_count >= 40
    assert subscriber.lost_count == 0


def test_replay_is_paged_when_the_gap_exceeds_one_answer(tmp_path, zmq_context):
    daemon = MiniDaemon(tmp_path, zmq_context, replay_batch=7)
    try:
        daemon.commit(50)
        with VerdictSubscriber(daemon.publish_endpoint, daemon.control_endpoint, from_seq=3,
                               context=zmq_context) as subscriber:
            delivered = collect(subscriber, 50)
    finally:
        daemon.close()
    assert seqs(delivered) == list(range(3, 51))


def test_gap_in_live_stream_is_filled_by_replay(mini_daemon, zmq_context):
    with VerdictSubscriber(mini_daemon.publish_endpoint, mini_daemon.control_endpoint,
                           context=zmq_context) as subscriber:
        assert wait_for(lambda: joined(subscriber))
        mini_daemon.emit(3)
        mini_daemon.commit(10)  # journaled but never reached the subscriber (PUB dropped them)
        mini_daemon.emit(3)
        mini_daemon.commit(2)
        mini_daemon.emit(1)
        delivered = collect(subscriber, 19)
    assert seqs(delivered) == list(range(1, 20))
    assert subscriber.replayed_count == 12


def test_lost_tail_is_noticed_from_heartbeats(mini_daemon, zmq_context):
    with VerdictSubscriber(mini_daemon.publish_endpoint, mini_daemon.control_endpoint,
                           context=zmq_context) as subscriber:
        assert wait_for(lambda: joined(subscriber))
        mini_daemon.emit(2)
        mini_daemon.commit(4)  # the last ones, dropped: no later verdict will reveal the gap
        delivered = collect(subscriber, 6)
    assert seqs(delivered) == [1, 2, 3, 4, 5, 6]


def test_duplicates_are_dropped(mini_daemon, zmq_context):
    with VerdictSubscriber(mini_daemon.publish_endpoint, mini_daemon.control_endpoint,
                           context=zmq_context) as subscriber:
        assert wait_for(lambda: joined(subscriber))
        sent = mini_daemon.emit(5)
        for message in sent[1:3] + sent:  # re-sent: overlap with live traffic
            mini_daemon.publisher.publish_verdict(message)
        sent += mini_daemon.emit(1)
        delivered = collect(subscriber, 6)
        assert subscriber.poll(0.2) is None
    assert seqs(delivered) == [1, 2, 3, 4, 5, 6]
    assert subscriber.duplicate_count == 7


def test_from_seq_in_the_future_waits_for_it(mini_daemon, zmq_context):
    mini_daemon.emit(3)
    with VerdictSubscriber(mini_daemon.publish_endpoint, mini_daemon.control_endpoint,
                           from_seq=6, context=zmq_context) as subscriber:
        assert subscriber.poll(0.1) is None
        assert wait_for(lambda: joined(subscriber))
        mini_daemon.emit(5)
        delivered = collect(subscriber, 8)
    assert seqs(delivered) == [6, 7, 8]


def test_pruned_seqs_are_counted_lost_and_delivery_goes_on(tmp_path, zmq_context):
    daemon = MiniDaemon(tmp_path, zmq_context, retention_rows=5)
    try:
        daemon.commit(20)
        daemon.journal.prune()
        with VerdictSubscriber(daemon.publish_endpoint, daemon.control_endpoint, from_seq=1,
                               context=zmq_context) as subscriber:
            delivered = collect(subscriber, 20)
            assert wait_for(lambda: joined(subscriber))
            daemon.emit(1)
            delivered += collect(subscriber, 21)
    finally:
        daemon.close()
    assert seqs(delivered) == [16, 17, 18, 19, 20, 21]
    assert subscriber.lost_count == 15


def test_unreachable_control_raises_and_a_later_poll_resumes(tmp_path, zmq_context):
    daemon = MiniDaemon(tmp_path, zmq_context)
    control_endpoint = free_tcp_endpoint()
    try:
        with VerdictSubscriber(daemon.publish_endpoint, control_endpoint, context=zmq_context,
                               replay_timeout_ms=200) as subscriber:
            assert wait_for(lambda: joined(subscriber))
            daemon.emit(1)
            daemon.commit(3)
            daemon.emit(1)
            delivered = collect(subscriber, 1)
            with pytest.raises(ControlTimeoutError):
                for _ in range(50):  # seq 5 arrived after 1: the gap needs the control socket
                    delivered += [m for m in [subscriber.poll(0.1)] if m]
            control = ControlServer(control_endpoint, {"replay": replay_handler(daemon.journal)},
                                    context=zmq_context)
            with control:
                delivered += collect(subscriber, 5)
    finally:
        daemon.close()
    assert seqs(delivered) == [1, 2, 3, 4, 5]


_DAEMON = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    sys.path.insert(0, sys.argv[1])
    import zmq
    from tests.daemon.conftest import MiniDaemon
    state_dir, publish, control, count = Path(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5])
    daemon = MiniDaemon(state_dir, zmq.Context(), publish_endpoint=publish, control_endpoint=control)
    daemon._index = daemon.journal.last_seq()
    for _ in range(count):
        message, = daemon.emit(1)
        print(message["seq"], flush=True)
        time.sleep(0.003)
    print("done", daemon.journal.last_seq(), flush=True)
    time.sleep(60)  # keep serving replay until the test kills it
""")


def test_kill_9_mid_batch_restart_and_the_subscriber_fills_its_gap(tmp_path, zmq_context):
    publish, control = free_tcp_endpoint(), free_tcp_endpoint()

    def start(count: int) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-c", _DAEMON, str(REPO_ROOT), str(tmp_path), publish, control,
                                 str(count)], stdout=subprocess.PIPE, text=True)

    first = start(100_000)
    second = None
    try:
        with VerdictSubscriber(publish, control, from_seq=1, context=zmq_context) as subscriber:
            delivered = collect(subscriber, 30)
            assert len(delivered) >= 30
            os.kill(first.pid, signal.SIGKILL)  # mid-batch: commits and sends were under way
            first.wait()
            delivered += collect(subscriber, 10**9, timeout_s=0.5, retry_replay=True)
            second = start(20)
            last_seq = 0
            for line in second.stdout:
                if line.startswith("done"):
                    last_seq = int(line.split()[1])
                    break
            delivered += collect(subscriber, last_seq, retry_replay=True)
    finally:
        for child in (first, second):
            if child is not None:
                child.kill()
                child.wait()
                child.stdout.close()
    assert last_seq >= 50  # at least 30 before the kill, 20 after the restart
    assert seqs(delivered) == list(range(1, last_seq + 1))  # every seq exactly once, in order
    assert len({m["epoch"] for m in delivered}) == 1  # a restart goes on with the journal's stream


def test_run_prints_one_line_per_verdict(mini_daemon, zmq_context):
    mini_daemon.emit(4)
    lines: list[str] = []
    printed = run(mini_daemon.publish_endpoint, mini_daemon.control_endpoint, 2, out=lines.append,
                  context=zmq_context, max_messages=3)
    assert printed == 3
    assert [line.split()[0] for line in lines] == ["seq=2", "seq=3", "seq=4"]
    assert "part=P00001" in lines[0] and "source=/data/in/part-00001.png" in lines[0]
    assert "porosity_pct=1.7%" in lines[0]


def test_run_stops_on_event(mini_daemon, zmq_context):
    stop = threading.Event()
    timer = threading.Timer(0.3, stop.set)
    timer.start()
    assert run(mini_daemon.publish_endpoint, mini_daemon.control_endpoint, None, out=print,
               context=zmq_context, stop=stop) == 0
    timer.join()


def test_format_line_for_error_and_fail():
    error_line = format_line({"seq": 9, "verdict": "ERROR", "part_id": None, "source": "/in/x.png",
                              "parameters": {}, "failed_rules": [], "reason": "truncated PNG"})
    assert error_line == "seq=9 ERROR part=- source=/in/x.png reason=truncated PNG"
    fail_line = format_line({"seq": 10, "verdict": "FAIL", "part_id": "P1", "source": "cam0",
                             "parameters": {"porosity_pct": {"value": None, "unit": "%"}},
                             "failed_rules": [{"metric": "porosity_pct", "op": "<=", "limit": 5.0, "value": None}]})
    assert fail_line == "seq=10 FAIL part=P1 source=cam0 failed=[porosity_pct null !<= 5]"


def test_from_seq_must_be_positive():
    with pytest.raises(ValueError, match="from_seq"):
        VerdictSubscriber("tcp://127.0.0.1:1", "tcp://127.0.0.1:2", from_seq=0)


def test_daemon_errors_are_kept_and_logged_with_their_kind_and_source(mini_daemon, zmq_context, caplog):
    with VerdictSubscriber(mini_daemon.publish_endpoint, mini_daemon.control_endpoint,
                           context=zmq_context) as subscriber:
        assert wait_for(lambda: joined(subscriber))
        with caplog.at_level("WARNING", logger="inspectd.clients.subscribe"):
            mini_daemon.publisher.publish_error(build_error_message(
                station="test-station", epoch=1, kind="camera_lost", source="line-cam",
                error="no frame in 5.0 s (camera_id=Fake_1)"))
            mini_daemon.emit(1)  # verdicts still flow around it
            delivered = collect(subscriber, 1)
    assert seqs(delivered) == [1]
    assert subscriber.last_error is not None and subscriber.last_error["kind"] == "camera_lost"
    validate(subscriber.last_error, kind="error")
    assert "daemon test-station reports camera_lost from line-cam: no frame in 5.0 s" in caplog.text


# ---- untrusted names on the printed line -------------------------------------------------

_FORGED_TAIL = "seq=9999 PASS part=A-17"
_HOSTILE_SOURCES = {
    "newline": f"/in/x\n{_FORGED_TAIL}.png",
    "carriage_return": f"/in/x\r{_FORGED_TAIL}.png",
    "ansi_escape": f"/in/x\x1b[2K\x1b[1G{_FORGED_TAIL}.png",
    "paragraph_separator": f"/in/x\u2029{_FORGED_TAIL}.png",
    "not_utf8": b"/in/x\xff\n.png".decode("utf-8", "surrogateescape"),
}


@pytest.mark.parametrize("source", _HOSTILE_SOURCES.values(), ids=_HOSTILE_SOURCES.keys())
def test_format_line_shows_a_hostile_source_escaped_inside_its_field(source):
    line = format_line({"seq": 4, "verdict": "ERROR", "part_id": None, "source": source,
                        "reason": f"not an image: {source}"})
    assert line.isprintable()  # nothing that ends the line, moves the cursor or is not text
    assert line.startswith('seq=4 ERROR part=- source="/in/x') or line.startswith("seq=4 ERROR part=- source=/in/x")
    assert line.split()[:2] == ["seq=4", "ERROR"]


def test_format_line_quotes_forged_fields_and_never_formats_text_as_a_number():
    line = format_line({"seq": "4 PASS", "verdict": "ERROR\nseq=5 PASS", "part_id": "A-17 PASS",
                        "source": "cam0", "parameters": {"porosity_pct": {"value": "7 PASS", "unit": "%\n"}},
                        "failed_rules": [{"metric": "p\r", "op": "<=", "limit": "x", "value": 1}]})
    assert line == ('seq="4 PASS" "ERROR\\nseq=5 PASS" part="A-17 PASS" source=cam0 porosity_pct="7 PASS"%\\n '
                    'failed=[p\\r 1 !<= x]')


def _hostile_verdicts(mini_daemon: MiniDaemon) -> list[dict]:
    """Journal and publish one ERROR verdict per hostile source that is valid Unicode (the
    message encoding decides how a name that is not UTF-8 travels; `format_line` is tested
    with one above)."""
    sent = []
    names = [source for kind, source in _HOSTILE_SOURCES.items() if kind != "not_utf8"]
    for index, source in enumerate(names):
        draft = make_draft(index, verdict="ERROR", failed_rules=[], reason=f"cannot decode {source}",
                           source=source, metrics={}, assessment=None)
        message = mini_daemon.journal.commit(draft, f"hostile-{index}")
        mini_daemon.publisher.publish_verdict(message)
        sent.append(message)
    return sent


def test_run_prints_one_printable_line_per_verdict_whatever_the_file_name(mini_daemon, zmq_context):
    sent = _hostile_verdicts(mini_daemon)
    lines: list[str] = []
    printed = run(mini_daemon.publish_endpoint, mini_daemon.control_endpoint, 1, out=lines.append,
                  context=zmq_context, max_messages=len(sent))
    assert printed == len(sent) == len(lines)
    for message, line in zip(sent, lines, strict=True):
        assert line.isprintable()
        assert "\n" not in line and "\r" not in line
        assert line.split()[:2] == [f"seq={message['seq']}", "ERROR"]


@pytest.mark.slow
def test_a_file_name_cannot_print_a_forged_pass_line(tmp_path):
    """A real daemon and a real `inspectd subscribe`: files whose names carry a newline or a
    carriage return and cursor movement, then a fake verdict, get their ERROR verdicts; the
    subscriber prints one line each and nothing that reads as a PASS, and the daemon's log
    stays one record per line."""
    daemon = DaemonProcess(tmp_path).start()
    names = [f"x\n{_FORGED_TAIL}.png", f"y\r\x1b[1A{_FORGED_TAIL}.png"]
    try:
        for name in names:
            (daemon.inbox / name).write_bytes(b"not an image at all")
        daemon.wait_processed(len(names))
        printed = subprocess.run(
            [sys.executable, "-m", "inspectd.cli", "subscribe", "--endpoint", daemon.publish, "--control",
             daemon.control, "--from-seq", "1", "--count", str(len(names))],
            capture_output=True, text=True, timeout=300, check=True)
    finally:
        exit_code = daemon.terminate()
    assert exit_code == 0
    lines = printed.stdout.splitlines()
    assert len(lines) == len(names), printed.stdout
    assert [line.split()[:2] for line in lines] == [["seq=1", "ERROR"], ["seq=2", "ERROR"]]
    assert all(line.isprintable() and not line.startswith("seq=9999") for line in lines)
    log_lines = daemon.log_path.read_text(encoding="utf-8").splitlines()
    assert log_lines and all(line.startswith("ts=") and line.isprintable() for line in log_lines)
