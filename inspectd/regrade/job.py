"""The Ray side of a re-grade: connect (or start a local Ray), run the worker pool, show progress.

Ray Data's offline batch-inference pattern: a dataset of input files, `map_batches` with the
callable class `RegradeWorker` and `concurrency=N`, so each of N actors builds its `Analyzer`
(engine loaded and warmed up) once in `__init__` and then analyses batch after batch. A worker
writes its batch's Parquet files itself (`inspectd.regrade.store`) and hands the driver only
a summary per file, which feeds the progress bar; nothing heavy crosses the object store.

Ray's own fault tolerance does the rest: Ray Data restarts a dead actor and retries its batch
(`max_restarts=-1`, `max_task_retries=-1` on its actor pools), and the retried batch rewrites
the same files. This module is the only one that imports ray, and only inside `run_job`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from inspectd.clients.backoff import Backoff
from inspectd.errors import InspectdError
from inspectd.regrade.inputs import InputFile
from inspectd.regrade.keys import RunKey
from inspectd.regrade.store import DoneInput, FileFacts

logger = logging.getLogger(__name__)

MAX_BATCH_FILES = 32  # files per batch (one Parquet file per batch): small enough to spread, large enough to be cheap
LOCAL = "local"
CLIENT_CONNECT_ATTEMPTS = 3  # a Ray Client server that refuses a connection is asked again (`_connect`)


class RegradeWorkerError(RuntimeError):
    """A worker cannot run the re-grade the driver planned (another model file on its node)."""


class JobFailedError(InspectdError):
    """The Ray job stopped (a worker could not start, the cluster went away); what is written stays."""


@dataclass
class JobOutcome:
    """What the workers reported: files analysed, fields per verdict, unreadable paths."""

    files: int = 0
    skipped: int = 0
    fields: Counter = field(default_factory=Counter)
    unreadable: list[str] = field(default_factory=list)
    seconds: float = 0.0
    workers: int = 0


def pending_inputs(inputs: Sequence[InputFile], done: dict[str, DoneInput]) -> tuple[list[dict[str, Any]], int]:
    """(rows for the job, number skipped): an input is skipped when its rows are there and its size
    and modification time are unchanged; a changed file goes to the workers, which skip it if its
    sha256 is still the one recorded (`done_sha256`).

    >>> done = {"/gone.png": DoneInput(None, None, None, True)}  # an ERROR row: the file was missing
    >>> rows, skipped = pending_inputs([InputFile("/gone.png"), InputFile("/b.png", "P", "L")], done)
    >>> [(r["path"], r["part"], r["done_sha256"]) for r in rows], skipped
    ([('/b.png', 'P', None)], 1)
    """
    rows, skipped = [], 0
    for item in inputs:
        previous = done.get(item.path)
        if previous is not None:
            try:
                stat = os.stat(item.path)
                unchanged = (stat.st_size, stat.st_mtime_ns) == (previous.file_size, previous.file_mtime_ns)
            except OSError:
                unchanged = previous.file_size is None  # still unreadable, as recorded
            if unchanged:
                skipped += 1
                continue
        rows.append({"path": item.path, "part": item.part, "lot": item.lot,
                     "done_sha256": None if previous is None else previous.sha256})
    return rows, skipped


def batch_size_for(n_files: int, workers: int) -> int:
    """Files per batch: about four batches per worker, at most MAX_BATCH_FILES.

    >>> batch_size_for(10, 2), batch_size_for(200, 2), batch_size_for(10**6, 64)
    (2, 25, 32)
    """
    return max(1, min(MAX_BATCH_FILES, math.ceil(n_files / max(1, workers * 4))))


class RegradeWorker:
    """One Ray actor: builds the `Analyzer` once, then analyses and writes batch after batch."""

    def __init__(self, config_json: dict[str, Any], out_dir: str, run_key: RunKey,
                 overlays_dir: str | None = None) -> None:
        from inspectd import config
        from inspectd.analysis.analyzer import Analyzer
        from inspectd.regrade.keys import run_key_of

        self.cfg = config.parse_object(config_json)
        self.analyzer = Analyzer(self.cfg)
        self.analyzer.warm_up()
        self.out_dir = Path(out_dir)
        self.run_key = run_key
        self.overlays_dir = None if overlays_dir is None else Path(overlays_dir)
        mine = run_key_of(self.analyzer)
        if mine != run_key:
            node = os.uname().nodename
            msg = (f"the worker on {node} would re-grade with {mine.describe()}, not the planned "
                   f"{run_key.describe()}: the nodes run different model files or inspectd versions "
                   "(with segment.unet.precision auto a CPU's int8 support picks the file; set fp32 or int8)")
            raise RegradeWorkerError(msg)

    def __call__(self, batch: Any) -> Any:
        import pyarrow as pa

        from inspectd.regrade import store

        engine = self.analyzer.engine
        frames: list[dict[str, Any]] = []
        regions: list[dict[str, Any]] = []
        summary: dict[str, list[Any]] = {"path": [], "fields": [], "verdicts": [], "unreadable": [], "skipped": []}
        for item in batch.to_pylist():
            facts, results = self._analyse_file(item)
            skipped = results is None
            verdicts = []
            for result in results or ():
                frames.append(store.frame_row(result, facts, engine_name=engine.name, backend=engine.backend))
                regions += store.region_rows(result, facts)
                verdicts.append(result.verdict.result.value)
                if self.overlays_dir is not None:
                    self._write_images(result, facts)
            summary["path"].append(facts.path)
            summary["fields"].append(len(verdicts))
            summary["verdicts"].append(",".join(verdicts))
            summary["unreadable"].append(facts.unreadable)
            summary["skipped"].append(skipped)
        if frames:
            name = store.batch_name(row["path"] for row in batch.to_pylist())
            store.write_batch(self.out_dir, self.run_key, name, frames, regions)
        return pa.table(summary)

    def _analyse_file(self, item: dict[str, Any]) -> tuple[FileFacts, list[Any] | None]:
        """(facts, one result per field), as `inspectd analyze` decodes and analyses a file;
        results None when the file is unchanged since its rows were written (`done_sha256`)."""
        from inspectd.analysis.analyzer import FrameResult
        from inspectd.analysis.decode import decode_file
        from inspectd.analysis.verdict import error_verdict
        from inspectd.errors import ImageDecodeError
        from inspectd.types import Frame

        path = item["path"]
        size, mtime_ns = _stat(path)
        limits = self.cfg.input
        try:
            frames = decode_file(path, max_pixels=limits.max_pixels, max_file_bytes=limits.max_file_bytes)
        except ImageDecodeError as exc:
            facts = FileFacts(path, item["part"], item["lot"], _sha256_of(path, limits.max_file_bytes),
                              size, mtime_ns, 1, True)
            if facts.sha256 is not None and facts.sha256 == item["done_sha256"]:
                return facts, None
            return facts, [FrameResult(Frame(pixels=None, source=path), error_verdict(exc.reason))]  # type: ignore[arg-type]
        facts = FileFacts(path, item["part"], item["lot"], frames[0].sha256, size, mtime_ns, len(frames), False)
        if facts.sha256 == item["done_sha256"]:
            return facts, None
        if item["part"] is not None:  # the part id travels with the frame, as in the daemon
            frames = [_with_part(frame, item["part"]) for frame in frames]
        return facts, [self.analyzer.analyze(frame) for frame in frames]

    def _write_images(self, result: Any, facts: FileFacts) -> None:
        """`<stem>_<sha12>[_field<k>]_mask.png` and `_overlay.png`, as `inspectd analyze` draws them."""
        import cv2
        import numpy as np

        from inspectd.durable_files import write_atomically
        from inspectd.reports.report import field_stem, render_overlay

        if result.mask is None or result.enhanced is None:
            return
        stem = field_stem(f"{Path(facts.path).stem}_{(facts.sha256 or '')[:12]}", result.frame.field_index,
                          facts.fields_in_file)
        metrics = result.measurements.metrics if result.measurements is not None else None
        for suffix, image in (("mask", result.mask.astype(np.uint8)),
                              ("overlay", render_overlay(result.enhanced, result.mask, metrics))):
            ok, encoded = cv2.imencode(".png", image)
            if ok:
                write_atomically(self.overlays_dir / f"{stem}_{suffix}.png", encoded.tobytes())


def _with_part(frame: Any, part: str) -> Any:
    from dataclasses import replace

    return replace(frame, part_id=part)


def _stat(path: str) -> tuple[int | None, int | None]:
    try:
        stat = os.stat(path)
    except OSError:
        return None, None
    return stat.st_size, stat.st_mtime_ns


def _sha256_of(path: str, max_file_bytes: int) -> str | None:
    """The sha256 of a file that would not decode, when it can be read at all (its key)."""
    import hashlib

    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            if not os.path.isfile(path) or os.fstat(handle.fileno()).st_size > max_file_bytes:
                return None
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    except OSError:
        return None
    return digest.hexdigest()


@contextlib.contextmanager
def ray_session(address: str | None, *, verbose: bool) -> Iterator[Any]:
    """Ray connected to `address` (`ray://HOST:PORT`, `auto`, a GCS HOST:PORT) or, for None, a local
    Ray started for this run and sized to the machine; shut down (the local one stopped) at the end."""
    if not verbose:  # Ray's C++ core logs to stderr; keep the terminal for the progress bar
        os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
    import ray

    level = logging.INFO if verbose else logging.ERROR
    logging.getLogger("ray").setLevel(level)
    _connect(ray, address or LOCAL, verbose=verbose, level=level)
    try:
        yield ray
    finally:
        ray.shutdown()


def _connect(ray: Any, address: str, *, verbose: bool, level: int) -> None:
    """`ray.init`, tried again a few times when a Ray Client server refuses the connection.

    A Ray Client server starts one server process per client; when that process is not up
    yet (or has just died) the proxy answers "Initialization failure from server" and the
    next attempt usually gets a fresh one. Other failures, and the last attempt, raise.
    """
    backoff = Backoff(1.0, 8.0)
    for attempt in range(1, CLIENT_CONNECT_ATTEMPTS + 1):
        try:
            ray.init(address=address, log_to_driver=verbose, logging_level=level)
            return
        except ConnectionError as exc:
            if not address.startswith("ray://") or attempt == CLIENT_CONNECT_ATTEMPTS:
                raise
            delay = backoff.next()
            logger.warning("Ray Client at %s refused the connection (%s); trying again in %.0f s",
                           address, " ".join(str(exc).split())[:200], delay)
            ray.shutdown()
            time.sleep(delay)


@dataclass(frozen=True)
class JobSettings:
    """What every worker needs: the config, where to write, the re-grade's key."""

    config_json: dict[str, Any]
    out_dir: str
    run_key: RunKey
    workers: int | None = None
    overlays_dir: str | None = None
    verbose: bool = False


def run_job(rows: list[dict[str, Any]], *, config_json: dict[str, Any], out_dir: Path, run_key: RunKey,
            address: str | None, workers: int | None, overlays_dir: Path | None = None,
            verbose: bool = False, show_progress: bool | None = None) -> JobOutcome:
    """Analyse `rows` (from `pending_inputs`) on Ray with `workers` actors (None: one per CPU).

    Through Ray Client (`ray://`) the dataset cannot be driven from here (Ray Data needs a
    process of the cluster), so a small `ClusterDriver` actor drives it there and this
    process only shows its progress.
    """
    if not rows:
        return JobOutcome()
    settings = JobSettings(config_json, str(out_dir), run_key, workers,
                           None if overlays_dir is None else str(overlays_dir), verbose)
    with ray_session(address, verbose=verbose) as ray, _progress_bar(len(rows), show_progress) as bar:
        try:
            if _through_ray_client():
                return _drive_remotely(ray, rows, settings, bar)
            return drive(rows, settings, lambda outcome, n: _show(bar, outcome, n))
        except ray.exceptions.RayError as exc:
            raise JobFailedError(_cause(exc)) from exc


def drive(rows: list[dict[str, Any]], settings: JobSettings,
          on_batch: Callable[[JobOutcome, int], None]) -> JobOutcome:
    """Run the dataset of `rows` through the worker pool, calling `on_batch(outcome, files)` per batch."""
    import pyarrow as pa
    import ray
    from ray.data import DataContext

    if not settings.verbose:
        _quiet_console("ray.data")
    context = DataContext.get_current()
    context.enable_progress_bars = False  # ours counts files, with the verdicts
    context.print_on_execution_start = False
    outcome = JobOutcome()
    pool = settings.workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
    outcome.workers = pool
    size = batch_size_for(len(rows), pool)
    blocks = [pa.Table.from_pylist(rows[i:i + size], schema=_input_schema()) for i in range(0, len(rows), size)]
    # A pool of exactly `pool` actors (Ray 2.51+ spells `concurrency=N` as this ActorPoolStrategy).
    dataset = ray.data.from_arrow(blocks).map_batches(
        RegradeWorker,
        fn_constructor_kwargs={"config_json": settings.config_json, "out_dir": settings.out_dir,
                               "run_key": settings.run_key, "overlays_dir": settings.overlays_dir},
        batch_size=size, batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=pool), num_cpus=1,
    )
    start = time.perf_counter()
    for summary in dataset.iter_batches(batch_size=None, batch_format="pyarrow"):
        _count(summary.to_pylist(), outcome)
        outcome.seconds = time.perf_counter() - start
        on_batch(outcome, summary.num_rows)
    return outcome


class ClusterDriver:
    """Drives the dataset from inside the cluster for a Ray Client session; `progress` is polled."""

    def __init__(self) -> None:
        self.outcome = JobOutcome()
        self.files = 0

    def run(self, rows: list[dict[str, Any]], settings: JobSettings) -> JobOutcome:
        return drive(rows, settings, self._on_batch)

    def _on_batch(self, outcome: JobOutcome, files: int) -> None:
        self.outcome, self.files = outcome, self.files + files

    def progress(self) -> tuple[int, JobOutcome]:
        return self.files, self.outcome


def _drive_remotely(ray: Any, rows: list[dict[str, Any]], settings: JobSettings, bar: tqdm) -> JobOutcome:
    driver = ray.remote(num_cpus=0, max_concurrency=2)(ClusterDriver).remote()  # run + progress at once
    finished = driver.run.remote(rows, settings)
    shown = 0
    while not ray.wait([finished], timeout=0.5)[0]:
        files, outcome = ray.get(driver.progress.remote())
        _show(bar, outcome, files - shown)
        shown = files
    outcome = ray.get(finished)
    _show(bar, outcome, len(rows) - shown)
    return outcome


def _through_ray_client() -> bool:
    from ray.util.client import ray as client

    return client.is_connected()


@contextlib.contextmanager
def _progress_bar(total: int, show: bool | None) -> Iterator[tqdm]:
    """Files done, files/s and ETA, and the verdicts so far; shown on a terminal (`show` None), always, or never."""
    with tqdm(total=total, desc="regrade", unit="file", file=sys.stderr, dynamic_ncols=True,
              disable=show is False or None, smoothing=0.1) as bar:
        yield bar


def _show(bar: tqdm, outcome: JobOutcome, files: int) -> None:
    bar.set_postfix_str(" ".join(f"{k} {outcome.fields.get(k, 0)}" for k in ("PASS", "FAIL", "ERROR")), refresh=False)
    bar.update(files)


def _quiet_console(logger_name: str) -> None:
    """Only errors of `logger_name` on the terminal; its log file (in Ray's session folder) keeps everything."""
    for handler in logging.getLogger(logger_name).handlers:
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
            handler.setLevel(logging.ERROR)


def _cause(exc: BaseException) -> str:
    """The message that says what went wrong, from a Ray error's chain (whose texts repeat stack frames).

    >>> inner = ValueError("Traceback ...\\n  File x\\ninspectd.regrade.job.RegradeWorkerError: another model")
    >>> outer = RuntimeError("task failed"); outer.__cause__ = inner
    >>> _cause(outer)
    'another model'
    """
    message, inner = type(exc).__name__, exc
    while inner is not None:
        lines = [line.strip() for line in str(inner).splitlines() if line.strip()]
        if lines:
            message = re.sub(r"^[\w.]+(Error|Exception): ", "", lines[-1])
        inner = inner.__cause__
    return message


def _count(summaries: list[dict[str, Any]], outcome: JobOutcome) -> None:
    for item in summaries:
        if item["skipped"]:
            outcome.skipped += 1
            continue
        outcome.files += 1
        outcome.fields.update(v for v in item["verdicts"].split(",") if v)
        if item["unreadable"]:
            outcome.unreadable.append(item["path"])


def _input_schema() -> Any:
    import pyarrow as pa

    return pa.schema([("path", pa.string()), ("part", pa.string()), ("lot", pa.string()),
                      ("done_sha256", pa.string())])
