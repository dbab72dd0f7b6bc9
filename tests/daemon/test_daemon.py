"""`inspectd run` end to end: real folders, real ZeroMQ sockets on 127.0.0.1, real SQLite."""

from __future__ import annotations

import hashlib
import json
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import cv2
import pytest
import zmq

from inspectd.clients.control import request
from inspectd.clients.subscribe import VerdictSubscriber
from inspectd.data import synth
from inspectd.wire.message import decode, validate
from tests.daemon.conftest import drop_files, free_tcp_endpoint
from tests.daemon.daemon_process import DaemonProcess


@pytest.fixture(scope="module")
def micrographs(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("micrographs")
    return synth.write_dataset(folder, 6, 192, 256, seed=11, masks_dir=folder / "masks")


def _subscriber(endpoint: str) -> zmq.Socket:
    sock = zmq.Context.instance().socket(zmq.SUB)
    sock.setsockopt(zmq.SUBSCRIBE, b"verdict.")
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    return sock


def _receive(sock: zmq.Socket, count: int, timeout_s: float = 120.0) -> list[dict]:
    received = []
    deadline = time.monotonic() + timeout_s
    while len(received) < count and time.monotonic() < deadline:
        if sock.poll(200):
            topic, payload = sock.recv_multipart()
            message = decode(payload)
            validate(message)
            assert topic == b"verdict.e2e"
            received.append(message)
    return received


def _journal_rows(state_dir: Path) -> list[tuple]:
    with sqlite3.connect(state_dir / "journal.sqlite3") as conn:
        return conn.execute("SELECT seq, dedupe_key, verdict, message_json FROM verdicts ORDER BY seq").fetchall()


def test_files_dropped_give_one_schema_valid_verdict_each_in_order(tmp_path, micrographs) -> None:
    daemon = DaemonProcess(tmp_path).start()
    try:
        sub = _subscriber(daemon.publish)
        time.sleep(0.5)  # PUB slow joiner: connect before the first verdict
        dropped = drop_files(micrographs, daemon.inbox)
        messages = _receive(sub, len(dropped))
        status = daemon.wait_processed(len(dropped))
    finally:
        exit_code = daemon.terminate()
    assert exit_code == 0
    assert [m["seq"] for m in messages] == list(range(1, len(dropped) + 1))
    assert sorted(m["source"] for m in messages) == sorted(str(p) for p in dropped)
    assert {m["verdict"] for m in messages} <= {"PASS", "FAIL"}
    for message in messages:
        assert message["station"] == "e2e"
        assert message["parameters"]["porosity_pct"]["unit"] == "%"
        assert message["image"]["width"] == 256
        assert {"decode", "preprocess", "segment", "measure"} <= set(message["timings_ms"])
        assert message["engine"]["name"] == "classical"
    assert status["counts"] == {v: sum(m["verdict"] == v for m in messages) for v in {m["verdict"] for m in messages}}
    assert sorted(p.name for p in (daemon.state_dir / "done").iterdir()) == sorted(p.name for p in dropped)
    assert not any(daemon.inbox.glob("*.png"))


def test_bad_files_become_error_verdicts_in_quarantine_and_the_daemon_goes_on(tmp_path, micrographs) -> None:
    daemon = DaemonProcess(tmp_path).start()
    try:
        sub = _subscriber(daemon.publish)
        time.sleep(0.5)
        good = micrographs[0].read_bytes()
        ok, jpeg = cv2.imencode(".jpg", cv2.imread(str(micrographs[0]), cv2.IMREAD_GRAYSCALE))
        bad = {"zero.png": b"", "text.png": b"hello, not a picture", "cut.png": good[: len(good) // 2],
               "cut.jpg": jpeg.tobytes()[: len(jpeg) // 3]}
        for name, content in bad.items():
            (daemon.inbox / name).write_bytes(content)
        (daemon.inbox / "fine.png").write_bytes(good)
        messages = _receive(sub, len(bad) + 1)
        daemon.wait_processed(len(bad) + 1)
        assert daemon.proc.poll() is None
    finally:
        exit_code = daemon.terminate()
    assert exit_code == 0
    by_name = {Path(m["source"]).name: m for m in messages}
    assert set(by_name) == {*bad, "fine.png"}
    for name in bad:
        assert by_name[name]["verdict"] == "ERROR"
        assert by_name[name]["reason"]
        assert (daemon.state_dir / "quarantine" / name).exists()
        reason = (daemon.state_dir / "quarantine" / f"{name}.reason.txt").read_text()
        assert by_name[name]["reason"][:20] in reason
    assert by_name["fine.png"]["verdict"] in ("PASS", "FAIL")
    assert (daemon.state_dir / "done" / "fine.png").exists()


def test_kill_nine_mid_batch_then_restart_gives_exactly_one_verdict_per_file(tmp_path, micrographs) -> None:
    files = micrographs * 4  # 24 files
    daemon = DaemonProcess(tmp_path).start()
    dropped = drop_files(files, daemon.inbox)
    deadline = time.monotonic() + 120
    while daemon.status()["last_seq"] < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    daemon.kill()  # SIGKILL mid-batch
    seq_before = len(_journal_rows(daemon.state_dir))
    assert 3 <= seq_before

    restarted = DaemonProcess(tmp_path, inbox=daemon.inbox)
    restarted.state_dir = daemon.state_dir
    restarted.start()
    try:
        # a subscriber that missed the first verdicts fills the gap by replay
        with VerdictSubscriber(restarted.publish, restarted.control, from_seq=1) as subscriber:
            seen = []
            deadline = time.monotonic() + 180
            while len(seen) < len(dropped) and time.monotonic() < deadline:
                message = subscriber.poll(0.5)
                if message is not None:
                    seen.append(message)
        restarted.wait_processed(len(dropped))
    finally:
        exit_code = restarted.terminate()
    assert exit_code == 0
    rows = _journal_rows(daemon.state_dir)
    keys = [row[1] for row in rows]
    assert len(rows) == len(dropped)
    assert len(set(keys)) == len(keys)
    assert [row[0] for row in rows] == list(range(1, len(dropped) + 1))
    assert sorted(m["seq"] for m in seen) == list(range(1, len(dropped) + 1))
    assert len({m["epoch"] for m in seen}) == 1  # a restart goes on with the journal's stream
    assert sorted(p.name for p in (daemon.state_dir / "done").iterdir()) == sorted(p.name for p in dropped)


def test_journal_locked_by_another_process_holds_verdicts_back_reports_it_and_loses_nothing(
    tmp_path, micrographs
) -> None:
    """A backup or an sqlite3 shell holding the journal's write lock: verdicts wait (never
    published unjournaled), `error.<station>` says why, and all of them follow the unlock."""
    daemon = DaemonProcess(tmp_path, extra={"journal": {"lock_timeout_s": 0.2}}).start()
    blocker = sqlite3.connect(daemon.state_dir / "journal.sqlite3", isolation_level=None)
    try:
        sub = zmq.Context.instance().socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        for kind in (b"verdict.e2e", b"error.e2e"):
            sub.setsockopt(zmq.SUBSCRIBE, kind)
        sub.connect(daemon.publish)
        time.sleep(0.5)  # PUB slow joiner
        blocker.execute("BEGIN EXCLUSIVE")
        dropped = drop_files(micrographs[:3], daemon.inbox)
        held_back = _receive_topics(sub, b"error.e2e", 1)
        assert held_back, f"no error message while the journal was locked:\n{daemon.log_text()}"
        assert daemon.proc.poll() is None
        assert sorted(daemon.inbox.glob("*.png")) == sorted(dropped)  # nothing filed unjournaled
        blocker.execute("ROLLBACK")
        verdicts = _receive_topics(sub, b"verdict.e2e", len(dropped))
        daemon.wait_processed(len(dropped))
    finally:
        blocker.close()
        exit_code = daemon.terminate()
    assert exit_code == 0
    for message in held_back:
        validate(message, kind="error")
        assert message["kind"] == "journal_write_failed" and message["source"] is None
        assert "locked" in message["error"] and message["epoch"] == verdicts[0]["epoch"]
    assert [m["seq"] for m in verdicts] == [1, 2, 3]
    assert sorted(m["source"] for m in verdicts) == sorted(str(p) for p in dropped)
    assert [row[0] for row in _journal_rows(daemon.state_dir)] == [1, 2, 3]
    assert sorted(p.name for p in (daemon.state_dir / "done").iterdir()) == sorted(p.name for p in dropped)


def test_sigterm_while_the_journal_is_locked_exits_zero_and_the_file_waits_for_the_next_start(
    tmp_path, micrographs
) -> None:
    extra = {"journal": {"lock_timeout_s": 0.2}, "pipeline": {"shutdown_grace_s": 1.0}}
    daemon = DaemonProcess(tmp_path, extra=extra).start()
    blocker = sqlite3.connect(daemon.state_dir / "journal.sqlite3", isolation_level=None)
    try:
        blocker.execute("BEGIN EXCLUSIVE")
        (dropped,) = drop_files(micrographs[:1], daemon.inbox)
        deadline = time.monotonic() + 120
        while "journal write failed" not in daemon.log_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert daemon.terminate() == 0
    finally:
        blocker.close()
    assert dropped.exists() and not any((daemon.state_dir / "done").iterdir())
    assert _journal_rows(daemon.state_dir) == []
    sha256 = hashlib.sha256(dropped.read_bytes()).hexdigest()

    restarted = DaemonProcess(tmp_path, inbox=daemon.inbox, extra=extra)
    restarted.state_dir = daemon.state_dir
    restarted.start()
    try:
        restarted.wait_processed(1)
    finally:
        exit_code = restarted.terminate()
    assert exit_code == 0
    assert [row[1] for row in _journal_rows(daemon.state_dir)] == [f"file:{dropped}:{sha256}"]
    assert [p.name for p in (daemon.state_dir / "done").iterdir()] == [dropped.name]


def _receive_topics(sock: zmq.Socket, topic: bytes, count: int, timeout_s: float = 120.0) -> list[dict]:
    """The next `count` messages of `topic` (others are skipped), each schema-checked."""
    received = []
    deadline = time.monotonic() + timeout_s
    while len(received) < count and time.monotonic() < deadline:
        if sock.poll(200):
            got_topic, payload = sock.recv_multipart()
            if got_topic == topic:
                message = decode(payload)
                validate(message, kind=topic.decode().partition(".")[0])
                received.append(message)
    return received


def test_invalid_config_exits_two_with_the_key_path_and_starts_nothing(tmp_path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("station: ok\npublish:\n  heartbeat_interval_s: -1\n")
    proc = subprocess.run([sys.executable, "-m", "inspectd.cli", "run", "--config", str(config), "--watch",
                           str(tmp_path), "--state-dir", str(tmp_path / "state")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "publish.heartbeat_interval_s" in proc.stderr and "line 3" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "state").exists()


def test_missing_watched_folder_exits_one_with_one_line_and_no_traceback(tmp_path) -> None:
    """Exit 1, not 2: systemd restarts the unit, and a share mounted late then gets watched."""
    proc = subprocess.run([sys.executable, "-m", "inspectd.cli", "run", "--watch", str(tmp_path / "not-mounted"),
                           "--state-dir", str(tmp_path / "state"), "--publish", free_tcp_endpoint(),
                           "--control", free_tcp_endpoint()], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert proc.stderr.rstrip().splitlines()[-1] == (
        f"inspectd: cannot start: watched folder {tmp_path / 'not-mounted'} does not exist or is not a directory")


@pytest.mark.parametrize("engine", ["classical", "unet"])
def test_backend_cuda_without_a_gpu_exits_two_with_one_line_naming_cuda(tmp_path, engine) -> None:
    import kernels

    if kernels.cuda_usable()[0]:
        pytest.skip("a GPU (or the simulator) is usable here")
    config = tmp_path / "cuda.yaml"
    config.write_text(f"segment:\n  engine: {engine}\n  backend: cuda\n")
    ports = []
    for _ in range(2):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            ports.append(probe.getsockname()[1])
    proc = subprocess.run([sys.executable, "-m", "inspectd.cli", "run", "--config", str(config), "--watch",
                           str(tmp_path), "--state-dir", str(tmp_path / "state"),
                           "--publish", f"tcp://127.0.0.1:{ports[0]}", "--control", f"tcp://127.0.0.1:{ports[1]}"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("inspectd: cannot start: ") and "CUDA" in last


def test_notify_socket_gets_ready_and_watchdog_and_sigterm_exits_zero(tmp_path, micrographs) -> None:
    notify_path = tmp_path / "notify.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(notify_path))
    listener.settimeout(0.5)
    daemon = DaemonProcess(tmp_path, env={"NOTIFY_SOCKET": str(notify_path), "WATCHDOG_USEC": "1000000"})
    daemon.start()
    drop_files(micrographs[:2], daemon.inbox)
    daemon.wait_processed(2)
    lines: list[str] = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not ("READY=1" in lines and "WATCHDOG=1" in lines):
        try:
            lines += listener.recv(4096).decode().splitlines()
        except TimeoutError:
            pass
    assert daemon.terminate() == 0
    try:
        while True:
            lines += listener.recv(4096).decode().splitlines()
    except TimeoutError:
        pass
    listener.close()
    assert "READY=1" in lines and "WATCHDOG=1" in lines and "STOPPING=1" in lines
    assert any(line.startswith("STATUS=") for line in lines)
    assert lines.index("READY=1") < lines.index("STOPPING=1")


def test_control_status_reload_and_metrics(tmp_path, micrographs) -> None:
    import urllib.request

    daemon = DaemonProcess(tmp_path).start()
    try:
        drop_files(micrographs[:1], daemon.inbox)
        status = daemon.wait_processed(1)
        assert status["ready"] is True and status["station"] == "e2e"
        assert status["sources"][0]["kind"] == "folder" and status["sources"][0]["state"] == "RUNNING"
        assert status["versions"]["inspectd"]
        port = status["metrics_port"]
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        assert "inspectd_verdicts_total" in body and 'inspectd_stage_latency_seconds_count{stage="segment"} 1.0' in body
        healthy = _cli("status", "--control", daemon.control)
        assert healthy.returncode == 0, healthy.stderr
        assert healthy.stdout.startswith("station e2e: healthy") and "source " in healthy.stdout
        as_json = _cli("status", "--control", daemon.control, "--json")
        assert json.loads(as_json.stdout)["last_seq"] == 1
        # a strict rule after reload (`inspectd reload`, the control socket's reload) makes the next file FAIL
        daemon.config_path.write_text(daemon.config_path.read_text().replace("limit: 50.0", "limit: -1.0"))
        reloaded = _cli("reload", "--control", daemon.control)
        assert reloaded.returncode == 0 and reloaded.stdout.strip() == "porosity_pct <= -1.0", reloaded
        drop_files(micrographs[1:2], daemon.inbox, prefix="after-")
        daemon.wait_processed(2)
        replayed = request(daemon.control, {"cmd": "replay", "from": 1})["messages"]
        assert [m["seq"] for m in replayed] == [1, 2]
        assert replayed[1]["verdict"] == "FAIL"
        # a broken config is refused by reload and the daemon keeps its rules
        daemon.config_path.write_text("rules: 7\n")
        answer = request(daemon.control, {"cmd": "reload"})
        assert answer["ok"] is False and "rules" in answer["error"]
        refused = _cli("reload", "--control", daemon.control)
        assert refused.returncode == 2 and "rules" in refused.stderr
        daemon.proc.send_signal(signal.SIGHUP)  # same path as reload; must not kill the daemon
        time.sleep(1.0)
        assert daemon.status()["ready"] is True
    finally:
        exit_code = daemon.terminate()
    assert exit_code == 0
    gone = _cli("status", "--control", daemon.control, "--timeout-s", "0.3")
    assert gone.returncode == 3 and "no answer" in gone.stderr


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "inspectd.cli", *args], capture_output=True, text=True, timeout=60)


def test_stalled_subscriber_does_not_stall_the_pipeline(tmp_path, micrographs) -> None:
    daemon = DaemonProcess(tmp_path).start()
    stalled = zmq.Context.instance().socket(zmq.SUB)
    stalled.setsockopt(zmq.RCVHWM, 1)
    stalled.setsockopt(zmq.SUBSCRIBE, b"")
    stalled.connect(daemon.publish)
    try:
        dropped = drop_files(micrographs * 2, daemon.inbox)
        daemon.wait_processed(len(dropped))  # never reads a message, the pipeline still finishes
    finally:
        stalled.close(linger=0)
        exit_code = daemon.terminate()
    assert exit_code == 0


def test_threading_layer_is_thread_safe() -> None:
    # In a fresh process: numba fixes its layer at the first parallel launch.
    code = ("import numpy as np, numba, kernels; from inspectd.analysis.analyzer import choose_threading_layer; "
            "choose_threading_layer(); kernels.clahe(np.zeros((64, 64), np.uint8)); print(numba.threading_layer())")
    layer = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert layer.stdout.strip() in ("tbb", "omp")


@pytest.mark.slow
def test_burst_while_the_daemon_is_stopped_gives_exactly_one_verdict_each(tmp_path, micrographs) -> None:
    daemon = DaemonProcess(tmp_path).start()
    try:
        daemon.proc.send_signal(signal.SIGSTOP)
        small = micrographs[0].read_bytes()
        count = 1500
        for index in range(count):  # written while the daemon cannot read its inotify queue
            (daemon.inbox / f"burst_{index:05d}.png").write_bytes(small)
        daemon.proc.send_signal(signal.SIGCONT)
        daemon.wait_processed(count, timeout_s=900)
    finally:
        exit_code = daemon.terminate()
    assert exit_code == 0
    rows = _journal_rows(daemon.state_dir)
    assert len(rows) == count
    assert len({row[1] for row in rows}) == count
    assert len(list((daemon.state_dir / "done").iterdir())) == count
