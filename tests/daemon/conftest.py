"""Shared fixtures for the daemon's output side: real sockets on 127.0.0.1, real SQLite files.

`MiniDaemon` wires Journal + Publisher + ControlServer the way the daemon does (commit, then
publish), so subscriber tests run against the real thing without the analysis pipeline.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from inspectd.daemon.control_server import ControlServer, replay_handler
from inspectd.daemon.journal import Journal
from inspectd.sources.base import StatusUpdate
from inspectd.types import Assessment
from inspectd.wire.message import build_verdict_message, decode, validate
from inspectd.wire.publish import Publisher

STATION = "test-station"
SHA = "ab" * 32


def free_tcp_endpoint() -> str:
    """A tcp://127.0.0.1:PORT nobody listens on right now (for things that need a fixed port)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"tcp://127.0.0.1:{port}"


def make_draft(index: int = 0, **overrides: Any) -> dict[str, Any]:
    """A realistic verdict draft (no seq yet), varied by `index`."""
    porosity_pct = 1.0 + (index % 10) * 0.7
    failing = porosity_pct > 5.0
    arguments: dict[str, Any] = {
        "station": STATION,
        "verdict": "FAIL" if failing else "PASS",
        "failed_rules": [{"metric": "porosity_pct", "op": "<=", "limit": 5.0, "value": porosity_pct}]
        if failing else [],
        "source": f"/data/in/part-{index:05d}.png",
        "source_kind": "file",
        "part_id": f"P{index:05d}",
        "capture_time": "2024-05-01T10:00:00Z",
        "metrics": {"porosity_pct": porosity_pct, "unmelted_fraction_pct": 12.5,
                    "melted_fraction_pct": 86.5 - porosity_pct, "pore_count": 17,
                    "pore_mean_eq_diameter_um": 3.25, "entropy_bits": 6.5, "variance": 210.0},
        "engine_name": "classical",
        "backend": "cpu",
        "model_hash": None,
        "timings_ms": {"decode": 1.5, "preprocess": 4.0, "segment": 9.0, "measure": 2.0},
        "image_sha256": SHA,
        "width": 640,
        "height": 480,
        "bit_depth": 8,
        "assessment": Assessment(confidence=0.25 + (index % 7) * 0.1, out_of_distribution=False, ood_distance=0.4),
    }
    arguments.update(overrides)
    return build_verdict_message(**arguments)


def recv_messages(sock: zmq.Socket, count: int, *, timeout_s: float = 10.0,
                  kind: str = "verdict") -> list[dict[str, Any]]:
    """Receive up to `count` messages of topic `kind`, validating each against the schema."""
    received: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout_s
    while len(received) < count:
        remaining_ms = int((deadline - time.monotonic()) * 1000)
        if remaining_ms <= 0 or not sock.poll(remaining_ms):
            break
        topic_bytes, payload = sock.recv_multipart()
        if not topic_bytes.startswith(kind.encode() + b"."):
            continue
        message = decode(payload)
        validate(message, kind=kind)
        received.append(message)
    return received


def wait_for(predicate: Callable[[], bool], timeout_s: float = 10.0, interval_s: float = 0.01) -> bool:
    """Poll `predicate` until it holds or `timeout_s` passes; returns its last value."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval_s)
    return predicate()


class MiniDaemon:
    """Journal + Publisher + ControlServer wired like the daemon: commit, then publish."""

    def __init__(self, state_dir: Path, context: zmq.Context, *, publish_endpoint: str = "tcp://127.0.0.1:*",
                 control_endpoint: str = "tcp://127.0.0.1:*", heartbeat_interval_s: float = 0.05,
                 replay_batch: int = 1000, **journal_kwargs: Any) -> None:
        self.journal = Journal(state_dir / "journal.sqlite3", **journal_kwargs)
        self.publisher = Publisher(STATION, [publish_endpoint], context=context,
                                   heartbeat_interval_s=heartbeat_interval_s, epoch=self.journal.epoch,
                                   last_seq=self.journal.last_seq)
        self.control = ControlServer(control_endpoint, {
            "status": lambda request: {"ready": True, "station": STATION, "last_seq": self.journal.last_seq()},
            "replay": replay_handler(self.journal, batch=replay_batch),
            "reload": lambda request: {"ok": True},
        }, context=context)
        self.publish_endpoint = self.publisher.endpoints[0]
        self.control_endpoint = self.control.endpoint
        self.publisher.start()
        self.control.start()
        self._index = 0

    def commit(self, count: int = 1) -> list[dict[str, Any]]:
        """Journal verdicts WITHOUT publishing them: what a subscriber sees when PUB dropped them."""
        messages = []
        for _ in range(count):
            messages.append(self.journal.commit(make_draft(self._index), f"key-{self._index}"))
            self._index += 1
        return messages

    def emit(self, count: int = 1) -> list[dict[str, Any]]:
        messages = self.commit(count)
        for message in messages:
            self.publisher.publish_verdict(message)
        return messages

    def close(self) -> None:
        self.publisher.close()
        self.control.close()
        self.journal.close()


@pytest.fixture
def zmq_context() -> Iterator[zmq.Context]:
    context = zmq.Context()
    yield context
    context.destroy(linger=0)


@pytest.fixture
def mini_daemon(tmp_path: Path, zmq_context: zmq.Context) -> Iterator[MiniDaemon]:
    daemon = MiniDaemon(tmp_path, zmq_context)
    yield daemon
    daemon.close()


class Recorder:
    """A source's `on_status` callback that keeps every StatusUpdate, thread-safely."""

    def __init__(self) -> None:
        self.updates: list[StatusUpdate] = []
        self._lock = threading.Lock()

    def __call__(self, update: StatusUpdate) -> None:
        with self._lock:
            self.updates.append(update)

    def events(self) -> list[str]:
        with self._lock:
            return [u.event for u in self.updates]


def send_trigger(context: zmq.Context, endpoint: str, message: object) -> dict:
    """One trigger request over a fresh REQ socket, as a PLC bridge sends it (raw bytes or JSON)."""
    client = context.socket(zmq.REQ)
    client.setsockopt(zmq.LINGER, 0)
    client.setsockopt(zmq.RCVTIMEO, 10_000)
    client.connect(endpoint)
    try:
        if isinstance(message, bytes):
            client.send(message)
        else:
            client.send_json(message)
        return client.recv_json()
    finally:
        client.close()


def drop_files(files: list[Path], inbox: Path, prefix: str = "") -> list[Path]:
    """Copy like a careful writer: write a hidden temp file, then rename into place."""
    dropped = []
    for index, file in enumerate(files):
        target = inbox / f"{prefix}{index:04d}_{file.name}"
        temp = inbox / f".{target.name}.part"
        temp.write_bytes(file.read_bytes())
        temp.rename(target)
        dropped.append(target)
    return dropped


@contextlib.contextmanager
def mounted_tmpfs(mount_point: Path, options: str = "size=16m") -> Iterator[Path]:
    """A tmpfs on `mount_point` (an existing empty folder) for the test: another file system,
    or a disk that can really be filled. Skips with mount's reason where it cannot be mounted."""
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount_point)],
                             capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)
