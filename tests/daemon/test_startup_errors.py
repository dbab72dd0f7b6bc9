"""`inspectd run` refusing to start: one line on stderr, never a traceback, and the exit code
systemd acts on: 2 for what the config says (RestartPreventExitStatus), 1 for what may clear.

Every case is a real `inspectd run` child process; each fails before the engine loads.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon.conftest import free_tcp_endpoint


def _run(tmp_path: Path, *flags: str, config_text: str | bytes | None = None) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "inspectd.cli", "run"]
    if config_text is not None:
        path = tmp_path / "config.yaml"
        if isinstance(config_text, bytes):
            path.write_bytes(config_text)
        else:
            path.write_text(config_text)
        argv += ["--config", str(path)]
    if "--watch" not in flags and "sources:" not in str(config_text):
        (tmp_path / "inbox").mkdir(exist_ok=True)
        argv += ["--watch", str(tmp_path / "inbox")]
    if "--state-dir" not in flags and "state_dir:" not in str(config_text):
        argv += ["--state-dir", str(tmp_path / "state")]
    if "--publish" not in flags:
        argv += ["--publish", free_tcp_endpoint()]
    if "--control" not in flags:
        argv += ["--control", free_tcp_endpoint()]
    return subprocess.run([*argv, *flags], capture_output=True, text=True, timeout=300)


def _assert_one_line_config_error(proc: subprocess.CompletedProcess, expected: str) -> None:
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1, proc.stderr[-3000:]  # nothing else was started, nothing else said
    assert proc.stderr.startswith("inspectd: config error: ") and expected in proc.stderr, proc.stderr


def _assert_cannot_start(proc: subprocess.CompletedProcess, expected: str) -> None:
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    last = proc.stderr.rstrip().splitlines()[-1]
    assert last.startswith("inspectd: cannot start: ") and expected in last, proc.stderr[-3000:]


# ---- exit 2: what validate-config also refuses ------------------------------------------


@pytest.mark.parametrize(("pattern", "expected"), [
    ("(?P<part>(a+)+)", "can take exponential time"),
    ("(?P<part>x*)*y", "can take exponential time"),
    ("^(?P<part>[A-Z", "not a valid regular expression"),
    ("^([A-Z]+)_", "needs the named group (?P<part>...)"),
])
def test_bad_part_id_pattern_exits_two(tmp_path, pattern: str, expected: str) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    text = f"sources:\n  - kind: folder\n    path: {inbox}\n    part_id_pattern: '{pattern}'\n"
    proc = _run(tmp_path, config_text=text)
    _assert_one_line_config_error(proc, "sources.0.part_id_pattern")
    assert expected in proc.stderr
    assert not (tmp_path / "state").exists()


@pytest.mark.parametrize(("text", "flags", "expected"), [
    ("control:\n  bind: not-an-endpoint\n", (), "control.bind = 'not-an-endpoint'"),
    (None, ("--control", "not-an-endpoint"), "command line: control.bind = 'not-an-endpoint'"),
    (None, ("--publish", "tcp://127.0.0.1:notaport"), "publish.bind.0 = 'tcp://127.0.0.1:notaport'"),
    (None, ("--publish", "tcp://127.0.0.1:6100", "--control", "tcp://127.0.0.1:6100"), "asks for the address"),
])
def test_an_endpoint_that_cannot_be_bound_as_written_exits_two(tmp_path, text, flags, expected) -> None:
    _assert_one_line_config_error(_run(tmp_path, *flags, config_text=text), expected)


@pytest.mark.parametrize(("content", "expected"), [
    pytest.param(bytes(range(256)) * 16, "not UTF-8 text", id="binary"),
    pytest.param(b"a: " + b"[" * 10_000 + b"]" * 10_000 + b"\n", "nest", id="deep-10000"),
    pytest.param(b"a: " + b"{a: " * 200 + b"1" + b"}" * 200 + b"\n", "nested more than 32 levels deep", id="deep-200"),
    pytest.param(("l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
        f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]\n" for i in range(1, 10))).encode(),
        "its aliases expand it", id="billion-laughs"),
    pytest.param(b"publish:\n  heartbeat_interval_s: 1e-6\n", "publish.heartbeat_interval_s", id="heartbeat"),
    pytest.param(b"pipeline:\n  shutdown_grace_s: .inf\n", "pipeline.shutdown_grace_s", id="inf-grace"),
    pytest.param(b"station: a\nstation: b\n", "duplicate key 'station'", id="duplicate-key"),
])
def test_a_config_file_validate_config_refuses_exits_two(tmp_path, content: bytes, expected: str) -> None:
    _assert_one_line_config_error(_run(tmp_path, config_text=content), expected)


# ---- exit 1: a condition of the machine, which may clear -------------------------------


def test_state_dir_that_is_a_file_exits_one(tmp_path) -> None:
    state = tmp_path / "state"
    state.write_text("a file where the state folder should be")
    _assert_cannot_start(_run(tmp_path, "--state-dir", str(state)),
                         f"state_dir {state}: {state} exists and is not a directory")


@pytest.mark.parametrize("where", ["under-a-file", "under-proc"])
def test_state_dir_that_cannot_be_created_exits_one(tmp_path, where: str) -> None:
    if where == "under-a-file":
        (tmp_path / "plain").write_text("x")
        state = tmp_path / "plain" / "state"
    else:  # nobody, root included, can create a folder in /proc
        state = Path("/proc/inspectd-no-such-dir") / "state"
    _assert_cannot_start(_run(tmp_path, "--state-dir", str(state)), f"state_dir {state}: cannot create {state}")


@pytest.fixture
def read_only_dir(tmp_path) -> Iterator[Path]:
    """An empty folder nobody may write to: a read-only tmpfs as root, mode 0555 otherwise."""
    folder = tmp_path / "ro-state"
    folder.mkdir()
    mounted = False
    if os.geteuid() == 0:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(folder)],
                                 capture_output=True).returncode == 0
    else:
        folder.chmod(0o555)
    if os.access(folder, os.W_OK):
        pytest.skip("cannot make a read-only folder here (root without mount permission)")
    try:
        yield folder
    finally:
        if mounted:
            subprocess.run(["umount", str(folder)], check=False)
        else:
            folder.chmod(0o755)


def test_read_only_empty_state_dir_exits_one(tmp_path, read_only_dir: Path) -> None:
    proc = _run(tmp_path, "--state-dir", str(read_only_dir))
    _assert_cannot_start(proc, f"state_dir {read_only_dir}: cannot create {read_only_dir / 'done'}")


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


def test_control_port_in_use_exits_one(tmp_path, taken_port: int) -> None:
    """The previous instance may still hold it: systemd retries."""
    proc = _run(tmp_path, "--control", f"tcp://127.0.0.1:{taken_port}")
    _assert_cannot_start(proc, f"tcp://127.0.0.1:{taken_port}")


def test_metrics_port_in_use_exits_one(tmp_path, taken_port: int) -> None:
    proc = _run(tmp_path, config_text=f"metrics:\n  port: {taken_port}\n")
    _assert_cannot_start(proc, f"metrics: cannot listen on 127.0.0.1:{taken_port}")
