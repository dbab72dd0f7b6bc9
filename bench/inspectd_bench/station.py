"""One benchmark run through the real daemon pipeline: source -> analysis -> journal -> publish.

Why not a loop around `Analyzer.analyze`: a station's rate is set by the whole path — the
source buffer, the bounded work queue, `workers` analysis threads competing for the cores
with ONNX Runtime's and numba's pools, the fsync'ed SQLite commit before every publish, the
ZeroMQ I/O thread. So a `BenchStation` wires the daemon's own `Pipeline` with a real
`Journal` (in a temporary folder), a real `Publisher` on 127.0.0.1 (ephemeral port) and a
real subscriber that counts what arrives, fed by a `MemoryFrameSource`. Only the camera is
replaced.

Three ways to feed it (`RunMode`):
- `latency`: one frame in flight (push, wait for its verdict, push the next): capture to
  publish for an idle station, the number a triggered line sees per part;
- `throughput`: push as fast as the pipeline takes frames (the buffer waits, never drops):
  frames/s at saturation, from the spacing of publishes; latency here includes the time
  frames wait in the full queues (Little's law), reported apart;
- `offered`: push at a fixed rate into a drop-oldest buffer like a free-running camera:
  dropped frames, the output rate and whether the station keeps up.

Example:
    >>> import numpy as np
    >>> from inspectd import config
    >>> from inspectd.analysis.analyzer import Analyzer
    >>> cfg = config.Config()
    >>> analyzer = Analyzer(cfg); analyzer.warm_up()
    >>> frames = [np.full((64, 96), 120, np.uint8)]
    >>> with BenchStation(cfg, analyzer, RunMode.LATENCY, workers=1) as station:
    ...     result = station.run(frames, n_frames=2, warmup_frames=1)
    >>> result.published, result.received, sorted(result.latency_ms)
    (2, 2, ['max', 'mean', 'p50', 'p95', 'p99'])
"""

from __future__ import annotations

import enum
import logging
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zmq
from prometheus_client import CollectorRegistry

from inspectd.analysis.analyzer import Analyzer
from inspectd.config import Config
from inspectd.daemon.journal import Journal
from inspectd.daemon.metrics import DaemonMetrics
from inspectd.daemon.pipeline import Pipeline
from inspectd.wire.message import decode
from inspectd.wire.publish import Publisher
from inspectd_bench.memory_source import MemoryFrameSource
from inspectd_bench.resources import ProcessMeter

logger = logging.getLogger(__name__)

SOURCE_ID = "bench-camera"
# A free-running camera's buffer (the `buffer_size` default of camera sources).
CAMERA_BUFFER_FRAMES = 4
HEARTBEAT_INTERVAL_S = 0.2
SUBSCRIBER_READY_TIMEOUT_S = 10.0
# Longest wait for one frame's verdict beyond its expected time (a U-Net frame on a busy box).
FRAME_TIMEOUT_S = 120.0
PERCENTILES = (50, 95, 99)


class RunMode(str, enum.Enum):
    LATENCY = "latency"
    THROUGHPUT = "throughput"
    OFFERED = "offered"


class BenchmarkError(RuntimeError):
    """A run could not finish (verdicts missing, subscriber not connected)."""


@dataclass
class RunResult:
    """What one run measured; `as_dict()` is its JSON form."""

    mode: str
    workers: int
    n_frames: int
    fps: float
    latency_ms: dict[str, float]
    stages_ms: dict[str, float]
    usage: dict[str, Any]
    verdicts: dict[str, int]
    published: int
    received: int
    dropped: int = 0
    offered_fps: float | None = None
    keeps_up: bool | None = None
    latencies_ms: list[float] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        out = {
            "mode": self.mode,
            "workers": self.workers,
            "frames": self.n_frames,
            "fps": round(self.fps, 3),
            "latency_ms": self.latency_ms,
            "stages_ms": self.stages_ms,
            **self.usage,
            "verdicts": self.verdicts,
            "published": self.published,
            "received_by_subscriber": self.received,
            "dropped": self.dropped,
        }
        if self.mode == RunMode.OFFERED.value:
            out["offered_fps"] = self.offered_fps
            out["keeps_up"] = self.keeps_up
        return out


def latency_summary(latencies_ms: Sequence[float]) -> dict[str, float]:
    """p50 / p95 / p99 / mean / max of a list of latencies, rounded to 0.1 ms.

    >>> latency_summary([10.0, 20.0, 30.0])["p50"]
    20.0
    """
    if not latencies_ms:
        return {f"p{p}": float("nan") for p in PERCENTILES} | {"mean": float("nan"), "max": float("nan")}
    values = np.asarray(latencies_ms, dtype=np.float64)
    summary = {f"p{p}": round(float(np.percentile(values, p)), 1) for p in PERCENTILES}
    summary["mean"] = round(float(values.mean()), 1)
    summary["max"] = round(float(values.max()), 1)
    return summary


class _VerdictCounter:
    """A real SUB socket on the publisher: counts verdict messages; ready once a heartbeat arrived."""

    def __init__(self, context: zmq.Context, endpoint: str) -> None:
        self._socket = context.socket(zmq.SUB)
        self._socket.setsockopt(zmq.RCVHWM, 0)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.setsockopt(zmq.SUBSCRIBE, b"")
        self._socket.connect(endpoint)
        self.ready = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.verdicts = 0
        self.seqs: set[int] = set()
        self._thread = threading.Thread(target=self._run, name="bench-subscriber", daemon=True)

    def start(self) -> None:
        self._thread.start()
        if not self.ready.wait(SUBSCRIBER_READY_TIMEOUT_S):
            msg = f"the benchmark subscriber got no heartbeat within {SUBSCRIBER_READY_TIMEOUT_S:.0f} s"
            raise BenchmarkError(msg)

    def count(self) -> int:
        with self._lock:
            return self.verdicts

    def wait_for(self, n: int, timeout_s: float) -> int:
        deadline = time.monotonic() + timeout_s
        while self.count() < n and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.count()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2.0)
        self._socket.close(linger=0)

    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self._socket, zmq.POLLIN)
        while not self._stop.is_set():
            if not poller.poll(100):
                continue
            topic, payload = self._socket.recv_multipart()[:2]
            if topic.startswith(b"heartbeat"):
                self.ready.set()
            elif topic.startswith(b"verdict"):
                seq = decode(payload).get("seq")
                with self._lock:
                    self.verdicts += 1
                    if isinstance(seq, int):
                        self.seqs.add(seq)


class BenchStation:
    """The daemon's pipeline around an already warmed-up `Analyzer`, for one run."""

    def __init__(self, cfg: Config, analyzer: Analyzer, mode: RunMode, *, workers: int,
                 context: zmq.Context | None = None) -> None:
        self.cfg = cfg
        self.analyzer = analyzer
        self.mode = RunMode(mode)
        self.workers = workers
        self._context = context or zmq.Context()
        self._own_context = context is None
        self._tmp = tempfile.TemporaryDirectory(prefix="inspectd-bench-")
        self._published = threading.Condition()
        self._publish_perf_s: dict[int, float] = {}
        self._timings_ms: dict[int, dict[str, float]] = {}
        self._results: dict[int, str] = {}
        self.registry = CollectorRegistry()
        self.metrics = DaemonMetrics(self.registry)
        self.journal: Journal | None = None
        self.publisher: Publisher | None = None
        self.subscriber: _VerdictCounter | None = None
        self.source: MemoryFrameSource | None = None
        self.pipeline: Pipeline | None = None

    # ---- lifecycle ----------------------------------------------------------------------

    def __enter__(self) -> BenchStation:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def start(self) -> None:
        self.journal = Journal(Path(self._tmp.name) / "journal.sqlite3")
        self.publisher = Publisher(self.cfg.station, ["tcp://127.0.0.1:*"], context=self._context,
                                   heartbeat_interval_s=HEARTBEAT_INTERVAL_S, epoch=self.journal.epoch,
                                   last_seq=self.journal.last_seq)
        self.publisher.start()
        self.subscriber = _VerdictCounter(self._context, self.publisher.endpoints[0])
        self.subscriber.start()
        # Throughput runs wait for room like a folder (nothing dropped); the others are a free-running camera.
        drop_oldest = self.mode is not RunMode.THROUGHPUT
        self.source = MemoryFrameSource(SOURCE_ID, buffer_size=CAMERA_BUFFER_FRAMES, drop_oldest=drop_oldest)
        self.pipeline = Pipeline(station=self.cfg.station, analyzer=self.analyzer, journal=self.journal,
                                 publisher=self.publisher, sources=[self.source], metrics=self.metrics,
                                 workers=self.workers, queue_size=self.cfg.pipeline.queue_size,
                                 on_published=self._on_published)
        self.source.start()
        self.pipeline.start()

    def close(self) -> None:
        if self.pipeline is not None:
            self.pipeline.stop(grace_s=self.cfg.pipeline.shutdown_grace_s)
        elif self.source is not None:
            self.source.stop()
        if self.subscriber is not None:
            self.subscriber.close()
        if self.publisher is not None:
            self.publisher.close()
        if self.journal is not None:
            self.journal.close()
        if self._own_context:
            self._context.term()
        self._tmp.cleanup()

    # ---- the run ------------------------------------------------------------------------

    def run(self, frames: Sequence[np.ndarray], n_frames: int, *, warmup_frames: int = 2,
            rate_fps: float | None = None) -> RunResult:
        """Feed `warmup_frames` (not counted) then `n_frames` frames, cycling through `frames`."""
        if self.mode is RunMode.OFFERED and not rate_fps:
            msg = "an offered-rate run needs rate_fps > 0"
            raise ValueError(msg)
        for number in range(warmup_frames):
            self._push(frames[number % len(frames)], number)
            self._wait_published(number, FRAME_TIMEOUT_S)
        first = warmup_frames
        numbers = list(range(first, first + n_frames))
        journal_before = self._journal_seconds()
        meter = ProcessMeter()
        meter.start()
        if self.mode is RunMode.LATENCY:
            for number in numbers:
                self._push(frames[number % len(frames)], number)
                self._wait_published(number, FRAME_TIMEOUT_S)
        elif self.mode is RunMode.THROUGHPUT:
            for number in numbers:
                self._push(frames[number % len(frames)], number, wait_s=FRAME_TIMEOUT_S)
            self._wait_accounted(numbers)
        else:
            start = time.perf_counter()
            for index, number in enumerate(numbers):
                delay = start + index / rate_fps - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                self._push(frames[number % len(frames)], number)
            self._wait_accounted(numbers)
        usage = meter.stop()
        journal_after = self._journal_seconds()
        self.publisher.flush(timeout_s=10.0)
        published = [n for n in numbers if n in self._publish_perf_s]
        received = self.subscriber.wait_for(warmup_frames + len(published), timeout_s=10.0) - warmup_frames
        return self._result(numbers, published, received, usage.as_dict(), journal_before, journal_after, rate_fps)

    def _push(self, pixels: np.ndarray, number: int, wait_s: float | None = None) -> None:
        if not self.source.push(pixels, number, timeout_s=wait_s):
            msg = f"frame {number} could not be queued (source stopped or full for {wait_s} s)"
            raise BenchmarkError(msg)

    def _on_published(self, message: dict[str, Any]) -> None:
        now = time.perf_counter()
        number = message.get("frame_number")
        with self._published:
            self._publish_perf_s[number] = now
            self._timings_ms[number] = {k: v for k, v in message.get("timings_ms", {}).items() if v is not None}
            self._results[number] = message.get("verdict", "?")
            self._published.notify_all()

    def _wait_published(self, number: int, timeout_s: float) -> None:
        with self._published:
            if not self._published.wait_for(lambda: number in self._publish_perf_s, timeout_s):
                msg = f"no verdict for frame {number} within {timeout_s:.0f} s"
                raise BenchmarkError(msg)

    def _wait_accounted(self, numbers: Sequence[int]) -> None:
        """Until every frame was either published or dropped by the source's buffer."""
        wanted = set(numbers)
        deadline = time.monotonic() + FRAME_TIMEOUT_S + 5.0 * len(numbers)
        with self._published:
            while True:
                done = len(wanted & self._publish_perf_s.keys())
                if done + self.source.stats()["drops"] >= len(wanted):
                    return
                if time.monotonic() > deadline:
                    msg = f"only {done} of {len(wanted)} frames published, {self.source.stats()['drops']} dropped"
                    raise BenchmarkError(msg)
                self._published.wait(0.05)

    def _journal_seconds(self) -> tuple[float, float]:
        labels = {"stage": "journal"}
        total = self.registry.get_sample_value("inspectd_stage_latency_seconds_sum", labels) or 0.0
        count = self.registry.get_sample_value("inspectd_stage_latency_seconds_count", labels) or 0.0
        return total, count

    def _result(self, numbers: list[int], published: list[int], received: int, usage: dict[str, Any],
                journal_before: tuple[float, float], journal_after: tuple[float, float],
                rate_fps: float | None) -> RunResult:
        latencies = [1000.0 * (self._publish_perf_s[n] - self.source.captured_at(n)) for n in published]
        publish_times = sorted(self._publish_perf_s[n] for n in published)
        if len(publish_times) >= 2 and publish_times[-1] > publish_times[0]:
            fps = (len(publish_times) - 1) / (publish_times[-1] - publish_times[0])
        else:
            fps = 1000.0 / latencies[0] if latencies else 0.0
        stages = _stage_means([self._timings_ms[n] for n in published])
        journal_count = journal_after[1] - journal_before[1]
        if journal_count > 0:
            stages["journal"] = round(1000.0 * (journal_after[0] - journal_before[0]) / journal_count, 3)
        if latencies:
            # The rest of capture-to-publish: copy + hash at capture, waiting in the source buffer
            # and the publish queue, building the message.
            stages["other"] = round(float(np.mean(latencies)) - sum(stages.values()), 3)
        dropped = int(self.source.stats()["drops"])
        keeps_up = None
        if self.mode is RunMode.OFFERED:
            keeps_up = dropped == 0 and fps >= 0.95 * float(rate_fps)
        return RunResult(
            mode=self.mode.value, workers=self.workers, n_frames=len(numbers), fps=fps,
            latency_ms=latency_summary(latencies), stages_ms=stages, usage=usage,
            verdicts=dict(Counter(self._results[n] for n in published)), published=len(published),
            received=received, dropped=dropped, offered_fps=rate_fps, keeps_up=keeps_up,
            latencies_ms=[round(v, 3) for v in latencies],
        )


def _stage_means(timings: Sequence[dict[str, float]]) -> dict[str, float]:
    """Mean ms per stage over frames, in pipeline order (stages a frame lacks count as absent)."""
    order = ("queue", "decode", "preprocess", "segment", "measure", "verdict")
    names = [s for s in order if any(s in t for t in timings)]
    names += sorted({s for t in timings for s in t} - set(names))
    return {name: round(float(np.mean([t[name] for t in timings if name in t])), 3) for name in names}
