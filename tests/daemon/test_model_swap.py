"""Swapping the U-Net of a running daemon: the next frames use the new model, none is lost.

A real `Daemon` in this process on a watched folder (inotify, real ZeroMQ sockets on
127.0.0.1, a real journal), the U-Net engine on ONNX Runtime, swapped from the bundled
fp32 model to another ONNX file (the bundled int8 twin: other weights, another sha256).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import zmq
from prometheus_client import CollectorRegistry

from inspectd import config
from inspectd.analysis.engines.unet import bundled_model_path, file_sha256
from inspectd.daemon.app import Daemon
from inspectd.data import synth
from inspectd.errors import InspectdError
from tests.daemon.conftest import drop_files, free_tcp_endpoint

FP32, INT8 = bundled_model_path("fp32"), bundled_model_path("int8")


def unet_daemon(work_dir: Path, model: Path = FP32) -> Daemon:
    """A started Daemon watching `work_dir/inbox` with the U-Net on `model`, one analysis worker
    (verdicts then leave in the order frames were analysed)."""
    inbox = work_dir / "inbox"
    inbox.mkdir(parents=True, exist_ok=True)
    cfg = config.parse_object({
        "station": "swap",
        "state_dir": str(work_dir / "state"),
        "metrics": {"enabled": False},
        "publish": {"bind": [free_tcp_endpoint()]},
        "control": {"bind": free_tcp_endpoint()},
        "rules": [{"metric": "porosity_pct", "op": "<=", "limit": 50.0}],
        "segment": {"engine": "unet", "backend": "cpu", "unet": {"model": str(model)}},
        "trust": {"ood": {"action": "warn"}},
        "pipeline": {"workers": 1},
        "sources": [{"kind": "folder", "path": str(inbox), "stable_s": 0.1, "rescan_interval_s": 1.0}],
    })
    daemon = Daemon(cfg, context=zmq.Context(), registry=CollectorRegistry())
    daemon.start()
    return daemon


def wait_for_verdicts(daemon: Daemon, count: int) -> list[dict]:
    deadline = time.monotonic() + 300  # a hang guard only; a CPU does this in seconds
    while daemon.journal.last_seq() < count and time.monotonic() < deadline:
        time.sleep(0.05)
    return daemon.journal.range(1)


@pytest.fixture(scope="module")
def micrographs(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("micrographs")
    return synth.write_dataset(folder, 6, 256, 256, seed=41, masks_dir=folder / "masks")


def test_swap_under_load_the_next_frames_carry_the_new_hash_and_none_is_lost(tmp_path, micrographs) -> None:
    old_hash, new_hash = file_sha256(FP32), file_sha256(INT8)
    assert old_hash != new_hash
    daemon = unet_daemon(tmp_path)
    try:
        inbox = Path(daemon.cfg.sources[0].path)
        first = drop_files(micrographs * 2, inbox, prefix="a")
        while daemon.pipeline.progress < 1:
            time.sleep(0.02)
        done_before_swap = daemon.pipeline.progress
        swapped = daemon.swap_model(INT8)
        done_after_swap = daemon.pipeline.progress
        second = drop_files(micrographs, inbox, prefix="b")
        messages = wait_for_verdicts(daemon, len(first) + len(second))
        status = daemon.status_facts()
    finally:
        daemon.stop()
        daemon.context.term()

    assert swapped["previous"]["model_hash"] == old_hash and swapped["engine"]["model_hash"] == new_hash
    assert status["engine"]["model_hash"] == new_hash
    # No frame lost, none twice: one verdict per file, in journal order, all inspected.
    assert [m["seq"] for m in messages] == list(range(1, len(first) + len(second) + 1))
    assert sorted(m["source"] for m in messages) == sorted(str(p) for p in first + second)
    assert {m["verdict"] for m in messages} <= {"PASS", "FAIL"}
    hashes = [m["engine"]["model_hash"] for m in messages]
    # The line kept going while the new model loaded, on the old model.
    assert done_after_swap > done_before_swap
    assert hashes.count(old_hash) >= done_after_swap
    # Old model up to the swap, the new one after: frames in flight finished on the old one, and
    # every frame dropped after the swap returned was inspected with the new one.
    switch = hashes.index(new_hash)
    assert hashes == [old_hash] * switch + [new_hash] * (len(hashes) - switch)
    by_source = {m["source"]: m["engine"]["model_hash"] for m in messages}
    assert {by_source[str(p)] for p in second} == {new_hash}
    assert all(m["engine"]["name"] == "unet" for m in messages)
    done = Path(daemon.cfg.state_dir) / "done"
    assert sorted(p.name for p in done.iterdir()) == sorted(p.name for p in first + second)


def test_a_model_that_does_not_load_changes_nothing(tmp_path, micrographs) -> None:
    daemon = unet_daemon(tmp_path)
    try:
        broken = tmp_path / "broken.onnx"
        broken.write_bytes(b"not an onnx model")
        with pytest.raises(InspectdError):
            daemon.swap_model(broken)
        with pytest.raises(InspectdError, match="does not exist"):
            daemon.swap_model(tmp_path / "missing.onnx")
        assert daemon.status_facts()["engine"]["model_hash"] == file_sha256(FP32)
        assert daemon.cfg.segment.unet.model == FP32
        drop_files(micrographs[:2], Path(daemon.cfg.sources[0].path))
        messages = wait_for_verdicts(daemon, 2)
    finally:
        daemon.stop()
        daemon.context.term()
    assert [m["engine"]["model_hash"] for m in messages] == [file_sha256(FP32)] * 2


def test_after_a_swap_the_config_names_the_model_and_rule_reloads_still_apply(tmp_path) -> None:
    daemon = unet_daemon(tmp_path)
    try:
        daemon.swap_model(INT8)
        assert daemon.cfg.segment.unet.model == INT8.resolve()
        assert daemon.analyzer.cfg is daemon.cfg and daemon.pipeline.analyzer is daemon.analyzer
        (tmp_path / "config.yaml").write_text("rules:\n  - {metric: porosity_pct, op: '<=', limit: 3.5}\n")
        daemon.config_path = tmp_path / "config.yaml"
        assert daemon._reload({})["ok"] is True
        assert [rule.limit for rule in daemon.pipeline.analyzer.cfg.rules] == [3.5]
    finally:
        daemon.stop()
        daemon.context.term()


def test_a_frame_that_failed_to_decode_before_the_swap_carries_the_model_it_was_taken_with(tmp_path, micrographs):
    old_hash, new_hash = file_sha256(FP32), file_sha256(INT8)
    daemon = unet_daemon(tmp_path)
    entered, release = threading.Event(), threading.Event()

    def hold_the_first(message, _result):  # keeps the publish thread at the first verdict
        if message["seq"] == 1:
            entered.set()
            release.wait()

    try:
        daemon.pipeline.add_observer(hold_the_first)
        inbox = Path(daemon.cfg.sources[0].path)
        drop_files(micrographs[:1], inbox, prefix="a")
        assert entered.wait(300)  # a hang guard only
        broken = tmp_path / "broken.png"
        broken.write_bytes(micrographs[0].read_bytes()[:200])  # a truncated PNG: its decode fails
        drop_files([broken], inbox, prefix="b")
        deadline = time.monotonic() + 300  # a hang guard only
        while daemon.pipeline.queue_depths()["publish"] < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        swapped = daemon.swap_model(INT8)  # the broken file was taken (and refused) before this
        release.set()
        messages = wait_for_verdicts(daemon, 2)
    finally:
        release.set()
        daemon.stop()
        daemon.context.term()
    assert swapped["engine"]["model_hash"] == new_hash
    assert [m["verdict"] for m in messages][1] == "ERROR"
    assert [m["engine"]["model_hash"] for m in messages] == [old_hash, old_hash]
