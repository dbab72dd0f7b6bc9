"""Taking a stable inbox entry and handing it on as exactly one `SourceItem`.

Only what the inbox rules allow is read (`folder_entries`): the decision is made from
`lstat`, and every other entry (a FIFO, socket, device, directory, a symbolic link unless
`follow_symlinks`, a file over `max_file_bytes`) is handed on once as an error item, so it
ends with one ERROR verdict. A regular file is claimed (`folder_filing`) before it is
read, so the bytes analysed are the bytes filed, and read once with a byte bound. A read
error does not restart the stability wait: it is retried a few times, then the entry gets
its ERROR verdict. Before an item is handed on the journal is asked (`is_done` with
`FileKey(path, sha256)`): an entry that already has a verdict (a crash came between the
journal and the filing) is filed, not inspected again. The buffer blocks until the
pipeline takes the item: a folder never drops.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from inspectd.sources.base import FileKey, ItemOutcome, Severity, SourceItem
from inspectd.sources.folder_ack import Taken
from inspectd.sources.folder_entries import (
    Entry,
    EntryChangedError,
    EntryRefusedError,
    Signature,
    classify_entry,
    display_path,
    read_entry,
)
from inspectd.sources.folder_filing import CLAIM_DIR_NAME, claim, drop_claim
from inspectd.sources.folder_names import part_id_from_name
from inspectd.sources.folder_stability import Candidate

# One logger for everything the folder source logs, whichever of its modules says it.
logger = logging.getLogger("inspectd.sources.folder")

_READ_ATTEMPTS = 3  # an unreadable file is tried this often before it is handed on as an error
_READ_RETRY_S = 0.25  # at least this long between two tries
_REPLAYED_QUARANTINE = "journaled as quarantined before a restart; see the journal for the reason"


class Delivery:
    """The folder source's taking of a ready entry: check, claim, read, ask the journal,
    hand on.

    A mixin of `FolderSource`, whose constructor sets the state used here.
    """

    def _really_inside(self, path_str: str) -> bool:
        """True when the entry's folder is the inbox or a real sub-folder of it, not a
        directory reached through a symbolic link (whose files are not the inbox's)."""
        parent = os.path.dirname(path_str)
        if parent == str(self.watch_dir):
            return True
        relative = os.path.relpath(parent, self.watch_dir)
        return os.path.realpath(parent) == os.path.join(os.path.realpath(self.watch_dir), relative)

    def _classify(self, path_str: str, origin: str) -> Entry:
        return classify_entry(
            path_str,
            inbox=str(self.watch_dir),
            origin_dir=os.path.dirname(origin),
            follow_symlinks=self.follow_symlinks,
            forbidden=(str(self.done_dir), str(self.quarantine_dir)),
            private_names=(CLAIM_DIR_NAME,),
        )

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
        self, path_str: str, candidate: Candidate, entry: Entry
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
        candidate: Candidate,
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
        candidate: Candidate,
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
        taken = Taken(origin, path_str, candidate.claimed, signature, payload if followed else None)
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

    def _not_yet_done(self, taken: Taken, key: FileKey) -> bool:
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
