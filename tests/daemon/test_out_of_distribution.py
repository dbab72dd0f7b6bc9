"""`inspectd run` and frames out of distribution: the fields on the wire, the journal, `error.<station>`.

A real daemon process, real files dropped into its inbox one at a time, real SUB sockets on
127.0.0.1 and the control socket's replay; the frames are synthetic micrographs and uniform
noise (flagged by the classical engine's shipped envelope).
"""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import zmq

from inspectd.clients.control import request
from inspectd.data import synth
from inspectd.wire.message import validate
from tests.daemon.conftest import recv_messages
from tests.daemon.daemon_process import DaemonProcess


@pytest.fixture(scope="module")
def frames(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("frames")
    paths = {}
    for index in range(2):
        paths[f"good{index}"] = folder / f"good{index}.png"
        cv2.imwrite(str(paths[f"good{index}"]), synth.generate(192, 256, seed=40 + index).image)
    rng = np.random.default_rng(4)
    for index in range(4):
        paths[f"noise{index}"] = folder / f"noise{index}.png"
        cv2.imwrite(str(paths[f"noise{index}"]), rng.integers(0, 256, (192, 256), dtype=np.uint8))
    paths["unreadable"] = folder / "unreadable.png"
    paths["unreadable"].write_bytes(b"\x89PNG\r\n\x1a\n but nothing after")
    return paths


def _socket(endpoint: str, topic: bytes) -> zmq.Socket:
    sock = zmq.Context.instance().socket(zmq.SUB)
    sock.setsockopt(zmq.SUBSCRIBE, topic)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    return sock


def _drop_one(daemon: DaemonProcess, source: Path, seq: int) -> Path:
    """Write like a careful writer (temp name, then rename) and wait until its verdict is journaled."""
    target = daemon.inbox / f"{seq:03d}_{source.name}"
    temp = daemon.inbox / f".{target.name}.part"
    temp.write_bytes(source.read_bytes())
    temp.rename(target)
    daemon.wait_processed(seq)
    return target


def test_flagged_runs_are_reported_once_each_and_verdicts_carry_both_fields(tmp_path, frames) -> None:
    daemon = DaemonProcess(tmp_path).start()  # trust.ood.action: error, the default
    try:
        verdicts = _socket(daemon.publish, b"verdict.e2e")
        errors = _socket(daemon.publish, b"error.e2e")
        time.sleep(0.5)  # PUB slow joiner: subscribe before the first message
        order = ["good0", "noise0", "noise1", "noise2", "good1", "noise3", "unreadable"]
        dropped = [_drop_one(daemon, frames[name], seq) for seq, name in enumerate(order, start=1)]
        live = recv_messages(verdicts, len(order), timeout_s=30.0)  # each one schema-validated
        time.sleep(0.5)
        reported = recv_messages(errors, 10, timeout_s=2.0, kind="error")
        replayed = request(daemon.control, {"cmd": "replay", "from": 1})["messages"]
        verdicts.close()
        errors.close()
    finally:
        exit_code = daemon.terminate()
    assert exit_code == 0

    assert [m["seq"] for m in live] == list(range(1, len(order) + 1))
    by_name = dict(zip(order, live, strict=True))
    for name in ("good0", "good1"):
        assert by_name[name]["verdict"] == "PASS" and by_name[name]["out_of_distribution"] is False
        assert 0.0 <= by_name[name]["confidence"] <= 1.0
    for name in ("noise0", "noise1", "noise2", "noise3"):
        message = by_name[name]
        assert message["verdict"] == "ERROR" and message["out_of_distribution"] is True
        assert 0.0 <= message["confidence"] <= 1.0
        assert message["reason"].startswith("out of distribution for the classical engine")
        assert message["parameters"] == {}  # an ERROR carries no measurements
    never_analysed = by_name["unreadable"]
    assert never_analysed["verdict"] == "ERROR"
    assert never_analysed["confidence"] is None and never_analysed["out_of_distribution"] is None

    # The journal keeps the fields: replay gives back exactly what went out.
    assert replayed == live
    for message in replayed:
        validate(message)

    # One report per run of flagged frames: noise0..noise2 are one run, good1 ends it, noise3 starts the next.
    flagged = [m for m in reported if m["kind"] == "out_of_distribution"]
    assert len(flagged) == 2, reported
    assert [m["source"] for m in flagged] == ["folder", "folder"]
    assert str(dropped[1]) in flagged[0]["error"] and "(seq 2, verdict ERROR)" in flagged[0]["error"]
    assert str(dropped[5]) in flagged[1]["error"] and "(seq 6, verdict ERROR)" in flagged[1]["error"]
    assert "log2_gradient_energy" in flagged[0]["error"]


def test_warn_action_publishes_pass_with_the_flag_and_the_warning(tmp_path, frames) -> None:
    daemon = DaemonProcess(tmp_path, extra={"trust": {"ood": {"action": "warn"}}}).start()
    try:
        verdicts = _socket(daemon.publish, b"verdict.e2e")
        errors = _socket(daemon.publish, b"error.e2e")
        time.sleep(0.5)
        _drop_one(daemon, frames["noise0"], 1)
        _drop_one(daemon, frames["noise1"], 2)
        (warned, again) = recv_messages(verdicts, 2, timeout_s=30.0)
        time.sleep(0.5)
        reported = recv_messages(errors, 10, timeout_s=2.0, kind="error")
        verdicts.close()
        errors.close()
    finally:
        exit_code = daemon.terminate()
    assert exit_code == 0
    for message in (warned, again):
        assert message["verdict"] == "PASS" and message["out_of_distribution"] is True
        assert message["reason"].startswith("warning: out of distribution")
        assert message["parameters"]["porosity_pct"]["value"] is not None
    assert [m["kind"] for m in reported] == ["out_of_distribution"]
    assert "verdict PASS" in reported[0]["error"]
    assert not any((daemon.state_dir / "quarantine").glob("*.png"))  # a PASS is done, not quarantined
