"""`inspectd bridge ...` as users run it: the map table, usage errors, a real process, a real daemon."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from inspectd.bridges.cursor import Cursor
from inspectd.bridges.handshake import Bridge
from inspectd.bridges.modbus import ModbusBus
from inspectd.cli import main
from inspectd.data import synth
from tests.bridges.conftest import PlcProgram, wait_for
from tests.daemon.daemon_process import DaemonProcess

REPO_ROOT = Path(__file__).resolve().parents[2]


def map_rows(table: str) -> dict[str, list[str]]:
    """Name -> columns of the `--print-map` table rows."""
    rows = {}
    for line in table.splitlines():
        columns = line.split()
        if len(columns) >= 4 and columns[0][0].isdigit():
            rows[columns[2]] = columns
    return rows


def test_print_map_shows_seq_in_a_holding_register_below_200(capsys):
    assert main(["bridge", "modbus", "--print-map"]) == 0
    rows = map_rows(capsys.readouterr().out)
    address = int(rows["seq_lo"][0])
    assert 0 <= address <= 199
    assert rows["seq_lo"][1] == str(40001 + address)
    assert {"heartbeat", "new_result", "ack", "verdict_code", "part_id", "porosity_pct"} <= set(rows)


def test_print_map_follows_a_map_file(tmp_path, capsys):
    custom = tmp_path / "map.yaml"
    custom.write_text("seq_lo: 150\nseq_hi: 151\n")
    assert main(["bridge", "modbus", "--map", str(custom), "--print-map"]) == 0
    assert map_rows(capsys.readouterr().out)["seq_lo"][0] == "150"


def test_bad_map_or_missing_plc_exit_2_with_a_clear_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("seq_lo: 4\n")
    assert main(["bridge", "modbus", "--map", str(bad), "--plc", "127.0.0.1:5020"]) == 2
    assert "seq_lo and ack both use register 4" in capsys.readouterr().err
    assert main(["bridge", "modbus"]) == 2
    assert "--plc HOST:PORT is required" in capsys.readouterr().err
    assert main(["bridge", "modbus", "--plc", "127.0.0.1:notaport"]) == 2
    (tmp_path / "corrupt.json").write_text("{")
    assert main(["bridge", "modbus", "--plc", "127.0.0.1:5020", "--state", str(tmp_path / "corrupt.json")]) == 2
    assert "not valid" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        main(["bridge", "opcua", "--endpoint", "tcp://127.0.0.1:5556"])  # neither --server nor --serve
    assert exited.value.code == 2


def test_bridge_process_delivers_and_stops_cleanly_on_sigterm(daemon, plc_server, tmp_path):
    state = tmp_path / "bridge.cursor.json"
    process = subprocess.Popen(
        [sys.executable, "-m", "inspectd.cli", "bridge", "modbus", "--endpoint", daemon.publish_endpoint,
         "--control", daemon.control_endpoint, "--plc", f"127.0.0.1:{plc_server.port}", "--unit", "1",
         "--state", str(state), "--from-seq", "1", "--heartbeat-s", "0.1", "--poll-s", "0.02"],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        with PlcProgram(plc_server.port) as plc:
            sent = daemon.emit(5)
            assert wait_for(lambda: len(plc.results) >= 5, timeout_s=60), process.stderr
            assert wait_for(lambda: state.exists() and json.loads(state.read_text())["last_seq"] == 5)
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr
    assert plc.seqs() == [m["seq"] for m in sent]


def test_verdicts_of_a_real_daemon_reach_the_plc(tmp_path, plc_server, zmq_context):
    images = synth.write_dataset(tmp_path / "images", 3, 128, 160, seed=5)
    real = DaemonProcess(tmp_path / "daemon").start()
    bridge = Bridge(ModbusBus("127.0.0.1", plc_server.port, timeout_s=0.5), real.publish, real.control,
                    Cursor(tmp_path / "cursor.json"), from_seq=1, heartbeat_interval_s=0.1,
                    poll_interval_s=0.02, context=zmq_context)
    bridge.start()
    try:
        with PlcProgram(plc_server.port) as plc:
            for index, image in enumerate(images):
                target = real.inbox / f"part{index}.png"
                (real.inbox / f".{target.name}.part").write_bytes(image.read_bytes())
                (real.inbox / f".{target.name}.part").rename(target)
                time.sleep(0.05)
            assert wait_for(lambda: len(plc.results) >= 3, timeout_s=120), real.log_text()
    finally:
        bridge.stop()
        exit_code = real.terminate()
    assert exit_code == 0
    assert plc.seqs() == [1, 2, 3]
    assert sorted(r["part_id"] for r in plc.results) == ["part0", "part1", "part2"]  # from the file names
    assert {r["verdict_code"] for r in plc.results} <= {1, 2}  # PASS / FAIL: every image was analysed
    assert all(0 <= r["porosity_pct"] <= 100 for r in plc.results)
