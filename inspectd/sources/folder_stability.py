"""When an inbox entry is complete: the pending entries and their stability wait.

An entry found by an event hint or a rescan is a `Candidate` until it is taken. It is
looked at with `lstat` only (never opened) every tick; it is ready once its signature
(device, inode, size, mtime; and a followed link's target's) stayed unchanged for
`stable_s` and, in inotify mode, no write is pending (a modify event not yet followed by
close-after-write or a move-in), or that write has been pending for `max_open_wait_s`
(some writers never close: the `no_close_event` warning). Any change starts the wait over.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from inspectd.sources.base import Severity
from inspectd.sources.folder_entries import Signature, display_path, entry_signature


@dataclass
class Candidate:
    origin: str  # the entry's path in the inbox: its name in items, journal and reports
    signature: Signature | None
    stable_since: float  # monotonic time the signature (or a modify hint) last changed
    write_open: bool  # inotify saw a write not yet followed by close-after-write / move-in
    found_by_rescan: bool
    claimed: bool = False  # the candidate's key is a claim of `origin`
    read_failures: int = 0
    retry_at: float = 0.0
    warned_open: bool = False


class StabilityChecks:
    """The folder source's pending entries (`_pending`, keyed by where each entry is now):
    which of them are ready to take, and how one goes back to waiting or is forgotten.

    A mixin of `FolderSource`, whose constructor sets the state used here.
    """

    def _signature(self, path_str: str, origin: str) -> Signature:
        return entry_signature(
            path_str, origin_dir=os.path.dirname(origin), follow_symlinks=self.follow_symlinks
        )

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

    def _back_to_pending(self, path_str: str, candidate: Candidate) -> None:
        """Look again: the entry changed, so its stability wait starts over."""
        with self._lock:
            candidate.signature = None
            candidate.stable_since = time.monotonic()

    def _forget(self, path_str: str, candidate: Candidate) -> None:
        with self._lock:
            if self._pending.get(path_str) is candidate:
                del self._pending[path_str]
            self._untake_locked(path_str)

    def _untake_locked(self, path_str: str) -> None:
        for key in [key for key, held in self._taken_ids.items() if held == path_str]:
            del self._taken_ids[key]
