"""How a folder source finds entries: watchdog events as hints, lost events, and rescans.

Events are only hints (the folder is rescanned anyway), so the handler does nothing on the
observer thread but pass them on. A lost-events notice comes from the event stream itself
(watchdog's `EventsLostEvent`, queued when the kernel's inotify queue overflowed, 16,384
events by default), so it is counted whatever the log level: it counts `event_overflows`,
distrusts open-for-write flags for a while and triggers a full rescan. The folder is also
rescanned on start and every `rescan_interval_s`; a later rescan that finds a file no event
announced counts it as `found_without_event`. Where inotify is unavailable (watch or
instance limits, a file system without it) the source polls instead.
"""

from __future__ import annotations

import logging
import os
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from watchdog.events import EventsLostEvent, FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserverVFS

from inspectd.sources.base import Severity
from inspectd.sources.folder_filing import CLAIM_DIR_NAME, is_claimed, origin_of, remove_empty_claim
from inspectd.sources.folder_names import ALWAYS_IGNORED, matches_any
from inspectd.sources.folder_stability import Candidate

# One logger for everything the folder source logs, whichever of its modules says it.
logger = logging.getLogger("inspectd.sources.folder")

# After an inotify overflow, events already read are still being dispatched and close
# events may be missing: open-for-write flags are ignored for this long.
_OVERFLOW_DISTRUST_S = 30.0

# (path, "created" | "modified" | "closed" | "moved_in", is_directory)
OnHint = Callable[[str, str, bool], None]


class EventHints(FileSystemEventHandler):
    """Forwards watchdog events to `on_hint` / `on_lost`; cheap, on the observer thread.

    Directory events are passed on too: a directory named like an image, in a folder not
    watched recursively, is an entry to refuse, and the source decides that.
    """

    def __init__(self, on_hint: OnHint, on_lost: Callable[[], None]) -> None:
        self._on_hint = on_hint
        self._on_lost = on_lost

    def on_created(self, event: FileSystemEvent) -> None:
        self._on_hint(os.fsdecode(event.src_path), "created", event.is_directory)

    def on_modified(self, event: FileSystemEvent) -> None:
        if not event.is_directory:
            self._on_hint(os.fsdecode(event.src_path), "modified", False)

    def on_closed(self, event: FileSystemEvent) -> None:
        if not event.is_directory:
            self._on_hint(os.fsdecode(event.src_path), "closed", False)

    def on_moved(self, event: FileSystemEvent) -> None:
        if event.dest_path:
            self._on_hint(os.fsdecode(event.dest_path), "moved_in", event.is_directory)

    def on_events_lost(self, event: EventsLostEvent) -> None:
        self._on_lost()


class EventWatching:
    """The folder source's watching: the observer (inotify, or polling as a fallback), the
    hints it gives, lost events, which names are taken, and the rescans.

    A mixin of `FolderSource`, whose constructor sets the state used here.
    """

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
                candidate = Candidate(path_str, None, now, False, found_by_rescan=False)
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

    def _accepts(self, path: Path) -> bool:
        """True for an entry name we take, in a folder we watch (never done/ or quarantine/)."""
        name = path.name
        if matches_any(name, ALWAYS_IGNORED) or not matches_any(name, self.include):
            return False
        if self.exclude and matches_any(name, self.exclude):
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
                self._pending[path_str] = Candidate(
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
