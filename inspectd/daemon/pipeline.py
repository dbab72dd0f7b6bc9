"""The frame loop: acquire -> decode -> analyse -> journal -> publish -> ack, in threads.

Why this shape:
* One acquire thread per source moves items into one bounded work queue. A folder source
  blocks there (it never drops); a free-running camera's own drop-oldest buffer fills and
  drops instead, so the pipeline always works on the newest frames.
* `workers` analysis threads share the stages of the items in analysis: an item's decode, then
  per frame preprocess, segment beside the out-of-distribution statistics (both need only the
  enhanced frame), measure + verdict (the `Analyzer`'s own stages, so the numbers are those of
  `Analyzer.analyze`, bit for bit). A thread always takes the next stage of the OLDEST item that
  has one ready and admits a new item only when none has: with many frames waiting, frame N+1 is
  decoded and segmented while frame N is measured; with one frame in flight, its segment and
  out-of-distribution stages run side by side. At most `workers + 1` items are in analysis, and
  results leave for the journal in the order the items were taken (the order of `seq`), whatever
  order their stages finish in. The numba kernels, OpenCV and ONNX Runtime release the GIL.
* Threads per kernel: the analysis threads are the parallelism. A stage that runs alone gets
  every core for its numba kernels; stages running side by side get one thread each
  (`numba.set_num_threads` is per thread), so two workers never start four kernel threads on
  two cores. With more than one worker OpenCV runs on the calling thread only: its own pool saved
  ~1 ms of a classical frame's 25 ms segment on 2 cores for ~10 ms of extra CPU, which the other
  worker needs. Full-frame buffers are not pooled: the arrays a frame allocates cost ~1 ms of
  page faults per 2560x1920 frame, and the enhanced frame and mask leave with the verdict
  (observers, the web UI) so they could not be reused safely anyway.
* A bug outside the per-frame error handling (a stage that raises) gives its item an ERROR
  verdict ("internal error") and then restarts the thread (see THREAD_CRASH_LIMIT), so the
  items behind it are not held back and a bug on every frame still stops the daemon.
* One publish thread commits each verdict to the journal (durable) BEFORE publishing it, then
  acks the source (a file moves to done/ or quarantine/ only after its verdict is durable).
  A crash between commit and ack leaves the file in the inbox; on restart the journal says it
  is done and the source only finishes the move: exactly one verdict per file.
* Every failure of one item becomes an ERROR (or NO_INSPECTION) verdict; nothing escapes.
* A frame out of the engine's distribution (`Assessment.out_of_distribution`) is reported on
  `error.<station>` when it starts a run of such frames from its source (`OutOfDistributionRuns`),
  whatever its verdict: ERROR under `trust.ood.action: error`, PASS/FAIL under `warn`.
* A journal that refuses writes (disk full, read-only, an I/O error, another process holding
  its lock, the file replaced) holds the verdict back and retries with back-off (0.1 s,
  doubling to 5 s), reporting on `error.<station>`: a verdict is never published unjournaled
  and never dropped. Input stops at the first failure: the acquire threads take nothing from
  the sources, so a folder's files wait in the inbox (its reader blocks on its own bounded
  buffer) and a free-running camera's buffer drops its oldest frames, counted in `drops`.
  Nothing keeps accumulating either way: at most `queue_size + 2 * workers` items are ever
  between the sources and the journal (`max_held`), failing journal or slow one. The first
  write that succeeds publishes the held verdicts in order and input resumes by itself. A
  shutdown in that state leaves the item's file in the inbox for the next start (a camera
  frame has no file: it is logged as lost).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import cv2
import numba

from inspectd.analysis.analyzer import Analyzer, FrameJob, FrameResult
from inspectd.analysis.decode import decode_bytes
from inspectd.analysis.verdict import error_verdict
from inspectd.daemon.error_topic import OUT_OF_DISTRIBUTION, OutOfDistributionRuns
from inspectd.daemon.journal import DuplicateVerdictError, Journal, JournalError
from inspectd.daemon.metrics import DaemonMetrics
from inspectd.errors import ImageDecodeError
from inspectd.sources.base import FileKey, FrameSource, ItemOutcome, SourceItem
from inspectd.types import Frame, Verdict, VerdictResult
from inspectd.wire import message as messages
from inspectd.wire.publish import Publisher

logger = logging.getLogger(__name__)

_POLL_S = 0.2  # how often blocked threads look at the stop flag
_JOURNAL_RETRY_FIRST_S = 0.1
_JOURNAL_RETRY_MAX_S = 5.0
# Told of every verdict after it is published: (final message, FrameResult); see Pipeline.add_observer.
VerdictObserver = Callable[[dict[str, Any], FrameResult], None]

# A pipeline thread whose loop raises is restarted: a bug that fires on one odd frame must not
# end its stage. The pause before a restart doubles with each recent crash (0.5 s, 1 s, 2 s ...
# up to 30 s), so a bug that fires on every frame cannot spin. THREAD_CRASH_LIMIT crashes
# (of any pipeline thread) within THREAD_CRASH_WINDOW_S mean the daemon cannot work as it is:
# it stops and exits non-zero, and systemd's Restart=on-failure starts it afresh (new
# threads, engine and sockets); its StartLimitBurst (5 starts in 10 minutes) then marks the
# unit failed for an operator instead of restarting a hopeless daemon forever.
THREAD_RESTART_FIRST_S = 0.5
THREAD_RESTART_MAX_S = 30.0
THREAD_CRASH_LIMIT = 5
THREAD_CRASH_WINDOW_S = 600.0


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
    return ItemOutcome.QUARANTINED if VerdictResult.not_judged(verdict) else ItemOutcome.OK


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
    # The analyzer that made `results` (None: nothing was analysed): its engine's name and
    # model hash go into the verdicts, even when the model was swapped meanwhile.
    analyzer: Analyzer | None = None


@dataclass
class _Decoded:
    """An item's frames, ready for the analysis stages, and the analyzer that analyses them all."""

    analyzer: Analyzer
    frames: list[Frame]
    timings_ms: dict[str, float]


# Stages of one frame after the item's decode, and the Analyzer method of each.
_FRAME_STAGES = {"preprocess": "preprocess", "segment": "segment", "ood": "assess", "measure": "measure"}


class _ItemJob:
    """One item in analysis: its frames' jobs, which stages are claimed and finished, its outcome.

    Only touched under `Pipeline._cond`, except the `FrameJob`s, each stage of which writes its
    own fields from the thread that runs it."""

    def __init__(self, work: _Work) -> None:
        self.work = work
        self.decoded: _Decoded | None = None
        self.decode_started = False
        self.frames: list[FrameJob] = []
        self.started: list[set[str]] = []
        self.finished: list[set[str]] = []
        self.running = 0  # its stages running now
        self.outcome: _Outcome | None = None

    @property
    def complete(self) -> bool:
        return self.outcome is not None and self.running == 0

    def ready_stages(self) -> Iterator[tuple[int, str]]:
        """(frame index, stage) for every stage that may start now; (-1, "decode") first."""
        if self.outcome is not None:
            return
        if not self.decode_started:
            yield -1, "decode"
            return
        for index, frame_job in enumerate(self.frames):
            if frame_job.result is not None:
                continue
            started, finished = self.started[index], self.finished[index]
            if "preprocess" not in started:
                yield index, "preprocess"
            elif "preprocess" in finished:
                for stage in ("segment", "ood"):
                    if stage not in started:
                        yield index, stage
                if "measure" not in started and {"segment", "ood"} <= finished:
                    yield index, "measure"


@dataclass
class _Task:
    job: _ItemJob
    index: int  # frame index; -1 for the item's decode
    stage: str
    kernel_threads: int


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
        observers: Iterable[VerdictObserver] = (),
        report_error: Callable[..., object] | None = None,
        on_fatal: Callable[[str], None] | None = None,
    ) -> None:
        """`report_error(kind, text, source=None, throttle=True)`: daemon-level trouble for
        `error.<station>` (`ErrorReporter.report`). `on_fatal(text)`: pipeline threads crashed
        more than `THREAD_CRASH_LIMIT` allows; the owner stops the daemon (called once, from
        the failing thread, so it must only ask for the stop). `observers` (and `on_published`,
        which gets the message alone): see `add_observer`."""
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
        # The analysis schedule: items in analysis, oldest first (results leave in this order).
        self._cond = threading.Condition()
        self._active: deque[_ItemJob] = deque()
        self._max_active = workers + 1
        self._running = 0  # stages running now, all items
        self._cores = max(1, min(len(os.sched_getaffinity(0)), numba.config.NUMBA_NUM_THREADS))
        self._opencv_threads_before: int | None = None
        self._threads: list[threading.Thread] = []
        self._publish_thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._in_flight = 0
        # Items between the sources and the journal: analysed results wait in `_done` while the
        # journal refuses writes, so this bounds memory (a few MB each for large frames).
        self.max_held = queue_size + 2 * workers
        self.journal_failure: str | None = None  # why the journal refuses writes; None while it takes them
        self.journal_failing_since: float | None = None  # monotonic
        self.journal_attempts = 0  # commits tried: moves while retrying, so the watchdog sees the loop alive
        metrics.items_held.set_function(lambda: self._in_flight)
        metrics.journal_writable.set(1)
        metrics.input_paused.set(0)
        self.progress = 0  # items fully handled (journaled, published, acked)
        self.last_progress_monotonic = time.monotonic()
        self.counts: Counter[str] = Counter()
        self.last_error: str | None = None
        self._on_published = on_published
        self._observers: list[VerdictObserver] = list(observers)
        self._report_error = report_error
        self._ood_runs = OutOfDistributionRuns()  # only the publish thread touches it
        self._on_fatal = on_fatal
        self._crash_times: deque[float] = deque()  # monotonic, within THREAD_CRASH_WINDOW_S
        self.fatal_error: str | None = None

    # ---- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        if self.workers > 1:
            self._opencv_threads_before = cv2.getNumThreads()
            cv2.setNumThreads(1)  # the workers are the parallelism (module docstring)
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
        with self._cond:
            self._cond.notify_all()
        self._done.put(None)
        for thread in [*self._threads, self._publish_thread]:
            if thread is not None:
                thread.join(timeout=5.0)
        if self._opencv_threads_before is not None:
            cv2.setNumThreads(self._opencv_threads_before)
            self._opencv_threads_before = None
        return drained

    def busy(self) -> bool:
        """Work pending anywhere between the sources' hand-off and the ack."""
        with self._lock:
            return self._in_flight > 0 or not self._work.empty()

    def input_paused(self) -> bool:
        """Whether the sources are left alone: the journal refuses writes, or `max_held` items are
        already between the sources and the journal."""
        return self.journal_failure is not None or self._in_flight >= self.max_held

    def journal_state(self) -> dict[str, Any]:
        """For `status`: whether verdicts can be journaled, and what waits meanwhile."""
        since = self.journal_failing_since
        return {"writable": self.journal_failure is None, "error": self.journal_failure,
                "failing_for_s": None if since is None else round(time.monotonic() - since, 3),
                "input_paused": self.journal_failure is not None, "held": self._in_flight, "max_held": self.max_held}

    def queue_depths(self) -> dict[str, int]:
        return {"analyse": self._work.qsize(), "publish": self._done.qsize(), "in_flight": self._in_flight}

    def replace_analyzer(self, analyzer: Analyzer) -> Analyzer:
        """Use `analyzer` (loaded and warmed up by the caller) from the next item on; returns the old one.

        Why this is safe without stopping anything: a worker reads `self.analyzer` once per
        item, so an item already being analysed finishes on the analyzer it started with, and
        its verdicts carry that analyzer's engine and model hash (`_Outcome.analyzer`).
        """
        with self._lock:
            previous, self.analyzer = self.analyzer, analyzer
        return previous

    def add_observer(self, observer: VerdictObserver) -> None:
        """Call `observer(final_message, frame_result)` for every verdict once it is journaled and published.

        It runs on the publish thread, so it must return at once (hand the work to a thread of
        its own, as the web UI's live feed does); an exception from it is logged and the
        pipeline goes on: a viewer of verdicts can never hold back or lose one.
        """
        self._observers.append(observer)

    def _notify_observers(self, final: dict[str, Any], result: FrameResult) -> None:
        if self._on_published is not None:
            try:
                self._on_published(final)
            except Exception:  # noqa: BLE001 - an observer's bug must not stop publishing
                logger.exception("on_published failed for seq %s; publishing goes on", final.get("seq"))
        for observer in self._observers:
            try:
                observer(final, result)
            except Exception:  # noqa: BLE001 - an observer's bug must not stop publishing
                logger.exception("verdict observer %r failed for seq %s; publishing goes on", observer,
                                 final.get("seq"))

    # ---- threads ------------------------------------------------------------------------

    def _spawn(self, target: Callable[..., None], name: str, *args: Any) -> threading.Thread:
        thread = threading.Thread(target=self._guarded, args=(target, name, *args), name=f"inspectd-{name}",
                                  daemon=True)
        thread.start()
        return thread

    def _guarded(self, target: Callable[..., None], name: str, *args: Any) -> None:
        """Run one pipeline thread's loop; restart it with back-off when it raises, and past
        the crash limit ask for the daemon to stop (see THREAD_CRASH_LIMIT for why)."""
        while not self._stop_workers.is_set():
            try:
                target(*args)
                return
            except Exception as exc:  # noqa: BLE001 - last line of defence of a long-running thread
                crashes = self._count_crash()
                error = f"{type(exc).__name__}: {exc}"
                self.last_error = f"thread {name} failed: {error}"
                if crashes >= THREAD_CRASH_LIMIT:
                    text = (f"pipeline thread {name} failed ({error}): {crashes} crashes within "
                            f"{THREAD_CRASH_WINDOW_S:.0f} s, stopping the daemon")
                    logger.critical("%s", text, exc_info=True)
                    self._report("pipeline_failed", text, throttle=False)
                    self._fail(text)
                    return
                delay_s = min(THREAD_RESTART_FIRST_S * 2.0 ** (crashes - 1), THREAD_RESTART_MAX_S)
                logger.exception("pipeline thread %s failed (crash %d of %d allowed within %.0f s); restarting it "
                                 "in %.1f s", name, crashes, THREAD_CRASH_LIMIT - 1, THREAD_CRASH_WINDOW_S, delay_s)
                self._report("thread_failed", f"pipeline thread {name} failed ({error}); restarting it in "
                                              f"{delay_s:.1f} s", throttle=False)
                if self._stop_workers.wait(delay_s):
                    return

    def _count_crash(self) -> int:
        """Record a crash now; the number of crashes within THREAD_CRASH_WINDOW_S, this one included."""
        now = time.monotonic()
        with self._lock:
            self._crash_times.append(now)
            while now - self._crash_times[0] > THREAD_CRASH_WINDOW_S:
                self._crash_times.popleft()
            return len(self._crash_times)

    def _fail(self, text: str) -> None:
        with self._lock:
            if self.fatal_error is not None:
                return
            self.fatal_error = text
        if self._on_fatal is not None:
            self._on_fatal(text)

    def _acquire_loop(self, source: FrameSource) -> None:
        while not self._stop_input.is_set():
            if self.input_paused():
                # Take nothing: a folder's files wait in the inbox, a camera's own buffer drops its oldest.
                self.metrics.drops.labels(source=source.source_id).set(source.stats().get("drops", 0))
                self._stop_input.wait(_POLL_S)
                continue
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
            with self._cond:
                self._cond.notify()  # an analysis thread may wait for work
            self.metrics.queue_depth.labels(queue="analyse").set(self._work.qsize())

    def _worker_loop(self) -> None:
        while not self._stop_workers.is_set():
            task = self._next_task()
            if task is None:
                continue
            numba.set_num_threads(task.kernel_threads)
            try:
                value = self._run(task)
            except Exception as exc:
                self._task_failed(task, exc)
                raise  # the item has its ERROR verdict; the thread restarts (_guarded)
            self._task_done(task, value)

    def _next_task(self) -> _Task | None:
        """Claim the next stage to run: the oldest item's first, else a newly admitted item's
        decode; None after a wait of up to _POLL_S with nothing to do, or when stopping."""
        with self._cond:
            while not self._stop_workers.is_set():
                candidates = self._ready()
                claimed = next(candidates, None)
                if claimed is None and len(self._active) < self._max_active:
                    try:
                        work = self._work.get_nowait()
                    except queue.Empty:
                        pass
                    else:
                        self.metrics.queue_depth.labels(queue="analyse").set(self._work.qsize())
                        self._active.append(_ItemJob(work))
                        claimed = (self._active[-1], -1, "decode")
                if claimed is not None:
                    job, index, stage = claimed
                    if stage == "decode":
                        job.decode_started = True
                    else:
                        job.started[index].add(stage)
                    job.running += 1
                    self._running += 1
                    # Another stage ready now will run beside this one (if a thread is free).
                    waiting = next(candidates, None) is not None or (
                        not self._work.empty() and len(self._active) < self._max_active)
                    sharing = min(self.workers, self._running + (1 if waiting else 0))
                    return _Task(job, index, stage, max(1, self._cores // sharing))
                if not self._cond.wait(_POLL_S):
                    return None
            return None

    def _ready(self) -> Iterator[tuple[_ItemJob, int, str]]:
        for job in self._active:
            for index, stage in job.ready_stages():
                yield job, index, stage

    def _run(self, task: _Task) -> _Outcome | _Decoded | None:
        if task.stage == "decode":
            return self._analyse(task.job.work)
        decoded = task.job.decoded
        assert decoded is not None
        getattr(decoded.analyzer, _FRAME_STAGES[task.stage])(task.job.frames[task.index])
        return None

    def _task_done(self, task: _Task, value: _Outcome | _Decoded | None) -> None:
        job = task.job
        settled: list[FrameResult] = []
        with self._cond:
            job.running -= 1
            self._running -= 1
            if task.stage == "decode":
                if isinstance(value, _Outcome):
                    job.outcome = value
                else:
                    assert value is not None
                    job.decoded = value
                    job.frames = [FrameJob(frame) for frame in value.frames]
                    job.started = [set() for _ in value.frames]
                    job.finished = [set() for _ in value.frames]
                    self._complete_if_settled(job)
            elif job.outcome is None:  # else: the item failed meanwhile and has its ERROR already
                finished = job.finished[task.index]
                finished.add(task.stage)
                if task.stage in ("preprocess", "measure") or {"segment", "ood"} <= finished:
                    assert job.decoded is not None
                    result = self._settle(job.decoded.analyzer, job.frames[task.index])
                    if result is not None:
                        settled.append(result)
                self._complete_if_settled(job)
            self._emit_ready()
            self._cond.notify_all()
        for result in settled:
            for stage, ms in result.verdict.timings_ms.items():
                self.metrics.stage_latency.labels(stage=stage).observe(ms / 1000.0)

    def _task_failed(self, task: _Task, exc: Exception) -> None:
        """A stage raised past the per-frame error handling: every frame of its item not yet
        settled gets an ERROR verdict naming the failure."""
        reason = f"internal error: {type(exc).__name__}: {exc}"
        job, item = task.job, task.job.work.item
        logger.error("analysis of %s failed in its %s stage: %s", item.source, task.stage, reason)
        with self._cond:
            job.running -= 1
            self._running -= 1
            if job.outcome is None:
                if job.decoded is None:
                    failed = Frame(pixels=None, source=item.source, sha256=item.sha256, part_id=item.part_id)
                    job.outcome = _Outcome(job.work, [FrameResult(failed, error_verdict(reason))], {})
                else:
                    results = [frame_job.result or FrameResult(frame_job.frame, error_verdict(reason))
                               for frame_job in job.frames]
                    job.outcome = _Outcome(job.work, results, job.decoded.timings_ms, analyzer=job.decoded.analyzer)
            self._emit_ready()
            self._cond.notify_all()

    @staticmethod
    def _settle(analyzer: Analyzer, frame_job: FrameJob) -> FrameResult | None:
        try:
            return analyzer.settle(frame_job)
        except Exception as exc:  # noqa: BLE001 - the per-frame boundary: the frame gets its ERROR, the item goes on
            logger.exception("could not settle the result of %s field %d", frame_job.frame.source,
                             frame_job.frame.field_index)
            frame_job.result = FrameResult(frame_job.frame, error_verdict(f"internal error: {type(exc).__name__}: {exc}"))
            return frame_job.result

    def _complete_if_settled(self, job: _ItemJob) -> None:
        if job.outcome is None and job.decoded is not None and all(f.result is not None for f in job.frames):
            results = [f.result for f in job.frames if f.result is not None]
            job.outcome = _Outcome(job.work, results, job.decoded.timings_ms, analyzer=job.decoded.analyzer)

    def _emit_ready(self) -> None:
        """Hand finished items to the publish thread in the order they were taken (under _cond)."""
        while self._active and self._active[0].complete:
            outcome = self._active.popleft().outcome
            assert outcome is not None
            self._done.put(outcome)

    def _analyse(self, work: _Work) -> _Outcome | _Decoded:
        """An item's first stage: its outcome when it cannot be analysed (the source's error, an
        unreadable file), else its decoded frames and the analyzer for all of them."""
        item = work.item
        timings_ms = {"queue": _ms(time.perf_counter() - work.queued_at)}
        if item.error is not None:
            no_inspection = item.metadata.get("outcome") == VerdictResult.NO_INSPECTION.value
            failed = Frame(pixels=None, source=item.source, sha256=item.sha256, part_id=item.part_id)
            result = FrameResult(failed, error_verdict(item.error))
            return _Outcome(work, [result], timings_ms, no_inspection=item.error if no_inspection else None)
        analyzer = self.analyzer  # one analyzer per item, even if the model is swapped meanwhile
        start = time.perf_counter()
        try:
            frames = self._frames_of(item)
        except ImageDecodeError as exc:
            failed = Frame(pixels=None, source=item.source, sha256=item.sha256, part_id=item.part_id)
            return _Outcome(work, [FrameResult(failed, error_verdict(exc.reason))], timings_ms, analyzer=analyzer)
        finally:
            timings_ms["decode"] = _ms(time.perf_counter() - start)
        self.metrics.stage_latency.labels(stage="decode").observe(timings_ms["decode"] / 1000.0)
        return _Decoded(analyzer, frames, timings_ms)

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
                key = file_dedupe_key(*item.key, None if index == last else result.frame.field_index)
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
                             f"verdict {final['verdict']}): "
                             + (outcome.analyzer or self.analyzer).assessor.describe(result.assessment),
                             source=item.source_id, throttle=False)
            if VerdictResult.not_judged(final["verdict"]):
                errors.append(final["reason"])
            self._notify_observers(final, result)
        if is_file:
            outcome_kind = ItemOutcome.QUARANTINED if errors else ItemOutcome.OK
            try:
                source.ack(item, outcome_kind, reason="; ".join(errors) or None)
            except Exception:  # noqa: BLE001 - a failed move must not lose the next verdict
                logger.exception("could not move %s after its verdict", item.source)
                self.last_error = f"ack failed for {item.source}"

    def _commit(self, draft: dict[str, Any], key: str | None) -> dict[str, Any]:
        """Journal `draft`, retrying with back-off while the journal refuses writes (input is
        paused meanwhile: `input_paused`)."""
        delay_s = _JOURNAL_RETRY_FIRST_S
        failed = False
        while True:
            self.journal_attempts += 1
            try:
                final = self.journal.commit(draft, key)
            except DuplicateVerdictError:
                existing = self.journal.message_for(key) if failed and key is not None else None
                if existing is None:
                    raise
                final = existing  # the attempt that reported an error reached the disk after all
            except JournalError as exc:
                failed = True
                self._journal_failed(exc)
                if self._stop_workers.wait(delay_s):
                    raise _StoppedWhileRetrying from exc
                delay_s = min(2.0 * delay_s, _JOURNAL_RETRY_MAX_S)
                continue
            if self.journal_failure is not None:
                self._journal_writable_again()
            return final

    def _journal_failed(self, exc: JournalError) -> None:
        self.metrics.journal_write_failures.inc()
        first = self.journal_failure is None
        if first:
            self.journal_failing_since = time.monotonic()
            self.metrics.journal_writable.set(0)
            self.metrics.input_paused.set(1)
            logger.error("journal write failed: input is paused and %d item(s) are held back until the journal "
                         "can be written; retrying: %s", self._in_flight, exc)
        self.journal_failure = str(exc)
        self.last_error = str(exc)
        # The first failure of an episode goes out at once; retries are throttled like any report.
        self._report("journal_write_failed", f"{exc}; input is paused and {self._in_flight} item(s) are held back "
                                             "until the journal can be written", throttle=not first)

    def _journal_writable_again(self) -> None:
        since = self.journal_failing_since
        self.journal_failure = None
        self.journal_failing_since = None
        self.metrics.journal_writable.set(1)
        self.metrics.input_paused.set(0)
        logger.warning("journal writable again after %.1f s: the held verdicts are published in order and input "
                       "resumes", time.monotonic() - (since if since is not None else time.monotonic()))

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
        engine = (outcome.analyzer or self.analyzer).engine
        verdict_value: Verdict | str = verdict
        if outcome.no_inspection is not None:
            verdict_value = VerdictResult.NO_INSPECTION.value
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
        if VerdictResult.not_judged(result):
            self.last_error = f"{item.source}: {final['reason']}"


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 3)
