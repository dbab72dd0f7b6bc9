"""The control endpoint over real REQ/REP sockets: status, replay, reload, and garbage."""

from __future__ import annotations

import threading

import pytest
import zmq

from inspectd.clients.control import ControlError, ControlTimeoutError, request
from inspectd.daemon.control_server import ControlServer, EndpointBindError, replay_handler
from inspectd.daemon.journal import Journal
from inspectd.wire.message import validate
from tests.daemon.conftest import free_tcp_endpoint, make_draft


@pytest.fixture(scope="module")
def journal(tmp_path_factory):
    """Read-only for these tests, so shared: 25 journaled verdicts."""
    with Journal(tmp_path_factory.mktemp("control") / "journal.sqlite3") as journal:
        for i in range(25):
            journal.commit(make_draft(i), f"k{i}")
        yield journal


@pytest.fixture
def server(zmq_context, journal):
    state = {"ready": False, "reloads": 0}

    def reload(request_dict):
        state["reloads"] += 1
        if request_dict.get("fail"):
            return {"ok": False, "error": "config.yaml (line 3): rules.0.limit = 'x': not a number"}
        return {"ok": True}

    def explode(request_dict):
        msg = "handler bug"
        raise RuntimeError(msg)

    handlers = {
        "status": lambda request_dict: {"ready": state["ready"], "last_seq": journal.last_seq()},
        "replay": replay_handler(journal, batch=10),
        "reload": reload,
        "explode": explode,
        "not_json": lambda request_dict: {"value": {1, 2}},
        "not_object": lambda request_dict: [1, 2],
    }
    with ControlServer("tcp://127.0.0.1:*", handlers, context=zmq_context) as control:
        control.state = state
        yield control


def ask(server, payload, **kwargs):
    return request(server.endpoint, payload, timeout_ms=5000, context=server._context, **kwargs)


def test_status_answers_while_not_ready(server):
    assert ask(server, {"cmd": "status"}) == {"ready": False, "last_seq": 25}
    server.state["ready"] = True
    assert ask(server, {"cmd": "status"})["ready"] is True


def test_replay_range_in_seq_order_and_schema_valid(server):
    answer = ask(server, {"cmd": "replay", "from": 3, "to": 7})
    assert [m["seq"] for m in answer["messages"]] == [3, 4, 5, 6, 7]
    assert answer["last_seq"] == 25
    for message in answer["messages"]:
        validate(message)


def test_replay_without_to_is_paged_by_batch(server):
    seqs, start = [], 1
    while True:
        answer = ask(server, {"cmd": "replay", "from": start})
        if not answer["messages"]:
            break
        assert len(answer["messages"]) <= 10
        seqs += [m["seq"] for m in answer["messages"]]
        start = seqs[-1] + 1
    assert seqs == list(range(1, 26))
    assert ask(server, {"cmd": "replay", "from": 26})["messages"] == []


def test_reload_ok_and_error(server):
    assert ask(server, {"cmd": "reload"}) == {"ok": True}
    answer = ask(server, {"cmd": "reload", "fail": True})
    assert answer["ok"] is False and "rules.0.limit" in answer["error"]
    assert server.state["reloads"] == 2


@pytest.mark.parametrize("payload, expected", [
    ({"cmd": "replay"}, "'from' must be"),
    ({"cmd": "replay", "from": "1"}, "'from' must be"),
    ({"cmd": "replay", "from": -1}, "'from' must be"),
    ({"cmd": "replay", "from": True}, "'from' must be"),
    ({"cmd": "replay", "from": 5, "to": 2}, "before"),
    ({"cmd": "shutdown"}, "unknown command 'shutdown'"),
    ({"command": "status"}, "unknown command None"),
    ({"cmd": ["status"]}, "unknown command"),
    ({"cmd": "explode"}, "handler bug"),
    ({"cmd": "not_json"}, "not JSON-serialisable"),
    ({"cmd": "not_object"}, "not an object"),
])
def test_bad_requests_get_an_error_answer(server, payload, expected):
    answer = ask(server, payload)
    assert answer["ok"] is False
    assert expected in answer["error"]
    assert ask(server, {"cmd": "status"})["last_seq"] == 25


@pytest.mark.parametrize("frames", [
    [b"not json at all"],
    [b"\xff\xfe\x00garbage"],
    [b"[1, 2, 3]"],
    [b""],
    [b'{"cmd": "status"}', b"second frame"],
])
def test_server_survives_garbage_frames(server, zmq_context, frames):
    sock = zmq_context.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(server.endpoint)
    sock.send_multipart(frames)
    assert sock.poll(5000)
    answer = sock.recv_json()
    sock.close()
    assert answer["ok"] is False and answer["error"]
    assert ask(server, {"cmd": "status"})["last_seq"] == 25


def test_oversized_request_is_dropped_and_server_goes_on(server, zmq_context):
    with pytest.raises(ControlTimeoutError):
        request(server.endpoint, {"cmd": "status", "pad": "x" * 200_000}, timeout_ms=500, context=zmq_context)
    assert ask(server, {"cmd": "status"})["last_seq"] == 25
    assert server.request_count >= 1


def test_request_timeout_and_non_json_answers(zmq_context):
    endpoint = free_tcp_endpoint()
    with pytest.raises(ControlTimeoutError, match="no answer"):
        request(endpoint, {"cmd": "status"}, timeout_ms=200, context=zmq_context)
    rep = zmq_context.socket(zmq.REP)
    rep.setsockopt(zmq.LINGER, 0)
    rep.bind(endpoint)
    try:
        for bad_answer, match in ((b"<html>", "not JSON"), (b"[1]", "not a JSON object")):

            def answer_once(bad=bad_answer):
                rep.recv()
                rep.send(bad)

            thread = threading.Thread(target=answer_once)
            thread.start()
            with pytest.raises(ControlError, match=match):
                request(endpoint, {"cmd": "status"}, timeout_ms=5000, context=zmq_context)
            thread.join()
    finally:
        rep.close()


def test_close_stops_the_server_and_frees_the_port(zmq_context, journal):
    endpoint = free_tcp_endpoint()
    control = ControlServer(endpoint, {"status": lambda r: {"ready": True}}, context=zmq_context)
    with pytest.raises(EndpointBindError):
        ControlServer(endpoint, {}, context=zmq_context)
    control.start()
    assert request(endpoint, {"cmd": "status"}, context=zmq_context) == {"ready": True}
    control.close()
    with pytest.raises(ControlTimeoutError):
        request(endpoint, {"cmd": "status"}, timeout_ms=300, context=zmq_context)
    again = ControlServer(endpoint, {"status": lambda r: {"ready": True}}, context=zmq_context)
    again.start()
    assert request(endpoint, {"cmd": "status"}, timeout_ms=5000, context=zmq_context) == {"ready": True}
    again.close()
