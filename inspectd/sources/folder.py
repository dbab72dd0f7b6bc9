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

import fnmatch
import hashlib
import logging
import os
import re
import stat
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserverVFS

from inspectd.errors import ConfigError, SourceConnectionError
from inspectd.sources.base import (
    FileKey,
    FrameSource,
    IsDone,
    ItemOutcome,
    Severity,
    SourceItem,
    SourceState,
    SourceStateError,
    StatusCallback,
    check_transition,
)
from inspectd.sources.folder_entries import (
    Entry,
    EntryChangedError,
    EntryRefusedError,
    Signature,
    classify_entry,
    display_path,
    entry_signature,
    read_entry,
)
from inspectd.sources.folder_events import EventHints
from inspectd.sources.folder_filing import (
    CLAIM_DIR_NAME,
    claim,
    drop_claim,
    file_entry,
    is_claimed,
    origin_of,
    put_back,
    release_claim,
    remove_empty_claim,
    unique_name,
)

__all__ = [
    "ALWAYS_IGNORED",
    "DEFAULT_INCLUDE",
    "FileKey",
    "FolderSource",
    "IsDone",
    "compile_part_id_pattern",
    "part_id_from_name",
    "unique_name",
]

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
_READ_ATTEMPTS = 3  # an unreadable file is tried this often before it is handed on as an error
_READ_RETRY_S = 0.25  # at least this long between two tries
# After an inotify overflow, events already read are still being dispatched and close
# events may be missing: open-for-write flags are ignored for this long.
_OVERFLOW_DISTRUST_S = 30.0
_REPLAYED_QUARANTINE = "journaled as quarantined before a restart; see the journal for the reason"


@dataclass
class _Candidate:
    origin: str  # the entry's path in the inbox: its name in items, journal and reports
    signature: Signature | None
    stable_since: float  # monotonic time the signature (or a modify hint) last changed
    write_open: bool  # inotify saw a write not yet followed by close-after-write / move-in
    found_by_rescan: bool
    claimed: bool = False  # the candidate's key is a claim of `origin`
    read_failures: int = 0
    retry_at: float = 0.0
    warned_open: bool = False


@dataclass(frozen=True)
class _Taken:
    """What is filed after a verdict: the entry where it is held now, and who it is."""

    origin: str
    held: str
    claimed: bool
    signature: Signature
    content: bytes | None = None  # a followed link: these bytes are filed instead of the link


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
        follow_symlinks: bool = False,
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
        self.follow_symlinks = follow_symlinks
        self.max_file_bytes = max_file_bytes
        self.create_dirs = create_dirs
        self._part_id_regex = compile_part_id_pattern(part_id_pattern)
        self._is_done = is_done
        for name, value in (
            ("poll_interval_s", poll_interval_s),
            ("rescan_interval_s", rescan_interval_s),
            ("max_file_bytes", max_file_bytes),
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
        # filing and giving claims back at a stop touch the same claimed entries from two threads
        self._filing_lock = threading.Lock()
        self._pending: dict[str, _Candidate] = {}  # keyed by where the entry is now
        # (st_dev, st_ino) of each claimed entry not yet filed -> its claim: the inbox name
        # of a hard-link claim, or a claim left by a crash, is the same file, never a new one
        self._taken_ids: dict[tuple[int, ...], str] = {}
        self._in_flight: dict[str, SourceItem] = {}  # keyed by where the entry is held
        # entries finished with but left where they are (move_done=False, or they could not
        # be moved): not taken again while their signature is unchanged
        self._settled: dict[str, Signature] = {}
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
        self._set_state(SourceState.INITIALISING, path=display_path(str(self.watch_dir)))
        try:
            if self.create_dirs:
                self.watch_dir.mkdir(parents=True, exist_ok=True)
            if not self.watch_dir.is_dir():
                msg = f"watched folder {display_path(str(self.watch_dir))} does not exist or is not a directory"
                raise SourceConnectionError(msg)
            self._stopping.clear()
            self._paused = False
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

    def _release_claims(self) -> None:
        """At a stop, every claimed entry not yet filed goes back to its inbox name, so an
        unfinished file is where it was dropped; the next start takes it again and the
        journal says whether it still needs a verdict. One whose name the writer has used
        again meanwhile stays claimed and the next start finishes it from there, as after a
        crash. An ack that comes later files the entry from its name."""
        with self._lock:
            held = [path for path, candidate in self._pending.items() if candidate.claimed]
            held += [path for path, item in self._in_flight.items() if item.metadata.get("claimed")]
            self._taken_ids.clear()
        for path in held:
            with self._filing_lock:
                if os.path.lexists(path):
                    self._give_back(path)

    def _give_back(self, held: str) -> str:
        """A claimed entry back under its inbox name: the claim is dropped when the name
        still holds the entry (a hard-link claim), the entry put back when the name is free;
        returns where the entry is now."""
        origin = origin_of(held)
        if self._same_entry(origin, held):
            drop_claim(held)
            return origin
        return put_back(held) or held

    @staticmethod
    def _same_entry(first: str, second: str) -> bool:
        try:
            a, b = os.lstat(first), os.lstat(second)
        except OSError:
            return False
        return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)

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
            counters["left_in_place"] = len(self._settled)
        counters["observer"] = self._observer_kind
        return counters

    # ---- ack ----------------------------------------------------------------------------

    def ack(self, item: SourceItem, outcome: ItemOutcome, reason: str | None = None) -> Path | None:
        """File the item away once journaled: done_dir (or left in place) or quarantine_dir.

        What is filed is the entry the item was read from (its claim), never whatever holds
        its name now. Returns the entry's new path, or None when it stayed (or vanished).
        Never raises for file-system trouble: that becomes one `move_failed` status update,
        and the entry is left alone from then on.
        """
        if item.path is None:
            msg = f"{item.source}: not a folder item (no path)"
            raise ValueError(msg)
        metadata = item.metadata
        held = str(metadata.get("held_at") or item.path)
        taken = _Taken(
            origin=str(item.path),
            held=held,
            claimed=bool(metadata.get("claimed")),
            signature=tuple(metadata.get("signature") or ()),
            content=item.payload if metadata.get("followed") else None,
        )
        with self._lock:
            self._in_flight.pop(held, None)
        if outcome is ItemOutcome.OK:
            if self.move_done:
                self._count("done")
            return self._finish(taken, outcome, None)
        self._count("quarantined")
        text = reason or item.error or "quarantined (no reason given)"
        destination = self._finish(taken, outcome, text)
        if destination is not None:
            self._emit(
                "file_quarantined",
                Severity.WARNING,
                path=item.source,
                to=display_path(str(destination)),
                reason=text,
            )
        return destination

    def _finish(self, taken: _Taken, outcome: ItemOutcome, reason: str | None) -> Path | None:
        """File an entry that has its verdict (now, or journaled before a restart): the
        claimed inode goes to done/ or quarantine/, and the inbox name goes too while it
        still holds that inode (`move_done=False` and OK: the claim is dropped, the file
        stays)."""
        try:
            if outcome is ItemOutcome.OK and not self.move_done:
                if taken.claimed:
                    drop_claim(taken.held)
                self._settle(taken.origin, taken.signature)
                return None
            if outcome is ItemOutcome.OK:
                destination = self._file(taken, self.done_dir, None)
            else:
                destination = self._file(taken, self.quarantine_dir, reason)
            if destination is not None and taken.claimed:
                self._remove_original(taken)
            return destination
        finally:
            with self._lock:
                if taken.signature and self._taken_ids.get(taken.signature[:2]) == taken.held:
                    del self._taken_ids[taken.signature[:2]]

    def _file(self, taken: _Taken, folder: Path, reason: str | None) -> Path | None:
        """Move the held entry under `folder` (keeping its sub-folder), never overwriting."""
        with self._filing_lock:
            if taken.claimed and not os.path.lexists(taken.held):
                # given back to its name at a stop: file it from there if it is still the same
                taken = _Taken(taken.origin, taken.origin, False, taken.signature, taken.content)
            return self._file_locked(taken, folder, reason)

    def _file_locked(self, taken: _Taken, folder: Path, reason: str | None) -> Path | None:
        shown = display_path(taken.origin)
        if not taken.claimed and taken.signature:
            try:
                now = self._signature(taken.held, taken.origin)
            except FileNotFoundError:
                self._emit("file_vanished", Severity.WARNING, path=shown)
                return None
            except OSError:
                now = taken.signature
            if now[:2] != taken.signature[:2]:
                # Another entry took the name meanwhile: a new frame, found by the next look.
                self._emit("file_replaced", Severity.WARNING, path=shown)
                return None
        try:
            relative = Path(taken.origin).relative_to(self.watch_dir)
        except ValueError:
            relative = Path(os.path.basename(taken.origin))
        target_dir = folder / relative.parent
        try:
            target_dir.mkdir(parents=True, exist_ok=True)
            destination = file_entry(Path(taken.held), target_dir, reason, content=taken.content)
        except OSError as exc:
            if isinstance(exc, FileNotFoundError) and not os.path.lexists(taken.held):
                self._emit("file_vanished", Severity.WARNING, path=shown)
                return None
            self._could_not_file(taken, folder, exc)
            return None
        if taken.claimed:
            release_claim(taken.held)
        logger.debug("source %s: %s -> %s", self.source_id, shown, display_path(str(destination)))
        return destination

    def _could_not_file(self, taken: _Taken, folder: Path, exc: OSError) -> None:
        """Report once and leave the entry alone: back under its name when it was claimed
        (so it is visible where it was dropped), remembered so no rescan takes it again."""
        where = self._give_back(taken.held) if taken.claimed else taken.held
        if taken.signature:
            self._settle(where, taken.signature)
        self._count("errors")
        self._emit(
            "move_failed",
            Severity.ERROR,
            path=display_path(taken.origin),
            to=display_path(str(folder)),
            error=exc.strerror or type(exc).__name__,
            left_at=display_path(where),
        )

    def _remove_original(self, taken: _Taken) -> None:
        """The claim was a hard link, so the inbox name may still hold the filed inode:
        remove the name only then. It is checked, moved aside by rename (atomic: whatever
        holds the name is what moves) and checked again, so a frame the writer renamed over
        the name in between is never lost: it gets its name back, or, if the name is taken
        yet again, stays claimed as a candidate of its own."""
        try:
            st = os.lstat(taken.origin)
        except OSError:
            return
        if (st.st_dev, st.st_ino) != taken.signature[:2]:
            return  # the writer's next frame: it has (or gets) a candidate of its own
        try:
            moved, _ = claim(taken.origin, move=True)
        except OSError:
            return
        if self._same_entry_as(moved, taken.signature):
            drop_claim(moved)
            return
        if put_back(moved) is None:
            with self._lock:
                self._pending[moved] = _Candidate(
                    taken.origin, None, time.monotonic(), False, False, claimed=True
                )

    @staticmethod
    def _same_entry_as(path: str, signature: Signature) -> bool:
        try:
            st = os.lstat(path)
        except OSError:
            return False
        return (st.st_dev, st.st_ino) == signature[:2]

    def _settle(self, path: str, signature: Signature) -> None:
        with self._lock:
            self._settled[path] = signature

    # ---- observer -----------------------------------------------------------------------

    def _start_observer(self) -> None:
        handler = EventHints(self._hint, self._on_events_lost)
        if not self.polling:
            observer: BaseObserver = Observer()
            try:
                observer.schedule(handler, str(self.watch_dir), recursive=self.recursive)
                observer.start()
            except OSError as exc:  # inotify watch/instance limits, or an fs without inotify
                self._emit(
                    "observer_fallback",
                    Severity.WARNING,
                    reason=f"inotify unavailable ({exc.strerror or exc}); polling every "
                    f"{self.poll_interval_s} s",
                )
                self._safe_stop(observer)
            else:
                self._observer, self._observer_kind = observer, "inotify"
                return
        # lstat below the root: the poller must not walk into a linked directory (a link to
        # / in a recursive inbox would have it stat the whole file system every poll).
        root = str(self.watch_dir)
        observer = PollingObserverVFS(
            stat=lambda path: os.stat(path) if path == root else os.lstat(path),
            listdir=os.scandir,
            polling_interval=self.poll_interval_s,
        )
        observer.schedule(handler, root, recursive=self.recursive)
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

    def _hint(self, path_str: str, event: str, is_directory: bool = False) -> None:
        """Record a watchdog event for `path_str` (observer thread: keep it cheap)."""
        if is_directory and self.recursive:
            return  # a sub-folder to watch, not an entry
        if not self._accepts(Path(path_str)):
            return
        now = time.monotonic()
        inotify = self._observer_kind == "inotify"
        # A regular file created empty is most likely still open in its writer (open(O_CREAT)
        # comes before the first write); a moved-in file has its bytes already.
        created_empty = False
        if inotify and event == "created":
            try:
                st = os.lstat(path_str)
            except OSError:
                return
            created_empty = stat.S_ISREG(st.st_mode) and st.st_size == 0
        with self._lock:
            if path_str in self._in_flight:
                return
            candidate = self._pending.get(path_str)
            if candidate is None:
                candidate = _Candidate(path_str, None, now, False, found_by_rescan=False)
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
        """True for an entry name we take, in a folder we watch (never done/ or quarantine/)."""
        name = path.name
        if _matches_any(name, ALWAYS_IGNORED) or not _matches_any(name, self.include):
            return False
        if self.exclude and _matches_any(name, self.exclude):
            return False
        if path in (self.done_dir, self.quarantine_dir):
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

    def _walk(self, folder: Path) -> Iterator[str]:
        """Every entry to consider: accepted names (of any type) and claimed entries."""
        with os.scandir(folder) as entries:
            for entry in entries:
                try:
                    is_dir = entry.is_dir(follow_symlinks=False)
                except OSError:
                    is_dir = False
                sub = Path(entry.path)
                if is_dir and entry.name == CLAIM_DIR_NAME:
                    yield from self._walk_claims(entry.path)
                elif is_dir and self.recursive:
                    if entry.name.startswith(".") or sub in (self.done_dir, self.quarantine_dir):
                        continue
                    try:
                        yield from self._walk(sub)
                    except OSError as exc:  # a sub-folder removed or locked meanwhile
                        logger.debug("source %s: cannot list %s: %s", self.source_id, sub, exc)
                elif self._accepts(sub):
                    yield entry.path

    @staticmethod
    def _walk_claims(root: str) -> Iterator[str]:
        """Claimed entries: taken before a stop or crash, not yet filed."""
        try:
            with os.scandir(root) as tokens:
                token_dirs = [t.path for t in tokens if t.is_dir(follow_symlinks=False)]
        except OSError:
            return
        for token_dir in token_dirs:
            try:
                with os.scandir(token_dir) as claimed:
                    paths = [entry.path for entry in claimed]
            except OSError:
                continue
            if not paths:
                remove_empty_claim(token_dir)
            yield from paths

    def _rescan(self, initial: bool = False) -> None:
        """Add every entry not pending, in flight or settled; raises OSError if the folder
        itself is unreachable (unmounted share, deleted directory).

        Files a later (not the initial) rescan finds and no event announces before delivery
        are counted as `found_without_event`: the measure of events the kernel dropped.
        """
        now = time.monotonic()
        found = 0
        seen: set[str] = set()
        for path_str in self._walk(self.watch_dir):
            seen.add(path_str)
            with self._lock:
                if path_str in self._pending or path_str in self._in_flight:
                    continue
            claimed = is_claimed(path_str)
            origin = origin_of(path_str) if claimed else path_str
            try:
                signature = self._signature(path_str, origin)
            except OSError:
                continue
            with self._lock:
                if path_str in self._pending or path_str in self._in_flight:
                    continue
                if self._settled.get(path_str) == signature:
                    continue
                if self._taken_ids.get(signature[:2], path_str) != path_str:
                    continue  # the inbox name of a file claimed and in flight
                self._pending[path_str] = _Candidate(
                    origin,
                    signature,
                    now,
                    False,
                    found_by_rescan=not initial and not claimed,
                    claimed=claimed,
                )
            found += 1
        with self._lock:
            # forget settled entries that are gone, so the map does not grow forever
            self._settled = {p: s for p, s in self._settled.items() if p in seen}
        self._count("rescans")
        if found:
            self._count("rescan_found", found)
            logger.debug("source %s: rescan found %d new entries", self.source_id, found)

    def _really_inside(self, path_str: str) -> bool:
        """True when the entry's folder is the inbox or a real sub-folder of it, not a
        directory reached through a symbolic link (whose files are not the inbox's)."""
        parent = os.path.dirname(path_str)
        if parent == str(self.watch_dir):
            return True
        relative = os.path.relpath(parent, self.watch_dir)
        return os.path.realpath(parent) == os.path.join(os.path.realpath(self.watch_dir), relative)

    def _signature(self, path_str: str, origin: str) -> Signature:
        return entry_signature(
            path_str, origin_dir=os.path.dirname(origin), follow_symlinks=self.follow_symlinks
        )

    def _classify(self, path_str: str, origin: str) -> Entry:
        return classify_entry(
            path_str,
            inbox=str(self.watch_dir),
            origin_dir=os.path.dirname(origin),
            follow_symlinks=self.follow_symlinks,
            forbidden=(str(self.done_dir), str(self.quarantine_dir)),
            private_names=(CLAIM_DIR_NAME,),
        )

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

    def _ready_candidates(self) -> list[tuple[str, Signature, float]]:
        """Look at every pending entry (`lstat`, never open); return those unchanged for
        `stable_s`, oldest first, as (path, signature, stable_since) so `_take` can tell
        whether a hint came meanwhile."""
        now = time.monotonic()
        with self._lock:
            snapshot = list(self._pending.items())
            trust_open_flags = now >= self._distrust_open_until
        ready: list[tuple[str, Signature, float]] = []
        for path_str, candidate in snapshot:
            if now < candidate.retry_at:
                continue
            try:
                signature = self._signature(path_str, candidate.origin)
            except FileNotFoundError:
                self._forget(path_str, candidate)
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
                    del self._pending[path_str]  # a hint for an entry settled where it is
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
                    "no_close_event",
                    Severity.WARNING,
                    path=display_path(candidate.origin),
                    waited_s=round(waited_s, 1),
                )
            ready.append((path_str, signature, stable_since))
        ready.sort(key=lambda entry: (entry[1][3], entry[0]))
        return ready

    def _take(self, path_str: str, signature: Signature, stable_since: float) -> None:
        """Decide by `lstat`, claim, read once with a bound, consult the journal, deliver.

        Every way out either delivers one item, leaves the entry pending for a later look
        (still being written, or a read to try again), or forgets an entry that is gone.
        """
        with self._lock:
            candidate = self._pending.get(path_str)
        if candidate is None:
            return
        if not candidate.claimed and not self._really_inside(path_str):
            self._forget(path_str, candidate)  # reached through a linked directory
            return
        try:
            entry = self._classify(path_str, candidate.origin)
        except FileNotFoundError:
            self._forget(path_str, candidate)
            return
        except OSError as exc:
            self._read_failed(path_str, candidate, None, exc, (signature, stable_since))
            return
        if entry.signature[:4] != signature[:4]:  # the entry itself changed since the last look
            self._back_to_pending(path_str, candidate)
            return
        with self._lock:
            holder = self._taken_ids.get(entry.signature[:2])
            if holder is None and candidate.claimed:  # a claim found by a rescan
                holder = self._taken_ids[entry.signature[:2]] = path_str
        if holder is not None and holder != path_str:
            # The same file is claimed already: this is its inbox name, or a second claim
            # (a crash came between two claims of it). Nothing new to take.
            if candidate.claimed:
                drop_claim(path_str)
            self._forget(path_str, candidate)
            return
        taking = (signature, stable_since)
        if entry.refusal is not None:
            self._hand_on(path_str, candidate, entry, None, entry.refusal, taking)
            return
        if not candidate.claimed:
            claimed = self._claim(path_str, candidate, entry)
            if claimed is None:
                return  # gone, or what was claimed needs its own look
            path_str, entry = claimed
        try:
            payload = read_entry(entry, str(self.watch_dir), max_bytes=self.max_file_bytes)
        except EntryRefusedError as exc:
            self._hand_on(path_str, candidate, entry, None, str(exc), taking)
        except EntryChangedError:
            self._back_to_pending(path_str, candidate)
        except FileNotFoundError:
            if entry.target is None:
                self._forget(path_str, candidate)
            else:
                self._back_to_pending(path_str, candidate)  # the link's target went away
        except OSError as exc:
            self._read_failed(path_str, candidate, entry, exc, taking)
        else:
            self._hand_on(path_str, candidate, entry, payload, None, taking)

    def _claim(
        self, path_str: str, candidate: _Candidate, entry: Entry
    ) -> tuple[str, Entry] | None:
        """Claim a stable entry before it is read; (claimed path, entry there), or the
        entry itself when the folder cannot hold a claim (it is then read in place and
        filed only while its name still holds it), or None when there is nothing to read."""
        try:
            claimed, _ = claim(path_str)
        except FileNotFoundError:
            self._forget(path_str, candidate)
            return None
        except OSError as exc:
            logger.debug(
                "source %s: cannot claim %s (%s); reading it in place",
                self.source_id,
                display_path(path_str),
                exc.strerror,
            )
            return path_str, entry
        with self._lock:
            if self._pending.get(path_str) is candidate:
                del self._pending[path_str]
            candidate.claimed = True
            self._pending[claimed] = candidate
        try:
            held = self._classify(claimed, candidate.origin)
        except OSError:
            return None  # looked at again next tick
        with self._lock:
            self._taken_ids[held.signature[:2]] = claimed
        if held.signature[:2] != entry.signature[:2] or held.refusal is not None:
            # The writer replaced the file between the last look and the claim: what was
            # claimed is a new entry and must prove itself stable like any other.
            self._back_to_pending(claimed, candidate)
            return None
        return claimed, held

    def _read_failed(
        self,
        path_str: str,
        candidate: _Candidate,
        entry: Entry | None,
        exc: OSError,
        taking: tuple[Signature, float],
    ) -> None:
        """Try again a little later, without restarting the stability wait; after a few
        tries the entry is handed on with the error, so it ends with one ERROR verdict."""
        self._count("read_retries")
        with self._lock:
            candidate.read_failures += 1
            failures = candidate.read_failures
            candidate.retry_at = time.monotonic() + max(_READ_RETRY_S, self.stable_s)
        if failures < _READ_ATTEMPTS:
            return
        if entry is None:
            try:
                entry = Entry(path_str, os.lstat(path_str))
            except OSError:
                return
        reason = f"cannot read file: {exc.strerror or type(exc).__name__}"
        self._hand_on(path_str, candidate, entry, None, reason, taking)

    def _hand_on(
        self,
        path_str: str,
        candidate: _Candidate,
        entry: Entry,
        payload: bytes | None,
        error: str | None,
        taking: tuple[Signature, float],
    ) -> None:
        """Deliver one item for the entry held at `path_str`: its bytes, or its error.

        `taking` is (signature, stable_since) as the stability check saw them, so a write
        hint that came meanwhile is noticed.
        """
        signature, stable_since = taking
        origin = candidate.origin
        shown = display_path(origin)
        sha256 = hashlib.sha256(payload).hexdigest() if payload is not None else ""
        entry_id = "" if payload is not None else entry.entry_id
        followed = entry.target is not None and payload is not None
        taken = _Taken(origin, path_str, candidate.claimed, signature, payload if followed else None)
        if not self._not_yet_done(taken, FileKey(shown, sha256 or entry_id)):
            return
        if error is not None:
            self._count("errors")
            self._count("refused")
            self._emit("file_unreadable", Severity.ERROR, path=shown, reason=error)
        try:
            relative = display_path(Path(origin).relative_to(self.watch_dir).as_posix())
        except ValueError:
            relative = display_path(os.path.basename(origin))
        content_st = entry.target_st if followed and entry.target_st is not None else entry.st
        metadata: dict[str, Any] = {
            "size_bytes": len(payload) if payload is not None else entry.st.st_size,
            "signature": signature,
            "relative_path": relative,
            "held_at": path_str,
            "claimed": candidate.claimed,
            "followed": followed,
        }
        if entry_id:
            metadata["entry_id"] = entry_id
        item = SourceItem(
            source_id=self.source_id,
            kind="file",
            source=shown,
            capture_time=datetime.fromtimestamp(content_st.st_mtime_ns / 1e9, tz=timezone.utc),
            sha256=sha256,
            part_id=part_id_from_name(display_path(os.path.basename(origin)), self._part_id_regex),
            payload=payload,
            path=Path(origin),
            error=error,
            metadata=metadata,
        )
        with self._lock:
            if self._pending.get(path_str) is not candidate:
                return  # vanished meanwhile
            if not candidate.claimed and (
                candidate.stable_since != stable_since or candidate.signature != signature
            ):
                return  # a write hint arrived while we read: wait for it to settle
            del self._pending[path_str]
            self._in_flight[path_str] = item
            found_without_event = candidate.found_by_rescan
        if found_without_event:
            self._count("found_without_event")
        while not self._stopping.is_set():
            if self._publish(item, timeout_s=0.25):
                return
        # stopping before the pipeline took it: the entry goes back to its name for the
        # next start
        with self._lock:
            self._in_flight.pop(path_str, None)
            self._untake_locked(path_str)
        if candidate.claimed:
            with self._filing_lock:
                self._give_back(path_str)

    def _back_to_pending(self, path_str: str, candidate: _Candidate) -> None:
        """Look again: the entry changed, so its stability wait starts over."""
        with self._lock:
            candidate.signature = None
            candidate.stable_since = time.monotonic()

    def _forget(self, path_str: str, candidate: _Candidate) -> None:
        with self._lock:
            if self._pending.get(path_str) is candidate:
                del self._pending[path_str]
            self._untake_locked(path_str)

    def _untake_locked(self, path_str: str) -> None:
        for key in [key for key, held in self._taken_ids.items() if held == path_str]:
            del self._taken_ids[key]

    def _not_yet_done(self, taken: _Taken, key: FileKey) -> bool:
        """Ask the journal; if the entry was processed before, finish its filing and say False."""
        if self._is_done is None:
            return True
        try:
            outcome = self._is_done(key)
        except Exception as exc:  # journal trouble: do not risk a duplicate, retry later
            self._count("errors")
            self._emit("journal_lookup_failed", Severity.ERROR, path=key.path, error=str(exc))
            with self._lock:
                candidate = self._pending.get(taken.held)
                if candidate is not None:
                    candidate.retry_at = time.monotonic() + max(1.0, self.stable_s)
            return False
        if not outcome:
            return True
        with self._lock:
            self._pending.pop(taken.held, None)
        self._count("already_done")
        if outcome == ItemOutcome.QUARANTINED:
            self._finish(taken, ItemOutcome.QUARANTINED, _REPLAYED_QUARANTINE)
        else:
            self._finish(taken, ItemOutcome.OK, None)
        return False
