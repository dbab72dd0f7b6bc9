"""A PLC bridge whose daemon started a new journal (a new epoch) delivers the new stream.

Real pymodbus server, the test PLC program, and MiniDaemons restarted on the same endpoints
with the journal emptied in between (as a truncated or deleted journal is at start).
"""

from __future__ import annotations

import json

import pytest

pytest.importorskip("pymodbus", reason="the Modbus bridge tests need pymodbus (the [plc] extra)")

from tests.bridges.conftest import PlcProgram, wait_for
from tests.daemon.conftest import MiniDaemon


def _cursor(tmp_path) -> dict:
    path = tmp_path / "cursor.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _restart_with_a_new_journal(daemon: MiniDaemon, zmq_context) -> MiniDaemon:
    state = daemon.journal.path.parent
    publish, control = daemon.publish_endpoint, daemon.control_endpoint
    daemon.close()
    for leftover in state.glob("journal.sqlite3*"):
        leftover.unlink()
    return MiniDaemon(state, zmq_context, publish_endpoint=publish, control_endpoint=control)


@pytest.mark.parametrize("bridge_restarts", [False, True])
def test_after_a_new_journal_the_bridge_delivers_its_verdicts_even_with_seqs_already_seen(
    daemon, plc_server, bridges, tmp_path, zmq_context, bridge_restarts
):
    with PlcProgram(plc_server.port) as plc:
        first = bridges.modbus(daemon, plc_server.port, from_seq=1)
        old = daemon.emit(3)
        assert wait_for(lambda: len(plc.results) >= 3)
        assert wait_for(lambda: _cursor(tmp_path).get("last_seq") == 3)
        if bridge_restarts:
            first.stop()
        restarted = _restart_with_a_new_journal(daemon, zmq_context)
        try:
            restarted._index = 100
            new = restarted.commit(1) + restarted.emit(2)  # seq 1 was never published live
            if bridge_restarts:
                second = bridges.modbus(restarted, plc_server.port)  # resumes from the cursor (old epoch, seq 3)
                assert second.from_seq == 4
            assert wait_for(lambda: len(plc.results) >= 6), plc.results
        finally:
            restarted.close()
    assert restarted.journal.epoch != old[0]["epoch"]
    assert plc.seqs() == [1, 2, 3, 1, 2, 3]  # the new stream's 1..3, none dropped as a duplicate
    assert wait_for(lambda: _cursor(tmp_path).get("last_seq") == 3)
    cursor = _cursor(tmp_path)
    assert (cursor["epoch"], cursor["last_seq"], cursor["format"]) == (restarted.journal.epoch, 3, 2)
    assert [m["part_id"] for m in new] == [f"P{i:05d}" for i in (100, 101, 102)]
