"""The daemon's wiring: what starts in which order, and how it stops.

Start: journal -> control socket (answers `status` with ready=false at once) -> publisher
-> metrics -> engine load + warm-up (JIT, models) -> sources -> pipeline -> READY=1 and the
watchdog. Stop (SIGTERM): stop taking input, finish frames in flight within the grace
period, flush the publisher, close the journal, exit 0. SIGHUP re-reads the rules.
"""

from __future__ import annotations

import functools
import logging
import os
import platform
import signal
import threading
import time
from pathlib import Path
from typing import Any

import numba
import zmq
from prometheus_client import CollectorRegistry

import inspectd
from inspectd import config as config_module
from inspectd.analysis.analyzer import Analyzer
from inspectd.config import Config
from inspectd.daemon.control_server import ControlServer, replay_handler
from inspectd.daemon.error_topic import ErrorReporter
from inspectd.daemon.journal import JOURNAL_FILE, Journal, JournalError
from inspectd.daemon.metrics import DaemonMetrics
from inspectd.daemon.pipeline import Pipeline, journaled_outcome
from inspectd.daemon.service import Notifier, StallWatchdog
from inspectd.errors import ConfigError, InspectdError, StartupError
from inspectd.sources.base import FrameSource, Severity, SourceContext, StatusUpdate
from inspectd.sources.registry import build_source
from inspectd.wire.curve import CurveServer, load_server_keys
from inspectd.wire.publish import Publisher

logger = logging.getLogger(__name__)

PRUNE_EVERY_S = 3600.0
PRUNE_RETRY_S = 60.0
# `run` exits with this when pipeline threads kept crashing (`Pipeline.fatal_error`): not
# in the unit's RestartPreventExitStatus, so systemd restarts the daemon afresh.
EXIT_PIPELINE_FAILED = 1


class Daemon:
    """`inspectd run`. Pass `context`/`registry`/`notifier` in to run several in one test."""

    def __init__(
        self,
        cfg: Config,
        *,
        config_path: str | Path | None = None,
        context: zmq.Context | None = None,
        registry: CollectorRegistry | None = None,
        notifier: Notifier | None = None,
    ) -> None:
        if not cfg.sources:
            msg = "no frame source configured: add one under `sources:` or pass --watch DIR"
            raise ConfigError(msg)
        self.cfg = cfg
        self.config_path = config_path
        self.context = context or zmq.Context()
        self._own_context = context is None
        self.metrics = DaemonMetrics(registry or CollectorRegistry())
        self.notifier = notifier or Notifier()
        self.started_monotonic = time.monotonic()
        self.ready = False
        self.stopping = threading.Event()
        self.reload_requested = threading.Event()
        self.journal: Journal | None = None
        self.control: ControlServer | None = None
        self.publisher: Publisher | None = None
        self.errors: ErrorReporter | None = None
        self.curve: CurveServer | None = None
        self.analyzer: Analyzer | None = None
        self.sources: list[FrameSource] = []
        self.pipeline: Pipeline | None = None
        self.watchdog: StallWatchdog | None = None
        self.metrics_port: int | None = None
        self._metrics_server: Any = None
        self.web: Any = None  # inspectd.web.server.WebServer when http.listen is set
        self.alarms: Any = None  # inspectd.web.alarms.AlarmMonitor: control-chart alarms on alarm.<station>
        self._last_prune = 0.0
        self._last_source_event: str | None = None
        self._new_stream_warning: str | None = None
        self.fatal_error: str | None = None
        self._swap_lock = threading.Lock()  # one model swap at a time (`swap_model`)

    # ---- start / stop -------------------------------------------------------------------

    def start(self) -> None:
        """Everything up to READY; raises InspectdError (nothing left running) when it cannot."""
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        cfg = self.cfg
        state_dir = prepare_state_dir(Path(cfg.state_dir))
        self.journal = Journal(state_dir / JOURNAL_FILE, retention_days=cfg.journal.retention_days,
                               retention_rows=cfg.journal.retention_rows, lock_timeout_s=cfg.journal.lock_timeout_s)
        self._prune()
        if cfg.curve.enabled:
            keys = load_server_keys(cfg.curve.server_secret_key_file, cfg.curve.allowed_clients_dir)
            self.curve = CurveServer(keys, context=self.context)
        self.control = ControlServer(cfg.control.bind, {"status": self._status, "reload": self._reload,
                                                         "replay": replay_handler(self.journal)},
                                     context=self.context, curve_server=self.curve)
        self.control.start()
        self.publisher = Publisher(cfg.station, cfg.publish.bind, context=self.context,
                                   heartbeat_interval_s=cfg.publish.heartbeat_interval_s, sndhwm=cfg.publish.sndhwm,
                                   curve_server=self.curve, epoch=self.journal.epoch, last_seq=self.journal.last_seq)
        self.publisher.start()
        self.errors = ErrorReporter(self.publisher.publish_error, station=cfg.station, epoch=self.journal.epoch,
                                    counted=lambda kind: self.metrics.daemon_errors.labels(kind=kind).inc())
        self.journal.report = self.errors.report
        self._announce_stream(state_dir)
        self._start_alarm_monitor(state_dir)
        if cfg.metrics.enabled:
            try:
                self._metrics_server, self.metrics_port = self.metrics.serve(cfg.metrics.host, cfg.metrics.port)
            except OSError as exc:  # port taken (the previous instance still closing), host not up yet
                msg = f"metrics: cannot listen on {cfg.metrics.host}:{cfg.metrics.port}: {exc.strerror or exc}"
                raise StartupError(msg) from exc
        if cfg.http.listen is not None:
            self._start_web_ui(state_dir)

        self.notifier.status("warming up: loading engine, compiling kernels")
        self.analyzer = Analyzer(cfg)
        self.analyzer.warm_up()
        logger.info("engine %s on %s ready; numba threading layer %s", self.analyzer.engine.name,
                    self.analyzer.engine.backend, numba.threading_layer())

        self.sources = [self._build_source(source_cfg) for source_cfg in cfg.sources]
        self.pipeline = Pipeline(station=cfg.station, analyzer=self.analyzer, journal=self.journal,
                                 publisher=self.publisher, sources=self.sources, metrics=self.metrics,
                                 workers=cfg.pipeline.workers, queue_size=cfg.pipeline.queue_size,
                                 report_error=self.errors.report, on_fatal=self._on_pipeline_failed,
                                 observers=self.web.context.verdict_observers if self.web is not None else ())
        for source in self.sources:
            source.start()
        self.pipeline.start()
        # A journal retry counts as life: input waits for the journal on purpose, and a restart
        # by systemd would not give it space back (status and error.<station> say what is wrong).
        self.watchdog = StallWatchdog(self.notifier,
                                      progress=lambda: (self.pipeline.progress, self.pipeline.journal_attempts),
                                      busy=self.pipeline.busy, stall_after_s=cfg.pipeline.stall_after_s,
                                      describe=self._describe_stall,
                                      on_stall=functools.partial(self.errors.report, "pipeline_stalled"))
        self.watchdog.start()
        self.ready = True
        self.metrics.ready.set(1)
        if self._new_stream_warning is not None:
            self.errors.report("journal_new_epoch", self._new_stream_warning, throttle=False)
        self.notifier.ready(self._status_line())
        logger.info("inspectd %s ready: station %s, publishing on %s, control on %s", inspectd.__version__,
                    cfg.station, ", ".join(self.publisher.endpoints), self.control.endpoint)

    def _start_web_ui(self, state_dir: Path) -> None:
        # Before the engine loads: /healthz answers "starting" while the kernels compile.
        from inspectd.web.auth import AccessGuard, read_token
        from inspectd.web.context import WebContext
        from inspectd.web.server import WebServer

        host, port = config_module.parse_http_listen(self.cfg.http.listen)
        token = read_token(self.cfg.http.token, self.cfg.http.token_file)
        self.web = WebServer(WebContext(self.cfg, state_dir, AccessGuard(token), daemon=self), host, port)
        self.web.start()

    def _start_alarm_monitor(self, state_dir: Path) -> None:
        # Its own thread, reading the journal read-only: it can delay an alarm, never a verdict.
        # Idle until the Trends page saves settings (<state dir>/ui/spc.json).
        from inspectd.web.alarms import AlarmMonitor

        self.alarms = AlarmMonitor(state_dir, station=self.cfg.station, publish=self.publisher.publish_alarm)
        self.alarms.start()

    def _build_source(self, source_cfg: Any) -> FrameSource:
        context = SourceContext(on_status=self._on_source_status, zmq_context=self.context,
                                state_dir=Path(self.cfg.state_dir), max_file_bytes=self.cfg.input.max_file_bytes,
                                is_done=functools.partial(journaled_outcome, self.journal))
        return build_source(source_cfg, context)

    def stop(self) -> bool:
        """Stop in reverse order; True when every frame in flight was finished."""
        self.notifier.stopping()
        drained = True
        if self.web is not None:  # first: no new requests while the pipeline drains
            self.web.stop()
            self.web = None
        if self.watchdog is not None:
            self.watchdog.stop()
        if self.pipeline is not None:
            drained = self.pipeline.stop(self.cfg.pipeline.shutdown_grace_s)
        else:
            for source in self.sources:
                source.stop()
        if self.alarms is not None:  # before the publisher it publishes through
            self.alarms.stop()
            self.alarms = None
        if self.publisher is not None:
            self.publisher.close()
        if self.control is not None:
            self.control.close()
        if self.curve is not None:
            self.curve.close()
        if self.journal is not None:
            self.journal.close()
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server.server_close()
        if self._own_context:
            self.context.term()
        self.ready = False
        logger.info("inspectd stopped (%s)", "all frames finished" if drained else "some frames left for next start")
        return drained

    def run_until_signalled(self) -> int:
        """The service's main loop: SIGTERM/SIGINT stop, SIGHUP reloads the rules."""
        signal.signal(signal.SIGTERM, lambda *_: self.stopping.set())
        signal.signal(signal.SIGINT, lambda *_: self.stopping.set())
        signal.signal(signal.SIGHUP, lambda *_: self.reload_requested.set())
        self.start()
        while not self.stopping.wait(0.5):
            if self.reload_requested.is_set():
                self.reload_requested.clear()
                self._reload({})
            if time.monotonic() - self._last_prune > PRUNE_EVERY_S:
                self._prune()
            if self.ready:
                self.notifier.status(self._status_line())
                self.journal.flush_history()  # how far this epoch got, should the journal be swapped
        self.stop()
        if self.fatal_error is not None:
            logger.critical("inspectd exits with %d: %s", EXIT_PIPELINE_FAILED, self.fatal_error)
            return EXIT_PIPELINE_FAILED
        return 0

    # ---- control handlers ---------------------------------------------------------------

    def _status(self, _request: dict[str, Any]) -> dict[str, Any]:
        return self.status_facts()

    def status_facts(self) -> dict[str, Any]:
        """What `inspectd status` shows (the control socket's answer); the web UI shows the same."""
        pipeline = self.pipeline
        engine = self.analyzer.engine if self.analyzer else None
        return {
            "ok": True,
            "ready": self.ready,
            "station": self.cfg.station,
            "epoch": self.journal.epoch if self.journal else None,
            "last_seq": self.journal.last_seq() if self.journal else 0,
            "uptime_s": round(time.monotonic() - self.started_monotonic, 3),
            "pid": os.getpid(),
            "versions": {"inspectd": inspectd.__version__, "python": platform.python_version(),
                         "numba": numba.__version__, "zmq": zmq.zmq_version()},
            "engine": None if engine is None else {"name": engine.name, "backend": engine.backend,
                                                   "model_hash": engine.model_hash},
            "sources": [{"id": s.source_id, "kind": s.KEY, "state": s.state.value, "stats": _jsonable(s.stats())}
                        for s in self.sources],
            "queues": pipeline.queue_depths() if pipeline else {},
            "counts": dict(pipeline.counts) if pipeline else {},
            "processed": pipeline.progress if pipeline else 0,
            "journal": self._journal_status(),
            "last_error": (pipeline.last_error if pipeline else None) or self._last_source_event,
            "watchdog": None if self.watchdog is None else {"stalled": self.watchdog.stalled,
                                                            "seconds_since_progress":
                                                                round(self.watchdog.seconds_since_progress(), 3)},
            "metrics_port": self.metrics_port,
            "http": None if self.web is None else self.web.url,
        }

    def _reload(self, _request: dict[str, Any]) -> dict[str, Any]:
        """Re-read the rules (only the rules) from the config file, without a restart."""
        self.notifier.reloading()
        try:
            fresh = config_module.load(self.config_path) if self.config_path else config_module.Config()
        except InspectdError as exc:
            logger.error("reload refused: %s", exc)
            self.notifier.ready(self._status_line())
            return {"ok": False, "error": str(exc)}
        self.cfg.rules = fresh.rules
        logger.info("rules reloaded: %s", ", ".join(f"{r.metric} {r.op.value} {r.limit}" for r in fresh.rules))
        self.notifier.ready(self._status_line())
        return {"ok": True, "rules": [rule.model_dump(mode="json") for rule in fresh.rules]}

    def swap_model(self, model_path: str | Path) -> dict[str, Any]:
        """Inspect with the U-Net ONNX file `model_path` from the next frame on, without a restart.

        Why in this order: the new `Analyzer` is built and warmed up on the caller's thread
        (the web UI's, never a pipeline thread) while the line goes on with the old one; only
        then does the pipeline take it, in one assignment (`Pipeline.replace_analyzer`). No
        frame waits for a model load, frames in flight finish on the old model and their
        verdicts carry its hash, the next frame's verdict carries the new one. A file that
        does not load or warm up raises (EngineError, ConfigError) and changes nothing. The
        swap lasts until the daemon restarts: the config's `segment.unet.model` keeps it.

        Returns `{"previous": {...}, "engine": {...}}`, each with name, backend, model_hash.
        """
        path = Path(model_path)
        with self._swap_lock:
            if self.pipeline is None or self.analyzer is None or not self.ready:
                msg = "the daemon is not running: the model can only be swapped in a running daemon"
                raise InspectdError(msg)
            if not path.is_file():
                msg = f"model {path} does not exist"
                raise ConfigError(msg)
            unet = self.cfg.segment.unet.model_copy(update={"model": path.resolve(), "engine_plan": None})
            segment = self.cfg.segment.model_copy(update={"engine": "unet", "unet": unet})
            candidate = Analyzer(self.cfg.model_copy(update={"segment": segment}))
            candidate.warm_up()
            self.cfg.segment = segment
            candidate.cfg = self.cfg  # a rules reload (`_reload`) reaches it as it reached the old one
            previous = self.pipeline.replace_analyzer(candidate)
            self.analyzer = candidate
        before, after = previous.engine, candidate.engine
        logger.info("model swapped: %s %s -> %s %s (%s); the next frame uses it", before.name,
                    (before.model_hash or "-")[:12], after.name, (after.model_hash or "-")[:12], path)
        return {"previous": {"name": before.name, "backend": before.backend, "model_hash": before.model_hash},
                "engine": {"name": after.name, "backend": after.backend, "model_hash": after.model_hash,
                           "model": str(path.resolve())}}

    # ---- helpers ------------------------------------------------------------------------

    def _prune(self) -> None:
        """Apply journal retention; a journal that refuses (locked, disk full) is retried in a minute."""
        self._last_prune = time.monotonic()
        try:
            removed = self.journal.prune()
        except JournalError as exc:
            self._last_prune -= PRUNE_EVERY_S - PRUNE_RETRY_S
            logger.warning("journal retention skipped, retried in %.0f s: %s", PRUNE_RETRY_S, exc)
            if self.errors is not None:
                self.errors.report("journal_prune_failed", f"{exc}; retention is retried in {PRUNE_RETRY_S:.0f} s")
            return
        if removed:
            logger.info("journal retention removed %d verdict(s)", removed)

    def _on_pipeline_failed(self, text: str) -> None:
        # Called from the failing pipeline thread: only ask the main loop to stop.
        self.fatal_error = text
        self.notifier.status(f"failed: {text}")
        self.stopping.set()

    def _on_source_status(self, update: StatusUpdate) -> None:
        # The source has logged the event already; here it feeds status, metrics and error.<station>.
        if update.severity in (Severity.WARNING, Severity.ERROR):
            self.metrics.source_errors.labels(source=update.source_id).inc()
            self._last_source_event = f"{update.source_id}: {update.event} {dict(update.payload)}"
        if self.errors is not None:
            self.errors.on_source_status(update)

    def _journal_status(self) -> dict[str, Any] | None:
        journal, pipeline = self.journal, self.pipeline
        if journal is None:
            return None
        state: dict[str, Any] = {"path": str(journal.path), "epoch": journal.epoch, "new_stream": journal.new_stream,
                                 "writable": True, "error": None, "input_paused": False}
        if pipeline is not None:
            state.update(pipeline.journal_state())
        return state

    def _announce_stream(self, state_dir: Path) -> None:
        """Say so loudly when the journal starts a new epoch where verdicts were journaled before:
        subscribers and bridges follow the new stream from its first verdict, and what the old
        journal held is not replayable from this one."""
        journal = self.journal
        if journal.new_stream is None:
            return
        previous = journal.previous
        had_verdicts = (previous is not None and previous.last_seq > 0) or any(
            any((state_dir / folder).iterdir()) for folder in ("done", "quarantine"))
        if not had_verdicts:
            logger.info("new journal %s: epoch %d", journal.path, journal.epoch)
            return
        before = f" (epoch {previous.epoch}, up to seq {previous.last_seq})" if previous is not None else ""
        text = (f"journal {journal.path} starts a new stream with epoch {journal.epoch}: {journal.new_stream}; this "
                f"state dir had verdicts before{before}. Subscribers and bridges follow the new epoch from its first "
                "verdict; verdicts journaled before are not in this journal")
        logger.warning("%s", text)
        self._new_stream_warning = text  # on error.<station> at READY, once subscribers had time to reconnect

    def _status_line(self) -> str:
        pipeline = self.pipeline
        if pipeline is None:
            return "starting"
        state = pipeline.journal_state()  # one snapshot: the publish thread may clear it meanwhile
        if not state["writable"]:
            return (f"NOT healthy: the journal cannot be written for {state['failing_for_s'] or 0.0:.0f} s "
                    f"({state['error']}); input paused, {state['held']} item(s) held, retrying")
        counts = ", ".join(f"{k} {v}" for k, v in sorted(pipeline.counts.items())) or "no verdicts yet"
        return f"ready: {pipeline.progress} item(s) done ({counts}); queue {pipeline.queue_depths()['analyse']}"

    def _describe_stall(self) -> str:
        return f"pipeline stuck: queues {self.pipeline.queue_depths()}, last error {self.pipeline.last_error}"


def prepare_state_dir(state_dir: Path) -> Path:
    """Create `state_dir` with done/ and quarantine/; StartupError (one line) when it cannot be used.

    A file where the folder should be, a read-only file system, a parent that cannot be
    created: each is a condition of the machine that a person or a late mount may fix, so
    start-up exits 1 and systemd tries again, instead of a traceback.
    """
    for folder in (state_dir, state_dir / "done", state_dir / "quarantine"):
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except FileExistsError as exc:
            msg = f"state_dir {state_dir}: {folder} exists and is not a directory"
            raise StartupError(msg) from exc
        except OSError as exc:
            msg = f"state_dir {state_dir}: cannot create {folder}: {exc.strerror or exc}"
            raise StartupError(msg) from exc
    for folder in (state_dir, state_dir / "done", state_dir / "quarantine"):
        if not os.access(folder, os.W_OK | os.X_OK):  # also false on a read-only mount, for root too
            msg = f"state_dir {state_dir}: {folder} is not writable"
            raise StartupError(msg)
    return state_dir


def _jsonable(stats: dict[str, Any]) -> dict[str, Any]:
    return {k: (v if isinstance(v, (int, float, str, bool, type(None))) else str(v)) for k, v in stats.items()}
