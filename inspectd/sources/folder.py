"""Folder source: turns complete image files dropped into a directory into `SourceItem`s.

Why it is more than an inotify loop:

* Only what the inbox rules allow is read (`folder_entries`): regular files, decided by
  `lstat` before anything is opened, read with a byte bound. Every other entry (a FIFO,
  socket, device, directory, a symbolic link unless `follow_symlinks`, a file over
  `max_file_bytes` or one that cannot be read) is handed on exactly once as an error item:
  the pipeline gives it an ERROR verdict with the reason, and it goes to `quarantine_dir`,
  or, where it cannot be moved, stays and is reported once. Every entry ends; none is
  retried on every rescan.
* A file is taken only when complete: in inotify mode, no write may be pending (a
  modify event not yet followed by close-after-write or a move-in), and in every mode its
  size and mtime must stay unchanged for `stable_s`, because some writers close and
  reopen to append. A read error does not restart that wait: it is retried a few times,
  then the file gets its ERROR verdict.
* Identity is content, not name: a file is claimed (`folder_filing`) before it is read,
  so the bytes analysed are the bytes filed, and a name the writer reuses (latest.png
  replaced atomically) is a new frame with its own verdict.
* Events are only hints. The kernel drops inotify events under a burst (the queue holds
  16,384 by default); watchdog then queues an `EventsLostEvent`, which counts
  `event_overflows` and triggers a full rescan. The folder is also rescanned on start and
  every `rescan_interval_s`. Candidates are checked against the in-flight set and against
  `is_done(FileKey(path, sha256))` (the daemon's journal), so each file is delivered
  exactly once, also across restarts.
* A folder never drops: the buffer blocks the watcher until the pipeline takes the item.
* After `ack`, a file goes to `done_dir` (or stays, `move_done=False`) or to
  `quarantine_dir` with `<name>.reason.txt`; a name already there gets a `-N` suffix,
  nothing is ever overwritten. A move that a crash cut short (the file both filed and
  still claimed) is finished after the restart, not filed a second time.
* Names are bytes: a name that is not UTF-8 is kept as is on disk and shown with
  `display_path` (`\\xNN` escapes) in the item's `source`, the journal and every report.

This module holds the source itself: its settings, `start`, `stop` and the worker loop.
Each of its jobs is a module of its own beside it:

* `folder_events`: finding entries (watchdog hints, lost events, rescans, names taken);
* `folder_stability`: the pending entries and when one is complete;
* `folder_delivery`: taking a complete entry (claim, bounded read, journal check, hand on);
* `folder_ack`: after the verdict, filing the entry into done/ or quarantine/;
* beneath them `folder_entries` (what an entry is, how it is read), `folder_filing`
  (claims and moves that never overwrite) and `folder_names` (which names are taken).

Example::

    >>> import tempfile, pathlib
    >>> from inspectd.sources.base import ItemOutcome
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> src = FolderSource.from_settings(path=root / "in", stable_s=0.1, create_dirs=True)
    >>> src.start()
    >>> _ = (root / "in" / "P-17_a.png").write_bytes(b"not really a png")
    >>> item = src.get(timeout_s=10.0)
    >>> item.part_id, item.payload
    ('P-17_a', b'not really a png')
    >>> src.ack(item, ItemOutcome.OK).parent.name
    'done'
    >>> src.stop()
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import Field
from watchdog.observers.api import BaseObserver

from inspectd.config import PartIdPattern, StrictModel
from inspectd.errors import SourceConnectionError
from inspectd.sources.base import (
    FileKey,
    FrameSource,
    IsDone,
    Severity,
    SourceContext,
    SourceItem,
    SourceState,
)
from inspectd.sources.folder_ack import Acknowledging
from inspectd.sources.folder_delivery import Delivery
from inspectd.sources.folder_entries import Signature, display_path
from inspectd.sources.folder_events import EventWatching
from inspectd.sources.folder_filing import unique_name
from inspectd.sources.folder_names import (
    ALWAYS_IGNORED,
    DEFAULT_INCLUDE,
    part_id_from_name,
)
from inspectd.sources.folder_stability import Candidate, StabilityChecks

__all__ = [
    "ALWAYS_IGNORED",
    "DEFAULT_INCLUDE",
    "FileKey",
    "FolderSource",
    "FolderSourceConfig",
    "IsDone",
    "part_id_from_name",
    "unique_name",
]

logger = logging.getLogger(__name__)


class FolderSourceConfig(StrictModel):
    """A watched folder (inotify, or polling for network shares); never drops, it waits."""

    kind: Literal["folder"] = "folder"
    id: str = Field("folder", pattern=r"^[A-Za-z0-9_.-]+$", description="Source id in verdicts and status.")
    path: Path = Field(description="Folder to watch.")
    move_done: bool = Field(True, description="Move processed files to <state_dir>/done (false: leave in place).")
    include: list[str] = Field(list(DEFAULT_INCLUDE), description="Glob patterns taken (case-insensitive).")
    exclude: list[str] = Field(default_factory=list, description="Glob patterns never taken (hidden, *.part, *.tmp always are).")
    recursive: bool = Field(False, description="Watch sub-folders too.")
    polling: bool = Field(False, description="Poll instead of inotify (network shares).")
    poll_interval_s: float = Field(1.0, ge=0.05, le=3600.0, description="Polling period, seconds.")
    stable_s: float = Field(0.5, ge=0.0, le=3600.0, description="Size and mtime must stay unchanged this long before a file is taken.")
    max_open_wait_s: float = Field(30.0, ge=0.0, le=86_400.0, description="A file written without a close event is taken after this long.")
    rescan_interval_s: float = Field(10.0, ge=0.1, le=86_400.0, description="Full rescan period (inotify drops events under bursts).")
    part_id_pattern: PartIdPattern | None = Field(
        None, description="Regex with a (?P<part>...) group applied to the file name; null = the file stem."
    )
    follow_symlinks: bool = Field(
        False, description="Read a symbolic link's target when it is a regular file inside the folder "
        "(false: a link gets an ERROR verdict and is quarantined, never followed)."
    )
    buffer_size: int = Field(8, ge=1, le=10_000, description="Files read ahead of the pipeline.")


class FolderSource(EventWatching, StabilityChecks, Delivery, Acknowledging, FrameSource):
    """Watches `path` and delivers each complete matching file exactly once (see module doc)."""

    KEY = "folder"
    config_class = FolderSourceConfig

    @classmethod
    def from_config(cls, cfg: FolderSourceConfig, context: SourceContext) -> FolderSource:
        """Files go to `<state_dir>/done` and `<state_dir>/quarantine`; the journal says what is done."""
        state_dir = Path(context.state_dir)
        return cls(cfg, context, done_dir=state_dir / "done", quarantine_dir=state_dir / "quarantine")

    def __init__(
        self,
        settings: FolderSourceConfig,
        context: SourceContext | None = None,
        *,
        done_dir: str | os.PathLike[str] | None = None,
        quarantine_dir: str | os.PathLike[str] | None = None,
        create_dirs: bool = False,
    ) -> None:
        """Watch `settings.path`; every setting's default and range is `FolderSourceConfig`'s.

        `context` gives the status callback, `max_file_bytes` and the journal's `is_done`.
        `done_dir` / `quarantine_dir` default to `done/` and `quarantine/` inside the watched
        folder (the daemon puts them under its state dir); `create_dirs` creates the watched
        folder at `start()`.
        """
        context = context or SourceContext()
        super().__init__(settings.id, buffer_size=settings.buffer_size, drop_oldest=False,
                         on_status=context.on_status)
        self.settings = settings
        self.watch_dir = Path(os.path.abspath(os.fspath(settings.path)))
        self.done_dir = Path(os.path.abspath(done_dir or self.watch_dir / "done"))
        self.quarantine_dir = Path(os.path.abspath(quarantine_dir or self.watch_dir / "quarantine"))
        self.move_done = settings.move_done
        self.include = tuple(settings.include)
        self.exclude = tuple(settings.exclude)
        self.recursive = settings.recursive
        self.polling = settings.polling
        self.poll_interval_s = settings.poll_interval_s
        self.stable_s = settings.stable_s
        self.max_open_wait_s = settings.max_open_wait_s
        self.rescan_interval_s = settings.rescan_interval_s
        self.follow_symlinks = settings.follow_symlinks
        self.max_file_bytes = context.max_file_bytes
        self.create_dirs = create_dirs
        # the section checked the pattern (a `part` group, no runaway backtracking)
        self._part_id_regex = None if settings.part_id_pattern is None else re.compile(settings.part_id_pattern)
        self._is_done = context.is_done

        self._lock = threading.Lock()
        # filing and giving claims back at a stop touch the same claimed entries from two threads
        self._filing_lock = threading.Lock()
        self._pending: dict[str, Candidate] = {}  # keyed by where the entry is now
        # (st_dev, st_ino) of each claimed entry not yet filed -> its claim: the inbox name
        # of a hard-link claim, or a claim left by a crash, is the same file, never a new one
        self._taken_ids: dict[tuple[int, ...], str] = {}
        self._in_flight: dict[str, SourceItem] = {}  # keyed by where the entry is held
        # entries finished with but left where they are (move_done=False, or they could not
        # be moved): not taken again while their signature is unchanged
        self._settled: dict[str, Signature] = {}
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._observer: BaseObserver | None = None
        self._observer_kind = "none"
        self._worker: threading.Thread | None = None
        self._next_rescan = 0.0
        self._distrust_open_until = 0.0
        # How often pending files are stat'ed: a few looks per stability window, <= 10 Hz.
        self._tick_s = min(0.1, max(0.02, self.stable_s / 4))

    # ---- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        """Start watching, rescan what is already there, and start delivering; ends RUNNING.

        Raises `SourceConnectionError` (state ERROR) when the folder is missing or unreadable.
        """
        self._set_state(SourceState.INITIALISING, path=display_path(str(self.watch_dir)))
        try:
            if self.create_dirs:
                self.watch_dir.mkdir(parents=True, exist_ok=True)
            if not self.watch_dir.is_dir():
                msg = f"watched folder {display_path(str(self.watch_dir))} does not exist or is not a directory"
                raise SourceConnectionError(msg)
            self._stopping.clear()
            self._reopen_buffer()
            self._start_observer()
            self._rescan(initial=True)
        except (OSError, SourceConnectionError) as exc:
            self._stop_observer(timeout_s=2.0)
            self._count("errors")
            self._set_state(SourceState.ERROR, reason=str(exc))
            if isinstance(exc, SourceConnectionError):
                raise
            msg = f"cannot watch folder {display_path(str(self.watch_dir))}: {exc.strerror or exc}"
            raise SourceConnectionError(msg) from exc
        self._set_state(SourceState.RUNNING, observer=self._observer_kind)
        self._worker = threading.Thread(
            target=self._run, name=f"source-{self.source_id}", daemon=True
        )
        self._worker.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop watching and delivering; queued items stay takeable and ack still works.

        Files taken but not yet filed go back to their names in the inbox (`_release_claims`).
        """
        if self.state in (SourceState.NOT_STARTED, SourceState.ENDED):
            self._set_state(SourceState.ENDED)
            return
        self._stopping.set()
        self._wake.set()
        self._close_buffer()
        deadline = time.monotonic() + timeout_s
        if self._worker is not None:
            self._worker.join(timeout=max(0.0, deadline - time.monotonic()))
            if self._worker.is_alive():
                logger.warning(
                    "source %s: worker did not stop within %.1f s", self.source_id, timeout_s
                )
            self._worker = None
        self._stop_observer(timeout_s=max(0.0, deadline - time.monotonic()))
        self._release_claims()
        with self._lock:
            self._pending.clear()
        self._set_state(SourceState.ENDED)

    def stats(self) -> dict[str, Any]:
        counters = super().stats()
        with self._lock:
            counters["pending"] = len(self._pending)
            counters["in_flight"] = len(self._in_flight)
            counters["left_in_place"] = len(self._settled)
        counters["observer"] = self._observer_kind
        return counters

    # ---- worker -------------------------------------------------------------------------

    def _run(self) -> None:
        """Worker loop: periodic rescan, stability checks, delivery; errors become events."""
        self._next_rescan = time.monotonic() + self.rescan_interval_s
        while not self._stopping.is_set():
            self._wake.wait(self._tick_s)
            self._wake.clear()
            if self._stopping.is_set():
                break
            try:
                self._step()
            except Exception as exc:  # keep the source alive; the loop retries next tick
                self._count("errors")
                self._emit("worker_error", Severity.ERROR, error=f"{type(exc).__name__}: {exc}")
                time.sleep(min(1.0, self.rescan_interval_s))

    def _step(self) -> None:
        now = time.monotonic()
        observer = self._observer
        # The inotify emitter thread ends when the watched folder is deleted, while the
        # observer thread lives on: check both.
        observer_dead = observer is not None and (
            not observer.is_alive() or any(not e.is_alive() for e in observer.emitters)
        )
        if observer_dead or self.state is SourceState.RECONNECTING:
            self._reconnect()
            return
        if now >= self._next_rescan:
            self._next_rescan = now + self.rescan_interval_s
            try:
                self._rescan()
            except OSError as exc:
                self._lost_folder(exc)
                return
        for path_str, signature, stable_since in self._ready_candidates():
            if self._stopping.is_set():
                return
            self._take(path_str, signature, stable_since)

    def _lost_folder(self, exc: BaseException) -> None:
        self._count("errors")
        self._count("reconnects")
        self._stop_observer(timeout_s=2.0)
        if self.state is not SourceState.RECONNECTING:
            reason = getattr(exc, "strerror", None) or str(exc)
            self._set_state(SourceState.RECONNECTING, reason=f"{type(exc).__name__}: {reason}")

    def _reconnect(self) -> None:
        """Folder vanished or the observer died: retry watching it, at most every few seconds."""
        now = time.monotonic()
        if self.state is not SourceState.RECONNECTING:
            self._lost_folder(RuntimeError("file-system observer stopped"))
            self._next_rescan = now
        if now < self._next_rescan:
            return
        self._next_rescan = now + min(self.rescan_interval_s, 5.0)
        try:
            if not self.watch_dir.is_dir():
                return
            self._start_observer()
            self._rescan(initial=True)
        except OSError as exc:
            self._stop_observer(timeout_s=2.0)
            logger.debug(
                "source %s: still cannot watch %s: %s", self.source_id, self.watch_dir, exc
            )
            return
        self._next_rescan = time.monotonic() + self.rescan_interval_s
        self._set_state(SourceState.RUNNING, observer=self._observer_kind)
