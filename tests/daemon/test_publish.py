"""The PUB side with real sockets on 127.0.0.1: order, heartbeats, stalled subscribers, threads."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading

import pytest
import zmq
from zmq.utils.monitor import recv_monitor_message

from inspectd.daemon.journal import Journal
from inspectd.wire.message import build_error_message, decode, validate
from inspectd.wire.publish import EndpointBindError, Publisher, set_transport_heartbeats
from tests.daemon.conftest import STATION, make_draft, recv_messages, wait_for


def subscriber(context: zmq.Context, endpoint: str, *topics: bytes, rcvhwm: int = 100_000) -> zmq.Socket:
    sock = context.socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVHWM, rcvhwm)
    for topic_prefix in topics or (b"",):
        sock.setsockopt(zmq.SUBSCRIBE, topic_prefix)
    sock.connect(endpoint)
    return sock


def wait_until_subscribed(sock: zmq.Socket) -> dict:
    """PUB/SUB slow joiner: a received heartbeat proves the subscription reached the publisher."""
    beats = recv_messages(sock, 1, kind="heartbeat")
    assert beats, "no heartbeat within the timeout"
    return beats[0]


@pytest.fixture
def journal(tmp_path):
    with Journal(tmp_path / "journal.sqlite3") as journal:
        yield journal


def test_n_verdicts_arrive_in_order_and_schema_valid(zmq_context, journal):
    with Publisher(STATION, ["tcp://127.0.0.1:*"], context=zmq_context, heartbeat_interval_s=0.05,
                   epoch=journal.epoch, last_seq=journal.last_seq) as publisher:
        sock = subscriber(zmq_context, publisher.endpoints[0], b"verdict.", b"heartbeat.")
        wait_until_subscribed(sock)
        sent = [journal.commit(make_draft(i), f"k{i}") for i in range(200)]
        for message in sent:
            publisher.publish_verdict(message)
        received = recv_messages(sock, 200)  # validates each
        assert [m["seq"] for m in received] == list(range(1, 201))
        assert received == sent
        assert publisher.flush(5.0)
        assert publisher.sent_count == 200


def test_multipart_topic_and_json_frames(zmq_context, journal):
    with Publisher(STATION, ["tcp://127.0.0.1:*"], context=zmq_context, heartbeat_interval_s=0.05) as publisher:
        sock = subscriber(zmq_context, publisher.endpoints[0])
        wait_until_subscribed(sock)
        publisher.publish_verdict(journal.commit(make_draft(), None))
        publisher.publish_error(build_error_message(station=STATION, epoch=journal.epoch, error="camera cam0 lost"))
        frames_seen = {}
        while len(frames_seen) < 2:
            assert sock.poll(10_000)
            frames = sock.recv_multipart()
            assert len(frames) == 2
            if not frames[0].startswith(b"heartbeat."):
                frames_seen[frames[0]] = decode(frames[1].decode("utf-8"))
        assert set(frames_seen) == {f"verdict.{STATION}".encode(), f"error.{STATION}".encode()}
        validate(frames_seen[f"verdict.{STATION}".encode()])
        validate(frames_seen[f"error.{STATION}".encode()], kind="error")


def test_heartbeat_carries_last_seq_and_epoch(zmq_context, journal):
    with Publisher(STATION, ["tcp://127.0.0.1:*"], context=zmq_context, heartbeat_interval_s=0.02,
                   epoch=journal.epoch, last_seq=journal.last_seq) as publisher:
        sock = subscriber(zmq_context, publisher.endpoints[0], b"heartbeat.")
        first = wait_until_subscribed(sock)
        assert (first["station"], first["epoch"], first["last_seq"]) == (STATION, journal.epoch, 0)
        for i in range(3):
            journal.commit(make_draft(i), None)  # committed, not even published
        assert wait_for(lambda: recv_messages(sock, 1, kind="heartbeat")[0]["last_seq"] == 3)
        assert publisher.heartbeat_count >= 2


def test_heartbeat_without_journal_reports_highest_published_seq(zmq_context, journal):
    with Publisher(STATION, ["tcp://127.0.0.1:*"], context=zmq_context, heartbeat_interval_s=0.02) as publisher:
        sock = subscriber(zmq_context, publisher.endpoints[0], b"heartbeat.")
        wait_until_subscribed(sock)
        publisher.publish_verdict(journal.commit(make_draft(), None))
        assert wait_for(lambda: recv_messages(sock, 1, kind="heartbeat")[0]["last_seq"] == 1)


def test_stalled_subscriber_never_blocks_publishing(zmq_context, journal):
    """5000 large verdicts at a subscriber that never reads: PUB drops, the publisher goes on."""
    count = 5000
    with Publisher(STATION, ["tcp://127.0.0.1:*"], context=zmq_context, heartbeat_interval_s=0.05,
                   sndhwm=50, epoch=journal.epoch, last_seq=journal.last_seq) as publisher:
        stalled = subscriber(zmq_context, publisher.endpoints[0], b"verdict.", b"heartbeat.", rcvhwm=10)
        healthy = subscriber(zmq_context, publisher.endpoints[0], b"heartbeat.", b"verdict.")
        wait_until_subscribed(stalled)
        wait_until_subscribed(healthy)
        template = journal.commit(make_draft(reason="x" * 8000, verdict="ERROR", failed_rules=[]), None)
        for seq in range(2, count + 2):  # same payload size as a real message, without 5000 commits
            publisher.publish_verdict({**template, "seq": seq})
        # Every message was handed to ZeroMQ although one subscriber never read a byte.
        assert publisher.flush(timeout_s=60.0)
        assert publisher.sent_count == count
        # The publisher is still alive and serving the healthy subscriber.
        marker = journal.commit(make_draft(1), None)
        publisher.publish_verdict(marker)
        got_marker = False
        while not got_marker:
            got = recv_messages(healthy, 1, timeout_s=20.0)
            assert got, "the healthy subscriber stopped receiving"
            got_marker = got[0]["seq"] == marker["seq"]
        # The stalled subscriber got only what fitted in its queues: PUB dropped the rest silently.
        drained = recv_messages(stalled, count + 1, timeout_s=1.0)
        assert len(drained) < count
        assert publisher.failed_count == 0


def test_publish_from_many_threads_goes_through_one_socket(zmq_context, journal):
    with Publisher(STATION, ["tcp://127.0.0.1:*"], context=zmq_context, heartbeat_interval_s=0.05) as publisher:
        sock = subscriber(zmq_context, publisher.endpoints[0], b"verdict.", b"heartbeat.")
        wait_until_subscribed(sock)
        base = journal.commit(make_draft(), None)

        def send(thread_index: int) -> None:
            for i in range(250):
                publisher.publish_verdict({**base, "seq": 1 + thread_index * 1000 + i})

        threads = [threading.Thread(target=send, args=(t,)) for t in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        received = [m["seq"] for m in recv_messages(sock, 1000)]
        assert len(received) == 1000
        for t in range(4):  # each thread's messages stay in its order
            mine = [seq for seq in received if (seq - 1) // 1000 == t]
            assert mine == [1 + t * 1000 + i for i in range(250)]


def test_binds_all_endpoints_and_sets_transport_heartbeats(zmq_context, tmp_path):
    ipc = f"ipc://{tmp_path}/pub.sock"
    publisher = Publisher(STATION, ["tcp://127.0.0.1:*", ipc], context=zmq_context,
                          zmq_heartbeat_ivl_ms=500, zmq_heartbeat_timeout_ms=2000)
    try:
        assert publisher.endpoints[1] == ipc
        # Before start() the constructing thread still owns the socket.
        assert publisher._socket.getsockopt(zmq.HEARTBEAT_IVL) == 500
        assert publisher._socket.getsockopt(zmq.HEARTBEAT_TIMEOUT) == 2000
        publisher.start()
        sock = subscriber(zmq_context, ipc, b"heartbeat.")
        wait_until_subscribed(sock)
        with pytest.raises(EndpointBindError, match="cannot bind"):
            Publisher(STATION, [publisher.endpoints[0]], context=zmq_context)
    finally:
        publisher.close()
    with pytest.raises(RuntimeError, match="closed"):
        publisher.publish_verdict({"seq": 1})
    with pytest.raises(ValueError):
        Publisher(STATION, [], context=zmq_context)


_FROZEN_SUBSCRIBER = textwrap.dedent("""
    import sys, zmq
    sock = zmq.Context().socket(zmq.SUB)
    sock.setsockopt(zmq.SUBSCRIBE, b"")
    sock.connect(sys.argv[1])
    sock.recv_multipart()
    print("connected", flush=True)
    sys.stdin.read()
""")


def test_transport_heartbeat_drops_a_frozen_peer(zmq_context):
    """A SIGSTOPped subscriber keeps its TCP connection up; ZMTP heartbeats notice it anyway."""
    pub = zmq_context.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    set_transport_heartbeats(pub, interval_ms=100, timeout_ms=500)
    pub.bind("tcp://127.0.0.1:*")
    monitor = pub.get_monitor_socket(zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED)
    child = subprocess.Popen([sys.executable, "-c", _FROZEN_SUBSCRIBER, pub.getsockopt_string(zmq.LAST_ENDPOINT)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert monitor.poll(10_000)
        assert recv_monitor_message(monitor)["event"] == zmq.EVENT_ACCEPTED
        ready = threading.Event()
        threading.Thread(target=lambda: (child.stdout.readline(), ready.set()), daemon=True).start()
        while not ready.wait(0.05):
            pub.send_multipart([b"heartbeat.x", b"{}"])
        os.kill(child.pid, signal.SIGSTOP)
        assert monitor.poll(15_000), "frozen peer was not disconnected"
        assert recv_monitor_message(monitor)["event"] == zmq.EVENT_DISCONNECTED
    finally:
        child.kill()
        child.wait()
        child.stdin.close()
        child.stdout.close()
        pub.disable_monitor()
        monitor.close(linger=0)
        pub.close(linger=0)
