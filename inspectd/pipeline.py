"""The frame loop: acquire -> decode -> analyse -> journal -> publish -> ack, in threads.

Why this shape:
* One acquire thread per source moves items into one bounded work queue. A folder source
  blocks there (it never drops); a free-running camera's own drop-oldest buffer fills and
  drops instead, so the pipeline always works on the newest frames.
* `workers` analysis threads run decode + `Analyzer.analyze`; the numba kernels and ONNX
  Runtime release the GIL, so they overlap.
* One publish thread commits each verdict to the journal (durable) BEFORE publishing it, then
  acks the source (a file moves to done/ or quarantine/ only after its verdict is durable).
  A crash between commit and ack leaves the file in the inbox; on restart the journal says it
  is done and the source only finishes the move: exactly one verdict per file.
* Every failure of one item becomes an ERROR (or NO_INSPECTION) verdict; nothing escapes.
* A frame out of the engine's distribution (`Assessment.out_of_distribution`) is reported on
  `error.<station>` when it starts a run of such frames from its source (`OutOfDistributionRuns`),
  whatever its verdict: ERROR under `trust.ood.action: error`, PASS/FAIL under `warn`.
* A journal that refuses writes (disk full, another process holding its lock) holds the
  verdict back and retries with back-off, reporting on `error.<station>`: a verdict is
  never published unjournaled and never dropped. Input waits behind it meanwhile. A
  shutdown in that state leaves the item's file in the inbox for the next start (a camera
  frame has no file: it is logged as lost).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from inspectd import message as messages
from inspectd.analysis import Analyzer, FrameResult
from inspectd.decode import decode_bytes
from inspectd.error_topic import OUT_OF_DISTRIBUTION, OutOfDistributionRuns
from inspectd.errors import ImageDecodeError
from inspectd.journal import DuplicateVerdictError, Journal, JournalError
from inspectd.metrics import DaemonMetrics
from inspectd.publish import Publisher
from inspectd.sources.base import FrameSource, ItemOutcome, SourceItem
from inspectd.sources.folder import FileKey
from inspectd.types import Frame, Verdict, VerdictResult
from inspectd.verdict import error_verdict

logger = logging.getLogger(__name__)

_POLL_S = 0.2  # how often blocked threads look at the stop flag
_JOURNAL_RETRY_FIRST_S = 0.1
_JOURNAL_RETRY_MAX_S = 5.0
NO_INSPECTION = "NO_INSPECTION"


def file_dedupe_key(path: str, sha256: str, field_index: int | None = None) -> str:
    """Journal key of a file's verdict; the LAST field of a file carries the bare key, so a
    file counts as done only when every field of it is journaled."""
    base = f"file:{path}:{sha256}"
    return base if field_index is None else f"{base}:field{field_index}"


def journaled_outcome(journal: Journal, key: FileKey) -> ItemOutcome | None:
    """The folder source's exactly-once check: a journaled file only needs its move finished."""
    verdict = journal.verdict_for(file_dedupe_key(str(key.path), key.sha256))
    if verdict is None:
        return None
    return ItemOutcome.QUARANTINED if verdict in (VerdictResult.ERROR.value, NO_INSPECTION) else ItemOutcome.OK


class _StoppedWhileRetrying(Exception):
    """Shutdown came while a verdict waited for the journal: leave the item unacked."""


@dataclass
class _Work:
    item: SourceItem
    source: FrameSource
    queued_at: float = field(default_factory=time.perf_counter)


@dataclass
class _Outcome:
    work: _Work
    results: list[FrameResult]
    timings_ms: dict[str, float]
    no_inspection: str | None = None


class Pipeline:
    """Owns the threads between the sources and the publisher; see the module docstring."""

    def __init__(
        self,
        *,
        station: str,
        analyzer: Analyzer,
        journal: Journal,
        publisher: Publisher,
        sources: list[FrameSource],
        metrics: DaemonMetrics,
        workers: int = 1,
        queue_size: int = 4,
        on_published: Callable[[dict[str, Any]], None] | None = None,
        report_error: Callable[..., object] | None = None,
    ) -> None:
        """`report_error(kind, text, source=None, throttle=True)`: daemon-level trouble for
        `error.<station>` (`ErrorReporter.report`)."""
        self.station = station
        self.analyzer = analyzer
        self.journal = journal
        self.publisher = publisher
        self.sources = sources
        self.metrics = metrics
        self.workers = workers
        self._work: queue.Queue[_Work] = queue.Queue(maxsize=queue_size)
        self._done: queue.Queue[_Outcome | None] = queue.Queue()
        self._stop_input = threading.Event()
        self._stop_workers = threading.Event()
        self._threads: list[threading.Thread] = []
        self._publish_thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._in_flight = 0
        self.progress = 0  # items fully handled (journaled, published, acked)
        self.last_progress_monotonic = time.monotonic()
        self.counts: Counter[str] = Counter()
        self.last_error: str | None = None
        self._on_published = on_published
        self._report_error = report_error
        self._ood_runs = OutOfDistributionRuns()  # only the publish thread touches it

    # ---- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        self._publish_thread = self._spawn(self._publish_loop, "publish")
        for index in range(self.workers):
            self._threads.append(self._spawn(self._worker_loop, f"analyse-{index}"))
        for source in self.sources:
            self._threads.append(self._spawn(self._acquire_loop, f"acquire-{source.source_id}", source))

    def stop(self, grace_s: float) -> bool:
        """Stop taking input, finish what is in flight within `grace_s`; True if all finished."""
        self._stop_input.set()
        for source in self.sources:
            source.stop(timeout_s=min(5.0, max(grace_s, 0.5)))
        deadline = time.monotonic() + grace_s
        while self.busy() and time.monotonic() < deadline:
            time.sleep(0.02)
        drained = not self.busy()
        if not drained:
            logger.warning("shutdown grace of %.1f s over with %d item(s) unfinished; their files stay in the "
                           "inbox and are inspected after the restart", grace_s, self._in_flight + self._work.qsize())
        self._stop_workers.set()
        self._done.put(None)
        for thread in [*self._threads, self._publish_thread]:
            if thread is not None:
                thread.join(timeout=5.0)
        return drained

    def busy(self) -> bool:
        """Work pending anywhere between the sources' hand-off and the ack."""
        with self._lock:
            return self._in_flight > 0 or not self._work.empty()

    def queue_depths(self) -> dict[str, int]:
        return {"analyse": self._work.qsize(), "publish": self._done.qsize(), "in_flight": self._in_flight}

    # ---- threads ------------------------------------------------------------------------

    def _spawn(self, target: Callable[..., None], name: str, *args: Any) -> threading.Thread:
        thread = threading.Thread(target=self._guarded, args=(target, name, *args), name=f"inspectd-{name}",
                                  daemon=True)
        thread.start()
        return thread

    def _guarded(self, target: Callable[..., None], name: str, *args: Any) -> None:
        # A bug in a loop must not silently end that stage: log it and keep the loop running.
        while not self._stop_workers.is_set():
            try:
                target(*args)
                return
            except Exception as exc:  # noqa: BLE001 - last line of defence of a long-running thread
                logger.exception("pipeline thread %s failed; restarting it", name)
                self.last_error = f"thread {name} failed"
                self._report("thread_failed", f"pipeline thread {name} failed and restarts: "
                                              f"{type(exc).__name__}: {exc}")
                time.sleep(0.5)

    def _acquire_loop(self, source: FrameSource) -> None:
        while not self._stop_input.is_set():
            item = source.get(timeout_s=_POLL_S)
            self.metrics.drops.labels(source=source.source_id).set(source.stats().get("drops", 0))
            if item is None:
                if source.finished:
                    logger.info("source %s finished", source.source_id)
                    return
                continue
            work = _Work(item, source)
            with self._lock:
                self._in_flight += 1
            while True:
                try:
                    self._work.put(work, timeout=_POLL_S)
                    break
                except queue.Full:
                    if self._stop_workers.is_set():
                        with self._lock:
                            self._in_flight -= 1  # not acked: a file stays in the inbox for the next start
                        return
            self.metrics.queue_depth.labels(queue="analyse").set(self._work.qsize())

    def _worker_loop(self) -> None:
        while not self._stop_workers.is_set():
            try:
                work = self._work.get(timeout=_POLL_S)
            except queue.Empty:
                continue
            self.metrics.queue_depth.labels(queue="analyse").set(self._work.qsize())
            self._done.put(self._analyse(work))

    def _analyse(self, work: _Work) -> _Outcome:
        item = work.item
        timings_ms = {"queue": _ms(time.perf_counter() - work.queued_at)}
        if item.error is not None:
            no_inspection = item.metadata.get("outcome") == NO_INSPECTION
            failed = Frame(pixels=None, source=item.source, sha256=item.sha256, part_id=item.part_id)  # type: ignore[arg-type]
            result = FrameResult(failed, error_verdict(item.error))
            return _Outcome(work, [result], timings_ms, no_inspection=item.error if no_inspection else None)
        start = time.perf_counter()
        try:
            frames = self._frames_of(item)
        except ImageDecodeError as exc:
            failed = Frame(pixels=None, source=item.source, sha256=item.sha256, part_id=item.part_id)  # type: ignore[arg-type]
            return _Outcome(work, [FrameResult(failed, error_verdict(exc.reason))], timings_ms)
        finally:
            timings_ms["decode"] = _ms(time.perf_counter() - start)
        self.metrics.stage_latency.labels(stage="decode").observe(timings_ms["decode"] / 1000.0)
        results = []
        for frame in frames:
            result = self.analyzer.analyze(frame)
            for stage, ms in result.verdict.timings_ms.items():
                self.metrics.stage_latency.labels(stage=stage).observe(ms / 1000.0)
            results.append(result)
        return _Outcome(work, results, timings_ms)

    def _frames_of(self, item: SourceItem) -> list[Frame]:
        cfg = self.analyzer.cfg.input
        if item.payload is not None:
            frames = decode_bytes(item.payload, item.source, max_pixels=cfg.max_pixels,
                                  max_file_bytes=cfg.max_file_bytes)
        else:
            pixels = item.pixels
            bit_depth = 8 if pixels.dtype.itemsize == 1 else 16
            frames = [Frame(pixels=pixels, source=item.source, bit_depth=bit_depth, sha256=item.sha256)]
        return [Frame(pixels=f.pixels, source=item.source, field_index=f.field_index, bit_depth=f.bit_depth,
                      sha256=item.sha256 or f.sha256, capture_time=item.capture_time, part_id=item.part_id)
                for f in frames]

    def _publish_loop(self) -> None:
        while True:
            outcome = self._done.get()
            if outcome is None:
                return
            try:
                self._publish(outcome)
            finally:
                with self._lock:
                    self._in_flight -= 1
                self.progress += 1
                self.last_progress_monotonic = time.monotonic()

    def _publish(self, outcome: _Outcome) -> None:
        item, source = outcome.work.item, outcome.work.source
        is_file = item.kind == "file"
        last = len(outcome.results) - 1
        errors = []
        for index, result in enumerate(outcome.results):
            key = None
            if is_file:
                key = file_dedupe_key(item.source, item.sha256, None if index == last else result.frame.field_index)
            draft = self._draft(item, result, outcome)
            start = time.perf_counter()
            try:
                final = self._commit(draft, key)
            except DuplicateVerdictError:
                logger.info("%s already journaled (restart mid-file); not published again", key)
                continue
            except _StoppedWhileRetrying:
                logger.warning("stopping while the journal refuses writes: %s stays unjournaled%s", item.source,
                               "; its file is inspected again after the restart" if is_file else " and is lost")
                return
            self.metrics.stage_latency.labels(stage="journal").observe(time.perf_counter() - start)
            self.publisher.publish_verdict(final)
            self._count(final, item)
            if self._ood_runs.observe(item.source_id, result.assessment):
                self._report(OUT_OF_DISTRIBUTION,
                             f"a run of frames out of distribution starts at {result.frame.source} (seq {final['seq']}, "
                             f"verdict {final['verdict']}): " + self.analyzer.assessor.describe(result.assessment),
                             source=item.source_id, throttle=False)
            if final["verdict"] in (VerdictResult.ERROR.value, NO_INSPECTION):
                errors.append(final["reason"])
            if self._on_published is not None:
                self._on_published(final)
        if is_file:
            outcome_kind = ItemOutcome.QUARANTINED if errors else ItemOutcome.OK
            try:
                source.ack(item, outcome_kind, reason="; ".join(errors) or None)
            except Exception:  # noqa: BLE001 - a failed move must not lose the next verdict
                logger.exception("could not move %s after its verdict", item.source)
                self.last_error = f"ack failed for {item.source}"

    def _commit(self, draft: dict[str, Any], key: str | None) -> dict[str, Any]:
        """Journal `draft`, retrying with back-off while the journal refuses writes."""
        delay_s = _JOURNAL_RETRY_FIRST_S
        failing_since: float | None = None
        while True:
            try:
                final = self.journal.commit(draft, key)
            except DuplicateVerdictError:
                raise
            except JournalError as exc:
                if failing_since is None:
                    failing_since = time.monotonic()
                    logger.error("journal write failed, holding the verdict back and retrying: %s", exc)
                self.last_error = str(exc)
                self._report("journal_write_failed", f"{exc}; verdicts are held back until it can be written")
                if self._stop_workers.wait(delay_s):
                    raise _StoppedWhileRetrying from exc
                delay_s = min(2.0 * delay_s, _JOURNAL_RETRY_MAX_S)
                continue
            if failing_since is not None:
                logger.warning("journal writable again after %.1f s; publishing resumes",
                               time.monotonic() - failing_since)
            return final

    def _report(self, kind: str, text: str, *, source: str | None = None, throttle: bool = True) -> None:
        if self._report_error is None:
            return
        if source is None and throttle:
            self._report_error(kind, text)
        else:
            self._report_error(kind, text, source, throttle=throttle)

    def _draft(self, item: SourceItem, result: FrameResult, outcome: _Outcome) -> dict[str, Any]:
        frame, verdict = result.frame, result.verdict
        pixels = frame.pixels
        engine = self.analyzer.engine
        verdict_value: Verdict | str = verdict
        if outcome.no_inspection is not None:
            verdict_value = NO_INSPECTION
        return messages.build_verdict_message(
            station=self.station,
            verdict=verdict_value,
            reason=verdict.reason,
            source=item.source,
            source_kind=item.kind,
            part_id=item.part_id,
            capture_time=item.capture_time,
            metrics=result.measurements.metrics if result.measurements else {},
            engine_name=engine.name,
            backend=engine.backend,
            model_hash=engine.model_hash,
            timings_ms={**outcome.timings_ms, **verdict.timings_ms},
            image_sha256=item.sha256 or None,
            width=None if pixels is None else int(pixels.shape[1]),
            height=None if pixels is None else int(pixels.shape[0]),
            bit_depth=None if pixels is None else frame.bit_depth,
            frame_number=item.frame_number,
            field_index=frame.field_index,
            assessment=result.assessment,
        )

    def _count(self, final: dict[str, Any], item: SourceItem) -> None:
        result = final["verdict"]
        self.counts[result] += 1
        self.metrics.verdicts.labels(result=result).inc()
        self.metrics.frames.labels(source=item.source_id).inc()
        capture = item.capture_time or datetime.now(timezone.utc)
        self.metrics.capture_to_publish.observe(max(0.0, (datetime.now(timezone.utc) - capture).total_seconds()))
        if result in (VerdictResult.ERROR.value, NO_INSPECTION):
            self.last_error = f"{item.source}: {final['reason']}"


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 3)
