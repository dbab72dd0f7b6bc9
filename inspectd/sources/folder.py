"""Folder source: turns complete image files dropped into a directory into `SourceItem`s.

Why it is more than an inotify loop:

* A file is taken only when complete: in inotify mode, no write may be pending (a
  modify event not yet followed by close-after-write or a move-in), and in every mode its
  size and mtime must stay unchanged for `stable_s`, because some writers close and
  reopen to append.
* Events are only hints. The kernel drops inotify events under a burst (the queue holds
  16,384 by default and watchdog's handler is not told), so the folder is also rescanned
  on start and every `rescan_interval_s`. Candidates are checked against the in-flight set
  and against `is_done(FileKey(path, sha256))` (the daemon's journal), so each file is
  delivered exactly once, also across restarts.
* A folder never drops: the buffer blocks the watcher until the pipeline takes the item.
* After `ack`, a file goes to `done_dir` (or stays, `move_done=False`) or to
  `quarantine_dir` with `<name>.reason.txt`; a name already there gets a `-N` suffix,
  nothing is ever overwritten. A move that a crash cut short (the file both filed and
  still in the inbox) is finished after the restart, not filed a second time.

Example::

    >>> import tempfile, pathlib
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> src = FolderSource(path=root / "in", stable_s=0.1, create_dirs=True)
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

import errno
import filecmp
import fnmatch
import hashlib
import logging
import os
import re
import shutil
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NamedTuple

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from inspectd.errors import ConfigError, SourceConnectionError
from inspectd.sources.base import (
    FrameSource,
    ItemOutcome,
    Severity,
    SourceItem,
    SourceState,
    SourceStateError,
    StatusCallback,
    check_transition,
)

logger = logging.getLogger(__name__)

DEFAULT_INCLUDE: tuple[str, ...] = ("*.png", "*.tif", "*.tiff", "*.jpg", "*.jpeg", "*.bmp")
# Names a writer uses while a file is incomplete, or editors' leftovers: never taken.
ALWAYS_IGNORED: tuple[str, ...] = (
    ".*",
    "*.part",
    "*.partial",
    "*.tmp",
    "*.temp",
    "*~",
    "*.swp",
    "*.crdownload",
    "*.reason.txt",
)
_READ_ATTEMPTS = 3  # an unreadable file is retried this often before it is handed on as an error
# After an inotify overflow, events already read are still being dispatched and close
# events may be missing: open-for-write flags are ignored for this long.
_OVERFLOW_DISTRUST_S = 30.0

# (size_bytes, mtime_ns): what "unchanged" means for a file.
Signature = tuple[int, int]


class FileKey(NamedTuple):
    """The journal's identity of a file: original path plus content hash."""

    path: str
    sha256: str


# The daemon's journal lookup. Falsy: never processed. An ItemOutcome (or any other truthy
# value, taken as OK): processed before; the source only finishes the interrupted move.
IsDone = Callable[[FileKey], Any]


@dataclass
class _Candidate:
    signature: Signature | None
    stable_since: float  # monotonic time the signature (or a modify hint) last changed
    write_open: bool  # inotify saw a write not yet followed by close-after-write / move-in
    found_by_rescan: bool
    read_failures: int = 0
    warned_open: bool = False


def _signature(st: os.stat_result) -> Signature:
    return (st.st_size, st.st_mtime_ns)


def part_id_from_name(name: str, pattern: re.Pattern[str] | None) -> str | None:
    """Part / sample id from a file name: the `part` group of `pattern`, or the stem.

    >>> part_id_from_name("P-17_field3.png", re.compile(r"^(?P<part>[A-Z]-\\d+)_"))
    'P-17'
    >>> part_id_from_name("scan.png", re.compile(r"^(?P<part>[A-Z]-\\d+)_")) is None
    True
    >>> part_id_from_name("scan.png", None)
    'scan'
    """
    if pattern is None:
        stem = Path(name).stem
        return stem or None
    match = pattern.search(name)
    if match is None:
        return None
    return match.group("part") or None


def compile_part_id_pattern(pattern: str | None) -> re.Pattern[str] | None:
    """Compile `part_id_pattern`; ConfigError if invalid or without a `(?P<part>...)` group."""
    if pattern is None:
        return None
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        msg = f"source.part_id_pattern {pattern!r} is not a valid regular expression: {exc}"
        raise ConfigError(msg) from exc
    if "part" not in compiled.groupindex:
        msg = f"source.part_id_pattern {pattern!r} needs a named group (?P<part>...)"
        raise ConfigError(msg)
    return compiled


def _matches_any(name: str, patterns: Iterable[str]) -> bool:
    lowered = name.lower()
    return any(fnmatch.fnmatchcase(lowered, pattern.lower()) for pattern in patterns)


class _OverflowListener(logging.Filter):
    """Hears watchdog's "Inotify queue overflowed" log line: the only sign it gives.

    On an overflow, close events may be lost too, so every folder source forgets which
    files it believed open for writing (they then need only `stable_s`) and rescans at once.
    """

    LOGGER_NAME = "watchdog.observers.inotify_c"

    def __init__(self) -> None:
        super().__init__()
        self.sources: weakref.WeakSet[FolderSource] = weakref.WeakSet()

    def filter(self, record: logging.LogRecord) -> bool:
        if "overflow" in str(record.msg).lower():
            for source in list(self.sources):
                source._on_events_lost()
        return True

    def attach(self, source: FolderSource) -> None:
        watchdog_logger = logging.getLogger(self.LOGGER_NAME)
        if self not in watchdog_logger.filters:
            watchdog_logger.addFilter(self)
        self.sources.add(source)


_OVERFLOW_LISTENER = _OverflowListener()


class _EventHints(FileSystemEventHandler):
    """Forwards watchdog events to the source as hints; never does work on the observer thread."""

    def __init__(self, source: FolderSource) -> None:
        self._source = source

    def on_created(self, event: FileSystemEvent) -> None:
        if not event.is_directory:
            self._source._hint(os.fsdecode(event.src_path), "created")

    def on_modified(self, event: FileSystemEvent) -> None:
        if not event.is_directory:
            self._source._hint(os.fsdecode(event.src_path), "modified")

    def on_closed(self, event: FileSystemEvent) -> None:
        if not event.is_directory:
            self._source._hint(os.fsdecode(event.src_path), "closed")

    def on_moved(self, event: FileSystemEvent) -> None:
        if not event.is_directory and event.dest_path:
            self._source._hint(os.fsdecode(event.dest_path), "moved_in")


class FolderSource(FrameSource):
    """Watches `path` and delivers each complete matching file exactly once (see module doc)."""

    KEY = "folder"

    def __init__(
        self,
        source_id: str = "folder",
        *,
        path: str | os.PathLike[str],
        done_dir: str | os.PathLike[str] | None = None,
        quarantine_dir: str | os.PathLike[str] | None = None,
        move_done: bool = True,
        include: Iterable[str] = DEFAULT_INCLUDE,
        exclude: Iterable[str] = (),
        recursive: bool = False,
        polling: bool = False,
        poll_interval_s: float = 1.0,
        stable_s: float = 0.5,
        max_open_wait_s: float = 30.0,
        rescan_interval_s: float = 10.0,
        part_id_pattern: str | None = None,
        max_file_bytes: int = 1 << 31,
        is_done: IsDone | None = None,
        buffer_size: int = 8,
        create_dirs: bool = False,
        on_status: StatusCallback | None = None,
    ) -> None:
        super().__init__(source_id, buffer_size=buffer_size, drop_oldest=False, on_status=on_status)
        self.watch_dir = Path(os.path.abspath(os.fspath(path)))
        self.done_dir = Path(os.path.abspath(done_dir or self.watch_dir / "done"))
        self.quarantine_dir = Path(os.path.abspath(quarantine_dir or self.watch_dir / "quarantine"))
        self.move_done = move_done
        self.include = tuple(include)
        self.exclude = tuple(exclude)
        self.recursive = recursive
        self.polling = polling
        self.poll_interval_s = poll_interval_s
        self.stable_s = stable_s
        self.max_open_wait_s = max_open_wait_s
        self.rescan_interval_s = rescan_interval_s
        self.max_file_bytes = max_file_bytes
        self.create_dirs = create_dirs
        self._part_id_regex = compile_part_id_pattern(part_id_pattern)
        self._is_done = is_done
        for name, value in (
            ("poll_interval_s", poll_interval_s),
            ("rescan_interval_s", rescan_interval_s),
        ):
            if value <= 0:
                msg = f"source.{name} must be > 0, got {value}"
                raise ConfigError(msg)
        if stable_s < 0 or max_open_wait_s < 0:
            msg = (
                f"source.stable_s / max_open_wait_s must be >= 0, got {stable_s}, {max_open_wait_s}"
            )
            raise ConfigError(msg)

        self._lock = threading.Lock()
        self._pending: dict[str, _Candidate] = {}
        self._in_flight: dict[str, SourceItem] = {}
        self._settled: dict[str, Signature] = {}  # done but left in place (move_done=False)
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._paused = False
        self._observer: BaseObserver | None = None
        self._observer_kind = "none"
        self._worker: threading.Thread | None = None
        self._next_rescan = 0.0
        self._distrust_open_until = 0.0
        # How often pending files are stat'ed: a few looks per stability window, <= 10 Hz.
        self._tick_s = min(0.1, max(0.02, stable_s / 4))

    # ---- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        """Start watching, rescan what is already there, and start delivering; ends RUNNING.

        Raises `SourceConnectionError` (state ERROR) when the folder is missing or unreadable.
        """
        self._set_state(SourceState.INITIALISING, path=str(self.watch_dir))
        try:
            if self.create_dirs:
                self.watch_dir.mkdir(parents=True, exist_ok=True)
            if not self.watch_dir.is_dir():
                msg = f"watched folder {self.watch_dir} does not exist or is not a directory"
                raise SourceConnectionError(msg)
            self._stopping.clear()
            self._paused = False
            self._reopen_buffer()
            _OVERFLOW_LISTENER.attach(self)
            self._start_observer()
            self._rescan(initial=True)
        except (OSError, SourceConnectionError) as exc:
            self._stop_observer(timeout_s=2.0)
            self._count("errors")
            self._set_state(SourceState.ERROR, reason=str(exc))
            if isinstance(exc, SourceConnectionError):
                raise
            msg = f"cannot watch folder {self.watch_dir}: {exc}"
            raise SourceConnectionError(msg) from exc
        self._set_state(SourceState.RUNNING, observer=self._observer_kind)
        self._worker = threading.Thread(
            target=self._run, name=f"source-{self.source_id}", daemon=True
        )
        self._worker.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop watching and delivering; queued items stay takeable and ack still works."""
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
        _OVERFLOW_LISTENER.sources.discard(self)
        with self._lock:
            self._pending.clear()
        self._set_state(SourceState.ENDED)

    def pause(self) -> None:
        """Stop watching and delivering (events are lost; `resume` rescans)."""
        check_transition(self.state, SourceState.PAUSED)
        with self._lock:
            self._paused = True
        self._stop_observer(timeout_s=2.0)
        self._set_state(SourceState.PAUSED)

    def resume(self) -> None:
        """Watch again and rescan at once, so files that arrived while paused are found."""
        if self.state is not SourceState.PAUSED:
            msg = f"source {self.source_id}: resume() needs PAUSED, state is {self.state.value}"
            raise SourceStateError(msg)
        self._start_observer()
        with self._lock:
            self._paused = False
            self._next_rescan = 0.0
        self._wake.set()
        self._set_state(SourceState.RUNNING, observer=self._observer_kind)

    def stats(self) -> dict[str, Any]:
        counters = super().stats()
        with self._lock:
            counters["pending"] = len(self._pending)
            counters["in_flight"] = len(self._in_flight)
        counters["observer"] = self._observer_kind
        return counters

    # ---- ack ----------------------------------------------------------------------------

    def ack(self, item: SourceItem, outcome: ItemOutcome, reason: str | None = None) -> Path | None:
        """File the item away once journaled: done_dir (or left in place) or quarantine_dir.

        Returns the file's new path, or None when it stayed (or vanished). Never raises for
        file-system trouble: that becomes a `move_failed` status update.
        """
        if item.path is None:
            msg = f"{item.source}: not a folder item (no path)"
            raise ValueError(msg)
        key = str(item.path)
        signature = item.metadata.get("signature")
        with self._lock:
            self._in_flight.pop(key, None)
            if outcome is ItemOutcome.OK and not self.move_done and signature is not None:
                self._settled[key] = tuple(signature)  # type: ignore[assignment]
        if outcome is ItemOutcome.OK:
            if not self.move_done:
                return None
            self._count("done")
            return self._move_away(item.path, self.done_dir, None)
        self._count("quarantined")
        text = reason or item.error or "quarantined (no reason given)"
        destination = self._move_away(item.path, self.quarantine_dir, text)
        if destination is not None:
            self._emit(
                "file_quarantined", Severity.WARNING, path=key, to=str(destination), reason=text
            )
        return destination

    # ---- observer -----------------------------------------------------------------------

    def _start_observer(self) -> None:
        handler = _EventHints(self)
        if not self.polling:
            observer: BaseObserver = Observer()
            try:
                observer.schedule(handler, str(self.watch_dir), recursive=self.recursive)
                observer.start()
            except OSError as exc:  # inotify watch/instance limits, or an fs without inotify
                self._emit(
                    "observer_fallback",
                    Severity.WARNING,
                    reason=f"inotify unavailable ({exc}); polling every {self.poll_interval_s} s",
                )
                self._safe_stop(observer)
            else:
                self._observer, self._observer_kind = observer, "inotify"
                return
        observer = PollingObserver(timeout=self.poll_interval_s)
        observer.schedule(handler, str(self.watch_dir), recursive=self.recursive)
        observer.start()
        self._observer, self._observer_kind = observer, "polling"

    def _stop_observer(self, timeout_s: float) -> None:
        observer, self._observer = self._observer, None
        if observer is not None:
            self._safe_stop(observer, timeout_s)

    @staticmethod
    def _safe_stop(observer: BaseObserver, timeout_s: float = 2.0) -> None:
        try:
            observer.stop()
            if observer.is_alive():
                observer.join(timeout=timeout_s)
        except Exception:
            logger.exception("watchdog observer did not stop cleanly")

    def _hint(self, path_str: str, event: str) -> None:
        """Record a watchdog event for `path_str` (observer thread: keep it cheap)."""
        if not self._accepts(Path(path_str)):
            return
        now = time.monotonic()
        inotify = self._observer_kind == "inotify"
        # A file created empty is most likely still open in its writer (open(O_CREAT) comes
        # before the first write); a moved-in file has its bytes already.
        created_empty = False
        if inotify and event == "created":
            try:
                created_empty = os.stat(path_str).st_size == 0
            except OSError:
                return
        with self._lock:
            if path_str in self._in_flight:
                return
            candidate = self._pending.get(path_str)
            if candidate is None:
                candidate = _Candidate(None, now, False, found_by_rescan=False)
                self._pending[path_str] = candidate
            candidate.found_by_rescan = False  # an event did announce it
            if event in ("created", "modified", "moved_in"):
                candidate.stable_since = now
            if inotify:
                if event in ("closed", "moved_in"):
                    candidate.write_open = False
                elif (event == "modified" or created_empty) and now >= self._distrust_open_until:
                    candidate.write_open = True
        self._wake.set()

    def _on_events_lost(self) -> None:
        """The kernel dropped events: trust no open-for-write flag, rescan now."""
        with self._lock:
            for candidate in self._pending.values():
                candidate.write_open = False
            self._distrust_open_until = time.monotonic() + _OVERFLOW_DISTRUST_S
            self._next_rescan = 0.0
        self._count("event_overflows")
        self._emit("events_lost", Severity.WARNING, reason="inotify queue overflowed; rescanning")
        self._wake.set()

    # ---- filtering and scanning ---------------------------------------------------------

    def _accepts(self, path: Path) -> bool:
        """True for a file name we take, in a folder we watch (never done/ or quarantine/)."""
        name = path.name
        if _matches_any(name, ALWAYS_IGNORED) or not _matches_any(name, self.include):
            return False
        if self.exclude and _matches_any(name, self.exclude):
            return False
        parent = path.parent
        if parent == self.watch_dir:
            return True
        if not self.recursive or self.watch_dir not in parent.parents:
            return False
        for folder in (parent, *parent.parents):
            if folder == self.watch_dir:
                break
            if folder in (self.done_dir, self.quarantine_dir) or folder.name.startswith("."):
                return False
        return True

    def _walk(self, folder: Path) -> Iterator[tuple[str, os.stat_result]]:
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    sub = Path(entry.path)
                    if (
                        self.recursive
                        and not entry.name.startswith(".")
                        and sub not in (self.done_dir, self.quarantine_dir)
                    ):
                        yield from self._walk(sub)
                    continue
                if not entry.is_file():
                    continue
                if not self._accepts(Path(entry.path)):
                    continue
                try:
                    yield entry.path, entry.stat()
                except FileNotFoundError:
                    continue

    def _rescan(self, initial: bool = False) -> None:
        """Add every matching file not pending, in flight or settled; raises OSError if the
        folder itself is unreachable (unmounted share, deleted directory).

        Files a later (not the initial) rescan finds and no event announces before delivery
        are counted as `found_without_event`: the measure of events the kernel dropped.
        """
        now = time.monotonic()
        found = 0
        seen: set[str] = set()
        for path_str, st in self._walk(self.watch_dir):
            seen.add(path_str)
            signature = _signature(st)
            with self._lock:
                if path_str in self._pending or path_str in self._in_flight:
                    continue
                if self._settled.get(path_str) == signature:
                    continue
                self._pending[path_str] = _Candidate(
                    signature, now, False, found_by_rescan=not initial
                )
            found += 1
        with self._lock:
            # forget settled files that are gone, so the set does not grow forever
            self._settled = {p: s for p, s in self._settled.items() if p in seen}
        self._count("rescans")
        if found:
            self._count("rescan_found", found)
            logger.debug("source %s: rescan found %d new files", self.source_id, found)

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
        if self._paused:
            return
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
            if self._stopping.is_set() or self._paused:
                return
            self._take(path_str, signature, stable_since)

    def _lost_folder(self, exc: BaseException) -> None:
        self._count("errors")
        self._count("reconnects")
        self._stop_observer(timeout_s=2.0)
        if self.state is not SourceState.RECONNECTING:
            self._set_state(SourceState.RECONNECTING, reason=f"{type(exc).__name__}: {exc}")

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

    def _ready_candidates(self) -> list[tuple[str, Signature, float]]:
        """Stat every pending file; return those unchanged for `stable_s`, oldest first, as
        (path, signature, stable_since) so `_take` can tell whether a hint came meanwhile."""
        now = time.monotonic()
        with self._lock:
            snapshot = list(self._pending.items())
            trust_open_flags = now >= self._distrust_open_until
        ready: list[tuple[str, Signature, float]] = []
        for path_str, candidate in snapshot:
            try:
                signature = _signature(os.stat(path_str))
            except FileNotFoundError:
                with self._lock:
                    if self._pending.get(path_str) is candidate:
                        del self._pending[path_str]
                continue
            except OSError:
                continue  # transient (stale NFS handle ...): look again next tick
            with self._lock:
                if self._pending.get(path_str) is not candidate:
                    continue
                if candidate.signature != signature:
                    candidate.signature = signature
                    candidate.stable_since = now
                    continue
                if self._settled.get(path_str) == signature:
                    del self._pending[path_str]  # a hint for a file done and left in place
                    continue
                waited_s = now - candidate.stable_since
                if waited_s < self.stable_s:
                    continue
                write_pending = candidate.write_open and trust_open_flags
                if write_pending and waited_s < self.max_open_wait_s:
                    continue
                warn = write_pending and not candidate.warned_open
                candidate.warned_open = candidate.warned_open or write_pending
                stable_since = candidate.stable_since
            if warn:
                self._emit(
                    "no_close_event", Severity.WARNING, path=path_str, waited_s=round(waited_s, 1)
                )
            ready.append((path_str, signature, stable_since))
        ready.sort(key=lambda entry: (entry[1][1], entry[0]))
        return ready

    def _take(self, path_str: str, signature: Signature, stable_since: float) -> None:
        """Read a stable file once, hash it, consult the journal, and deliver it."""
        path = Path(path_str)
        error: str | None = None
        payload: bytes | None = None
        try:
            with open(path_str, "rb") as handle:
                st = os.fstat(handle.fileno())
                if _signature(st) != signature:
                    self._back_to_pending(path_str, _signature(st))
                    return
                if st.st_size > self.max_file_bytes:
                    error = (
                        f"file is {st.st_size} bytes, more than max_file_bytes "
                        f"({self.max_file_bytes})"
                    )
                else:
                    payload = handle.read()
                    after = os.fstat(handle.fileno())
                    if _signature(after) != signature or len(payload) != signature[0]:
                        self._back_to_pending(path_str, _signature(after))
                        return
        except FileNotFoundError:
            with self._lock:
                self._pending.pop(path_str, None)
            return
        except OSError as exc:
            with self._lock:
                candidate = self._pending.get(path_str)
                failures = 0 if candidate is None else candidate.read_failures + 1
                if candidate is not None:
                    candidate.read_failures = failures
                    candidate.stable_since = time.monotonic()
            self._count("read_retries")
            if failures < _READ_ATTEMPTS:
                return
            error = f"cannot read file: {exc.strerror or exc}"

        # Unreadable files have no content hash: their journal key is (path, "").
        sha256 = hashlib.sha256(payload).hexdigest() if payload is not None else ""
        if not self._not_yet_done(path, FileKey(path_str, sha256), signature):
            return

        if error is not None:
            self._count("errors")
            self._emit("file_unreadable", Severity.ERROR, path=path_str, reason=error)
        item = SourceItem(
            source_id=self.source_id,
            kind="file",
            source=path_str,
            capture_time=datetime.fromtimestamp(signature[1] / 1e9, tz=timezone.utc),
            sha256=sha256,
            part_id=part_id_from_name(path.name, self._part_id_regex),
            payload=payload,
            path=path,
            error=error,
            metadata={
                "size_bytes": signature[0],
                "signature": signature,
                "relative_path": path.relative_to(self.watch_dir).as_posix(),
            },
        )
        with self._lock:
            candidate = self._pending.get(path_str)
            if candidate is None:
                return  # vanished meanwhile
            if candidate.stable_since != stable_since or candidate.signature != signature:
                return  # a write hint arrived while we read: wait for it to settle
            del self._pending[path_str]
            self._in_flight[path_str] = item
            found_without_event = candidate.found_by_rescan
        if found_without_event:
            self._count("found_without_event")
        while not self._stopping.is_set():
            if self._publish(item, timeout_s=0.25):
                return
        # stopping before the pipeline took it: the file stays; the next start finds it
        with self._lock:
            self._in_flight.pop(path_str, None)

    def _back_to_pending(self, path_str: str, signature: Signature) -> None:
        with self._lock:
            candidate = self._pending.get(path_str)
            if candidate is not None:
                candidate.signature = signature
                candidate.stable_since = time.monotonic()

    def _not_yet_done(self, path: Path, key: FileKey, signature: Signature) -> bool:
        """Ask the journal; if the file was processed before, finish its move and say False."""
        if self._is_done is None:
            return True
        try:
            outcome = self._is_done(key)
        except Exception as exc:  # journal trouble: do not risk a duplicate, retry later
            self._count("errors")
            self._emit("journal_lookup_failed", Severity.ERROR, path=key.path, error=str(exc))
            self._back_to_pending(key.path, signature)
            return False
        if not outcome:
            return True
        with self._lock:
            self._pending.pop(key.path, None)
        self._count("already_done")
        if outcome == ItemOutcome.QUARANTINED:
            self._move_away(
                path,
                self.quarantine_dir,
                "journaled as quarantined before a restart; see the journal for the reason",
            )
        elif self.move_done:
            self._move_away(path, self.done_dir, None)
        else:
            with self._lock:
                self._settled[key.path] = signature
        return False

    # ---- moving files away --------------------------------------------------------------

    def _move_away(self, path: Path, folder: Path, reason: str | None) -> Path | None:
        """Move `path` under `folder` (keeping its sub-folder), never overwriting anything."""
        try:
            relative = path.relative_to(self.watch_dir)
        except ValueError:
            relative = Path(path.name)
        target_dir = folder / relative.parent
        try:
            target_dir.mkdir(parents=True, exist_ok=True)
            destination = _move_unique(path, target_dir, reason)
        except FileNotFoundError as exc:
            if not path.exists():
                self._emit("file_vanished", Severity.WARNING, path=str(path))
                return None
            self._count("errors")
            self._emit(
                "move_failed", Severity.ERROR, path=str(path), to=str(folder), error=str(exc)
            )
            return None
        except OSError as exc:
            self._count("errors")
            self._emit(
                "move_failed", Severity.ERROR, path=str(path), to=str(folder), error=str(exc)
            )
            return None
        logger.debug("source %s: %s -> %s", self.source_id, path, destination)
        return destination


def unique_name(name: str, index: int) -> str:
    """`name` with a `-index` suffix before the extension (index 0: unchanged).

    >>> unique_name("P-17.png", 0), unique_name("P-17.png", 2), unique_name("P-17", 1)
    ('P-17.png', 'P-17-2.png', 'P-17-1')
    """
    if index == 0:
        return name
    stem, dot, extension = name.rpartition(".")
    if not dot or not stem:
        return f"{name}-{index}"
    return f"{stem}-{index}.{extension}"


def _move_unique(source: Path, folder: Path, reason: str | None = None) -> Path:
    """Move `source` into `folder` under its name or the first free `-N` variant, with
    `<name>.reason.txt` beside it when a reason is given.

    A hard link claims the name atomically (fails if taken), the reason is written, then
    the original is unlinked; across file systems, or where hard links are refused, a
    finished copy claims the name the same way. A move cut short (power loss or kill -9
    before the unlink) is finished on the next try, keeping its reason, not repeated under
    a `-N` name.
    """
    by_copy = os.stat(source).st_dev != os.stat(folder).st_dev
    try:
        return _move_by_link(source, folder, reason, by_copy)
    except OSError as exc:
        if by_copy or exc.errno not in _NO_HARD_LINK:
            raise
        return _move_by_link(source, folder, reason, by_copy=True)


_NO_HARD_LINK = (errno.EXDEV, errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP)
_REASON_SUFFIX = ".reason.txt"


def _move_by_link(source: Path, folder: Path, reason: str | None, by_copy: bool) -> Path:
    origin = _copy_beside(source, folder) if by_copy else source
    try:
        for index in range(100_000):
            destination = folder / unique_name(source.name, index)
            if _is_earlier_move_of(source, destination, by_copy):
                break
            if reason is not None and _reason_path(destination).exists():
                continue  # an orphan reason keeps its name free
            try:
                os.link(origin, destination, follow_symlinks=False)
            except FileExistsError:
                continue
            break
        else:
            msg = f"no free name for {source.name} in {folder}"
            raise FileExistsError(errno.EEXIST, msg)
    finally:
        if by_copy:
            origin.unlink(missing_ok=True)
    if reason is not None:
        try:
            with open(_reason_path(destination), "x", encoding="utf-8") as handle:
                handle.write(reason.rstrip("\n") + "\n")
        except FileExistsError:
            pass  # written before the move was cut short: the original reason stays
    os.unlink(source)
    return destination


def _reason_path(destination: Path) -> Path:
    return destination.with_name(destination.name + _REASON_SUFFIX)


def _copy_beside(source: Path, folder: Path) -> Path:
    """A hidden full copy of `source` in `folder` (times kept), ready to be linked into place."""
    copy = folder / f".{source.name}.inspectd-copy"
    with open(source, "rb") as reader, open(copy, "wb") as writer:
        shutil.copyfileobj(reader, writer, length=1 << 20)
        writer.flush()
        os.fsync(writer.fileno())
    shutil.copystat(source, copy)
    return copy


def _is_earlier_move_of(source: Path, destination: Path, by_copy: bool) -> bool:
    """True when `destination` is what an interrupted move of `source` left behind.

    A hard-linked move leaves the very same file; a copied one leaves a file with the
    source's size, modification time and bytes. A later file of the same name is neither.
    """
    try:
        if not by_copy:
            return os.path.samefile(source, destination)
        here, there = source.stat(), destination.stat()
        if (here.st_size, here.st_mtime_ns) != (there.st_size, there.st_mtime_ns):
            return False
        return filecmp.cmp(source, destination, shallow=False)
    except OSError:
        return False
