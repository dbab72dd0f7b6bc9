"""CurveZMQ on the PUB and control sockets: allowed keys get everything, unknown keys get nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
import zmq
import zmq.auth

from inspectd.clients.control import ControlTimeoutError, request
from inspectd.clients.subscribe import VerdictSubscriber
from inspectd.daemon.control_server import ControlServer, replay_handler
from inspectd.daemon.journal import Journal
from inspectd.errors import ConfigError
from inspectd.wire.curve import CurveClientKeys, CurveServer, load_client_keys, load_server_keys
from inspectd.wire.publish import Publisher
from tests.daemon.conftest import STATION, make_draft, recv_messages, wait_for


@pytest.fixture
def certificates(tmp_path: Path) -> dict[str, Path]:
    keys_dir, allowed_dir = tmp_path / "keys", tmp_path / "allowed"
    keys_dir.mkdir()
    allowed_dir.mkdir()
    paths = {}
    for name in ("server", "plc", "intruder"):
        public, secret = zmq.auth.create_certificates(keys_dir, name)
        paths[f"{name}_public"], paths[f"{name}_secret"] = Path(public), Path(secret)
    (allowed_dir / "plc.key").write_bytes(paths["plc_public"].read_bytes())
    paths["allowed_dir"] = allowed_dir
    return paths


@pytest.fixture
def secured(tmp_path, certificates, zmq_context):
    """Journal + curve-protected Publisher and ControlServer, as the daemon wires them."""
    keys = load_server_keys(certificates["server_secret"], certificates["allowed_dir"])
    curve_server = CurveServer(keys, context=zmq_context, allow_addresses=["127.0.0.1"])
    journal = Journal(tmp_path / "journal.sqlite3")
    publisher = Publisher(STATION, ["tcp://127.0.0.1:*"], heartbeat_interval_s=0.05, epoch=journal.epoch,
                          last_seq=journal.last_seq, curve_server=curve_server)
    control = ControlServer("tcp://127.0.0.1:*", {"status": lambda r: {"ready": True},
                                                  "replay": replay_handler(journal)}, curve_server=curve_server)
    publisher.start()
    control.start()

    def emit(count: int) -> None:
        for _ in range(count):
            publisher.publish_verdict(journal.commit(make_draft(journal.last_seq()), None))

    yield {"publisher": publisher, "control": control, "journal": journal, "emit": emit, "keys": keys}
    publisher.close()
    control.close()
    curve_server.close()
    journal.close()


@pytest.fixture
def client_context():
    context = zmq.Context()
    yield context
    context.destroy(linger=0)


def curve_sub(context: zmq.Context, endpoint: str, keys: CurveClientKeys | None) -> zmq.Socket:
    sock = context.socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    if keys is not None:
        keys.apply(sock)
    sock.setsockopt(zmq.SUBSCRIBE, b"")
    sock.connect(endpoint)
    return sock


def test_allowed_client_receives_verdicts_and_control_replies(secured, certificates, client_context):
    plc = load_client_keys(certificates["plc_secret"], certificates["server_public"])
    assert request(secured["control"].endpoint, {"cmd": "status"}, timeout_ms=5000, curve_client=plc,
                   context=client_context) == {"ready": True}
    secured["emit"](5)
    with VerdictSubscriber(secured["publisher"].endpoints[0], secured["control"].endpoint, from_seq=1,
                           curve_client=plc, context=client_context) as subscriber:
        delivered = []
        while len(delivered) < 5:
            message = subscriber.poll(10.0)
            assert message is not None
            delivered.append(message)
        assert wait_for(lambda: subscriber.poll(0.02) is None and subscriber.last_heartbeat is not None)
        secured["emit"](3)
        while len(delivered) < 8:
            message = subscriber.poll(10.0)
            assert message is not None
            delivered.append(message)
    assert [m["seq"] for m in delivered] == list(range(1, 9))


@pytest.mark.parametrize("who", ["intruder", "plain", "wrong_server_key"])
def test_unknown_client_gets_nothing(secured, certificates, client_context, who):
    allowed = load_client_keys(certificates["plc_secret"], certificates["server_public"])
    if who == "intruder":
        keys = load_client_keys(certificates["intruder_secret"], certificates["server_public"])
    elif who == "wrong_server_key":
        keys = load_client_keys(certificates["plc_secret"], certificates["intruder_public"])
    else:
        keys = None
    endpoint = secured["publisher"].endpoints[0]
    allowed_sock = curve_sub(client_context, endpoint, allowed)
    other_sock = curve_sub(client_context, endpoint, keys)
    # The allowed client is in: heartbeats flow, then verdicts published now reach it ...
    assert recv_messages(allowed_sock, 1, kind="heartbeat")
    secured["emit"](5)
    assert len(recv_messages(allowed_sock, 5)) == 5
    # ... while the other one, connected just as long, got not a single frame.
    assert not other_sock.poll(1000)
    with pytest.raises(ControlTimeoutError):
        request(secured["control"].endpoint, {"cmd": "status"}, timeout_ms=500, curve_client=keys,
                context=client_context)
    allowed_sock.close()
    other_sock.close()


def test_key_loading_errors_name_the_file(certificates, tmp_path):
    with pytest.raises(ConfigError, match="missing.key_secret"):
        load_server_keys(tmp_path / "missing.key_secret", certificates["allowed_dir"])
    with pytest.raises(ConfigError, match="no secret-key"):
        load_server_keys(certificates["server_public"], certificates["allowed_dir"])
    with pytest.raises(ConfigError, match="no secret-key"):
        load_client_keys(certificates["plc_public"], certificates["server_public"])
    garbage = tmp_path / "garbage.key"
    garbage.write_text("not a certificate\n")
    with pytest.raises(ConfigError, match="garbage.key"):
        load_server_keys(certificates["server_secret"], [garbage])


def test_allowed_clients_from_folder_or_list(certificates):
    from_folder = load_server_keys(certificates["server_secret"], certificates["allowed_dir"])
    from_list = load_server_keys(certificates["server_secret"],
                                 [certificates["plc_public"], certificates["intruder_public"]])
    plc_public, _ = zmq.auth.load_certificate(certificates["plc_public"])
    assert from_folder.allowed_client_keys == {plc_public}
    assert len(from_list.allowed_client_keys) == 2


def test_apply_refuses_a_socket_from_another_context(certificates, zmq_context):
    keys = load_server_keys(certificates["server_secret"], certificates["allowed_dir"])
    server = CurveServer(keys, context=zmq_context)
    other = zmq.Context()
    sock = other.socket(zmq.PUB)
    try:
        with pytest.raises(ValueError, match="context"):
            server.apply(sock)
    finally:
        sock.close(linger=0)
        other.term()
        server.close()
