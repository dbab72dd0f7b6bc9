"""The analysis stages of consecutive frames overlap, and the daemon's guarantees hold.

A real pipeline (journal, publisher on 127.0.0.1, the classical engine) fed by an in-process
camera-like source: with two workers every frame still gets exactly one verdict, published
in the order the frames were taken with the numbers `Analyzer.analyze` gives; a stage that
raises gives its frame one ERROR and the rest go on; a shutdown with frames in flight
publishes a prefix, each at most once; one frame's segment and out-of-distribution stages
run side by side.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest
import zmq
from prometheus_client import CollectorRegistry

from inspectd.analysis.analyzer import Analyzer, FrameResult
from inspectd.config import Config
from inspectd.daemon import pipeline as pipeline_module
from inspectd.daemon.journal import Journal
from inspectd.daemon.metrics import DaemonMetrics
from inspectd.daemon.pipeline import Pipeline
from inspectd.data import synth
from inspectd.sources.base import FrameSource, SourceItem
from inspectd.types import Frame
from inspectd.wire.publish import Publisher

STATION = "stages-test"
HANG_GUARD_S = 120.0  # only against a hang; a CPU does these in seconds


class ListSource(FrameSource):
    """Gives the items it was made with, then is finished."""

    KEY = "list"

    def __init__(self, items: list[SourceItem]) -> None:
        super().__init__("cam")
        self._items = list(items)
        self._lock = threading.Lock()

    def start(self) -> None:
        pass

    def stop(self, timeout_s: float = 5.0) -> None:
        pass

    @property
    def finished(self) -> bool:
        with self._lock:
            return not self._items

    def get(self, timeout_s: float | None = None) -> SourceItem | None:
        with self._lock:
            return self._items.pop(0) if self._items else None


def frames(n: int) -> list[np.ndarray]:
    return [synth.generate(192, 256, seed=300 + index).image for index in range(n)]


def items_of(pixels: list[np.ndarray]) -> list[SourceItem]:
    return [SourceItem.from_pixels("cam", image, number) for number, image in enumerate(pixels)]


@pytest.fixture(scope="module")
def analyzer() -> Analyzer:
    analyzer = Analyzer(Config())
    analyzer.warm_up()
    return analyzer


@pytest.fixture
def context() -> Iterator[zmq.Context]:
    ctx = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


class Station:
    """A pipeline wired like the daemon's; `results` are the FrameResults its observer saw."""

    def __init__(self, tmp_path: Path, context: zmq.Context, analyzer: Analyzer, items: list[SourceItem],
                 workers: int = 2) -> None:
        self.journal = Journal(tmp_path / "journal.sqlite3")
        self.publisher = Publisher(STATION, ["tcp://127.0.0.1:*"], context=context, heartbeat_interval_s=1.0,
                                   epoch=self.journal.epoch, last_seq=self.journal.last_seq)
        self.publisher.start()
        self.results: list[tuple[dict, FrameResult]] = []
        self.pipeline = Pipeline(station=STATION, analyzer=analyzer, journal=self.journal, publisher=self.publisher,
                                 sources=[ListSource(items)], metrics=DaemonMetrics(CollectorRegistry()),
                                 workers=workers, observers=[lambda final, result: self.results.append((final, result))])

    def wait_for(self, count: int) -> list[dict]:
        deadline = time.monotonic() + HANG_GUARD_S
        while self.journal.last_seq() < count and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.journal.range(1)

    def close(self, grace_s: float = 5.0) -> bool:
        try:
            return self.pipeline.stop(grace_s=grace_s)
        finally:
            self.publisher.close()
            self.journal.close()


def test_two_workers_give_every_frame_one_verdict_in_order_with_the_numbers_of_analyze(
        tmp_path, context, analyzer) -> None:
    pixels = frames(8)
    items = items_of(pixels)
    items[3] = SourceItem(source_id="cam", kind="camera", source="cam#3", capture_time=datetime.now(timezone.utc),
                          sha256="", frame_number=3, error="camera timeout")
    station = Station(tmp_path, context, analyzer, items)
    try:
        station.pipeline.start()
        messages = station.wait_for(len(items))
    finally:
        assert station.close()
    assert [m["source"] for m in messages] == [f"cam#{n}" for n in range(len(items))]  # seq order = taken order
    assert [m["seq"] for m in messages] == list(range(1, len(items) + 1))
    assert messages[3]["verdict"] == "ERROR" and messages[3]["reason"] == "camera timeout"
    assert station.pipeline.progress == len(items) and not station.pipeline.busy()
    for final, result in station.results:
        number = int(final["source"].split("#")[1])
        if number == 3:
            continue
        alone = analyzer.analyze(Frame(pixels[number], final["source"]))
        assert result.verdict.result == alone.verdict.result and result.verdict.reason == alone.verdict.reason
        assert result.measurements.metrics == alone.measurements.metrics
        assert result.measurements.regions == alone.measurements.regions
        assert np.array_equal(result.mask, alone.mask) and np.array_equal(result.enhanced, alone.enhanced)
        assert result.assessment == alone.assessment
        assert list(result.verdict.timings_ms) == list(alone.verdict.timings_ms)


def test_a_stage_that_raises_gives_its_frame_one_error_and_the_others_go_on(tmp_path, context, analyzer,
                                                                            monkeypatch, caplog) -> None:
    monkeypatch.setattr(pipeline_module, "THREAD_RESTART_FIRST_S", 0.01)
    items = items_of(frames(6))
    segment = analyzer.segment

    def segment_failing_on_frame_2(job) -> None:
        if job.frame.source == "cam#2":
            msg = "a bug in a stage"
            raise RuntimeError(msg)
        segment(job)

    monkeypatch.setattr(analyzer, "segment", segment_failing_on_frame_2)
    station = Station(tmp_path, context, analyzer, items)
    try:
        station.pipeline.start()
        messages = station.wait_for(len(items))
    finally:
        assert station.close()
    assert [m["source"] for m in messages] == [f"cam#{n}" for n in range(len(items))]
    assert messages[2]["verdict"] == "ERROR"
    assert messages[2]["reason"] == "internal error: RuntimeError: a bug in a stage"
    assert all(m["verdict"] in ("PASS", "FAIL") for index, m in enumerate(messages) if index != 2)
    restarts = [r.getMessage() for r in caplog.records if r.getMessage().startswith("pipeline thread analyse-")]
    assert len(restarts) == 1 and "restarting it" in restarts[0]  # the thread was restarted, once
    assert station.pipeline.fatal_error is None


def test_shutdown_with_frames_in_flight_publishes_a_prefix_each_at_most_once(tmp_path, context, analyzer,
                                                                               monkeypatch) -> None:
    items = items_of(frames(8))
    gate = threading.Event()
    measure = analyzer.measure

    def measure_held_after_frame_1(job) -> None:
        if job.frame.source not in ("cam#0", "cam#1"):
            gate.wait(HANG_GUARD_S)
        measure(job)

    monkeypatch.setattr(analyzer, "measure", measure_held_after_frame_1)
    station = Station(tmp_path, context, analyzer, items)
    try:
        station.pipeline.start()
        station.wait_for(2)
        release = threading.Timer(0.5, gate.set)  # lets the held stages end after the grace
        release.start()
        drained = station.pipeline.stop(grace_s=0.1)
        release.join()
        messages = station.journal.range(1)
    finally:
        gate.set()
        station.publisher.close()
        station.journal.close()
    assert not drained
    sources = [m["source"] for m in messages]
    assert sources == [f"cam#{n}" for n in range(len(sources))]  # a prefix, in order, none twice
    assert 2 <= len(sources) < len(items)


def test_one_frame_in_flight_runs_its_segment_and_ood_stages_side_by_side(tmp_path, context, analyzer,
                                                                         monkeypatch) -> None:
    ood_started = threading.Event()
    overlapped: list[bool] = []
    segment, assess = analyzer.segment, analyzer.assess

    def segment_waiting_for_ood(job) -> None:
        overlapped.append(ood_started.wait(HANG_GUARD_S))
        segment(job)

    def assess_noting_start(job) -> None:
        ood_started.set()
        assess(job)

    monkeypatch.setattr(analyzer, "segment", segment_waiting_for_ood)
    monkeypatch.setattr(analyzer, "assess", assess_noting_start)
    station = Station(tmp_path, context, analyzer, items_of(frames(1)))
    try:
        station.pipeline.start()
        messages = station.wait_for(1)
    finally:
        assert station.close()
    assert overlapped == [True]
    assert [m["verdict"] for m in messages] in (["PASS"], ["FAIL"])
