"""The Modbus bridge against a real pymodbus TCP server, a test PLC program and a MiniDaemon."""

from __future__ import annotations

import json
import threading

import pytest

pytest.importorskip("pymodbus", reason="the Modbus bridge tests need pymodbus (the [plc] extra)")

from inspectd.bridges.handshake import StatusBit
from inspectd.bridges.registermap import RegisterMap
from inspectd.sources.trigger import TriggerServer
from inspectd.wire.message import build_error_message
from tests.bridges.conftest import ModbusPlcServer, PlcProgram, wait_for
from tests.daemon.conftest import MiniDaemon, free_tcp_endpoint


def seqs(messages: list[dict]) -> list[int]:
    return [m["seq"] for m in messages]


def cursor_seq(tmp_path) -> int:
    """The cursor file's last_seq (0 before the first delivery)."""
    path = tmp_path / "cursor.json"
    return json.loads(path.read_text())["last_seq"] if path.exists() else 0


def cursor_reaches(tmp_path, seq: int) -> bool:
    """The PLC acks before the bridge polls the ack: wait for the cursor to catch up."""
    return wait_for(lambda: cursor_seq(tmp_path) == seq)


def test_verdicts_arrive_in_order_with_the_ack_handshake(daemon, plc_server, bridges, tmp_path):
    with PlcProgram(plc_server.port) as plc:
        bridge = bridges.modbus(daemon, plc_server.port, from_seq=1)
        sent = daemon.emit(20)
        assert wait_for(lambda: len(plc.results) >= 20), bridge.stats()
        assert wait_for(lambda: len(plc.heartbeats) >= 3)
    assert plc.seqs() == seqs(sent) == list(range(1, 21))
    assert not plc.violations
    for message, shown in zip(sent, plc.results, strict=True):
        porosity_pct = message["parameters"]["porosity_pct"]["value"]
        assert shown["part_id"] == message["part_id"]
        assert shown["verdict_code"] == {"PASS": 1, "FAIL": 2}[message["verdict"]]
        assert shown["failed_rule_count"] == len(message["failed_rules"])
        assert abs(shown["porosity_pct"] - porosity_pct) < 1e-5
        assert shown["porosity_x100"] == round(porosity_pct * 100)
        assert shown["pore_count"] == 17
    assert plc.heartbeats == sorted(plc.heartbeats)  # counting up
    assert cursor_reaches(tmp_path, 20)
    assert bridge.stats()["duplicates"] == 0


def test_slow_plc_results_queue_and_none_is_lost_or_overwritten(daemon, plc_server, bridges):
    with PlcProgram(plc_server.port, ack_delay_s=0.08) as plc:
        bridge = bridges.modbus(daemon, plc_server.port, from_seq=1)
        queued: list[int] = []
        watcher = threading.Thread(target=lambda: wait_for(
            lambda: queued.append(bridge.stats()["queued"]) or len(plc.results) >= 12, interval_s=0.01))
        watcher.start()
        sent = daemon.emit(12)
        watcher.join()
    assert plc.seqs() == seqs(sent)
    assert not plc.violations, plc.violations
    assert max(queued) >= 5  # they really waited in the bridge, one shown at a time
    assert plc.max_backlog >= 2  # and the PLC could see the backlog


def test_clear_flag_ack_mode(daemon, plc_server, bridges):
    register_map = RegisterMap(ack_mode="clear_flag", ack=None)
    with PlcProgram(plc_server.port, ack_mode="clear_flag", ack_delay_s=0.02) as plc:
        bridges.modbus(daemon, plc_server.port, from_seq=1, register_map=register_map)
        sent = daemon.emit(6)
        assert wait_for(lambda: len(plc.results) >= 6)
    assert plc.seqs() == seqs(sent)
    assert not plc.violations


def test_plc_connection_drops_and_comes_back_nothing_lost_or_duplicated(daemon, plc_server, bridges, tmp_path):
    with PlcProgram(plc_server.port) as plc:
        bridge = bridges.modbus(daemon, plc_server.port, from_seq=1)
        first = daemon.emit(5)
        assert wait_for(lambda: cursor_seq(tmp_path) == 5 and bridge.stats()["in_flight_seq"] is None)
        plc_server.stop()  # PLC power-cycled: registers come back as 0
        second = daemon.emit(5)
        assert wait_for(lambda: not bridge.stats()["plc_connected"])
        assert wait_for(lambda: bridge.stats()["queued"] == 5)
        plc_server.start()
        assert wait_for(lambda: len(plc.results) >= 10), bridge.stats()
    assert plc.seqs() == seqs(first + second)
    assert bridge.stats()["connects"] >= 2 and bridge.stats()["plc_lost"] >= 1
    assert cursor_reaches(tmp_path, 10)


def test_plc_restart_with_retained_registers_keeps_the_shown_result(daemon, plc_server, bridges):
    with PlcProgram(plc_server.port) as plc:
        plc.paused.set()
        bridge = bridges.modbus(daemon, plc_server.port, from_seq=1)
        sent = daemon.emit(3)
        assert wait_for(lambda: bridge.stats()["in_flight_seq"] == 1)
        plc_server.restart(retain=True)
        assert wait_for(lambda: bridge.stats()["connects"] >= 2), bridge.stats()
        plc.paused.clear()
        assert wait_for(lambda: len(plc.results) >= 3)
    assert plc.seqs() == seqs(sent)
    assert wait_for(lambda: bridge.stats()["shown"] == 3)
    assert bridge.stats()["rewritten"] == 0  # found seq 1 still shown: not written again


def test_daemon_restart_gap_is_filled_by_replay(daemon, plc_server, bridges, tmp_path, zmq_context):
    with PlcProgram(plc_server.port) as plc:
        bridge = bridges.modbus(daemon, plc_server.port, from_seq=1)
        before = daemon.emit(3)
        assert wait_for(lambda: len(plc.results) >= 3)
        daemon.close()
        restarted = MiniDaemon(tmp_path / "daemon", zmq_context, publish_endpoint=daemon.publish_endpoint,
                               control_endpoint=daemon.control_endpoint)
        try:
            restarted._index = 3  # its drafts go on where the first run stopped (unique dedupe keys)
            lost = restarted.commit(2)  # journaled, never published: only replay can deliver them
            live = restarted.emit(3)
            assert wait_for(lambda: len(plc.results) >= 8), bridge.stats()
        finally:
            restarted.close()
    assert {m["epoch"] for m in before} == {m["epoch"] for m in live}  # a restart keeps the journal's stream
    assert plc.seqs() == seqs(before + lost + live) == list(range(1, 9))


def test_bridge_restart_resumes_from_its_cursor_exactly_once(daemon, plc_server, bridges, tmp_path):
    with PlcProgram(plc_server.port) as plc:
        first = bridges.modbus(daemon, plc_server.port, from_seq=1)
        sent = daemon.emit(4)
        assert wait_for(lambda: cursor_seq(tmp_path) == 4)
        plc.paused.set()
        sent += daemon.emit(1)
        assert wait_for(lambda: first.stats()["in_flight_seq"] == 5)
        first.stop()  # the bridge dies with seq 5 shown and not yet acknowledged
        plc.paused.clear()  # the PLC acknowledges it while no bridge runs
        assert wait_for(lambda: len(plc.results) >= 5)
        sent += daemon.emit(3)  # published while no bridge listens
        second = bridges.modbus(daemon, plc_server.port)  # no from_seq: resumes from the cursor
        assert second.from_seq == 5
        assert wait_for(lambda: len(plc.results) >= 8), second.stats()
    assert plc.seqs() == seqs(sent) == list(range(1, 9))
    assert cursor_reaches(tmp_path, 8)
    # The ack given while no bridge ran was found on the PLC: seq 5 was not shown again.
    assert wait_for(lambda: second.stats()["delivered"] == 4)  # 5 (found acked), 6, 7, 8
    assert second.stats()["shown"] == 3


def test_trigger_register_write_reaches_the_camera_trigger_endpoint(daemon, plc_server, bridges):
    from pymodbus.client import ModbusTcpClient

    from inspectd.bridges.registermap import encode_string

    camera = TriggerServer("tcp://127.0.0.1:*", source_id="cam0")
    camera.start()
    client = ModbusTcpClient("127.0.0.1", port=plc_server.port, timeout=1)
    try:
        bridges.modbus(daemon, plc_server.port, trigger_endpoint=camera.bound_endpoint)
        assert client.connect()

        def trigger(part_id: str) -> int:
            client.write_registers(102, encode_string(part_id, 16), device_id=1)
            client.write_register(100, 1, device_id=1)  # part in position
            assert wait_for(lambda: client.read_holding_registers(100, count=1, device_id=1).registers[0] == 0)
            return client.read_holding_registers(101, count=1, device_id=1).registers[0]

        assert trigger("PART-42") == 1  # accepted
        received = camera.next(timeout_s=5.0)
        assert received is not None and received.part_id == "PART-42"
        assert received.fields.get("origin") == "plc-bridge"
        camera.close_intake("source is stopping")
        assert trigger("PART-43") == 2  # refused, and the PLC is told so
    finally:
        client.close()
        camera.stop()


def test_bridge_started_before_the_plc_delivers_once_it_appears(daemon, bridges):
    server = ModbusPlcServer()  # port chosen, nothing listening yet
    bridge = bridges.modbus(daemon, server.port, from_seq=1)
    sent = daemon.emit(3)
    assert wait_for(lambda: bridge.stats()["last_plc_error"] is not None)
    server.start()
    try:
        with PlcProgram(server.port) as plc:
            assert wait_for(lambda: len(plc.results) >= 3), bridge.stats()
    finally:
        server.stop()
    assert plc.seqs() == seqs(sent)


def test_daemon_down_heartbeat_goes_on_and_the_status_word_says_so(plc_server, bridges, tmp_path, zmq_context):
    class Endpoints:  # where the daemon will be, once it starts
        publish_endpoint, control_endpoint = free_tcp_endpoint(), free_tcp_endpoint()

    with PlcProgram(plc_server.port) as plc:
        bridge = bridges.modbus(Endpoints, plc_server.port, from_seq=1, replay_timeout_s=0.3, replay_retry_s=0.1)
        assert wait_for(lambda: any(s & StatusBit.REPLAY_FAILING for s in plc.statuses)), plc.statuses
        beats = len(plc.heartbeats)
        assert wait_for(lambda: len(plc.heartbeats) >= beats + 3)  # the PLC sees the bridge alive
        state = tmp_path / "late-daemon"
        state.mkdir()
        daemon = MiniDaemon(state, zmq_context, publish_endpoint=Endpoints.publish_endpoint,
                            control_endpoint=Endpoints.control_endpoint)
        try:
            sent = daemon.emit(3)
            assert wait_for(lambda: len(plc.results) >= 3), bridge.stats()
            assert wait_for(lambda: any(s & StatusBit.DAEMON_ALIVE for s in plc.statuses))
        finally:
            daemon.close()
    assert plc.seqs() == seqs(sent)
    assert any(not s & StatusBit.DAEMON_ALIVE for s in plc.statuses)  # it was reported down at first


def test_a_daemon_error_sets_the_status_bit_for_the_hold_time_then_clears_it(daemon, plc_server, bridges):
    with PlcProgram(plc_server.port) as plc:
        bridge = bridges.modbus(daemon, plc_server.port, from_seq=1, daemon_error_hold_s=1.0)
        daemon.emit(1)
        assert wait_for(lambda: len(plc.results) >= 1)
        assert not any(s & StatusBit.DAEMON_ERROR for s in plc.statuses)
        daemon.publisher.publish_error(build_error_message(
            station="test-station", epoch=1, kind="camera_lost", source="line-cam", error="no frame in 5.0 s"))
        assert wait_for(lambda: plc.status_now & StatusBit.DAEMON_ERROR), plc.statuses
        assert bridge.stats()["daemon_error"]["kind"] == "camera_lost"
        sent = daemon.emit(2)  # results go on being delivered meanwhile
        assert wait_for(lambda: len(plc.results) >= 3)
        assert wait_for(lambda: not plc.status_now & StatusBit.DAEMON_ERROR), plc.status_now
    assert plc.seqs()[1:] == seqs(sent)
    assert bridge.stats()["daemon_error"] is None


def test_beyond_max_queue_results_wait_in_the_journal(daemon, plc_server, bridges):
    with PlcProgram(plc_server.port) as plc:
        plc.paused.set()
        bridge = bridges.modbus(daemon, plc_server.port, from_seq=1, max_queue=3)
        sent = daemon.emit(12)
        assert wait_for(lambda: bridge.stats()["in_flight_seq"] == 1 and bridge.stats()["queued"] == 3)
        assert wait_for(lambda: any(s & StatusBit.QUEUE_FULL for s in plc.statuses))
        assert bridge.stats()["queued"] == 3  # it stopped reading
        plc.paused.clear()
        assert wait_for(lambda: len(plc.results) >= 12), bridge.stats()
    assert plc.seqs() == seqs(sent)
