"""After the verdict: where the entry an item was read from goes, crash-safely.

`ack` files the claimed entry (never whatever holds its inbox name by then) into `done_dir`
(or leaves it in place, `move_done=False`) or into `quarantine_dir` with
`<name>.reason.txt`, through `folder_filing`: a name already there gets a `-N` suffix,
nothing is ever overwritten, and a move that a crash cut short is finished, not repeated.
The inbox name goes too only while it still holds the filed inode, so a frame the writer
put under the same name meanwhile is never lost. At a stop, entries claimed but not yet
filed go back to their inbox names. File-system trouble never raises: it becomes one
`move_failed` status update and the entry is left alone from then on.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from inspectd.sources.base import ItemOutcome, Severity, SourceItem
from inspectd.sources.folder_entries import Signature, display_path
from inspectd.sources.folder_filing import (
    claim,
    drop_claim,
    file_entry,
    origin_of,
    put_back,
    release_claim,
)
from inspectd.sources.folder_stability import Candidate

# One logger for everything the folder source logs, whichever of its modules says it.
logger = logging.getLogger("inspectd.sources.folder")


@dataclass(frozen=True)
class Taken:
    """What is filed after a verdict: the entry where it is held now, and who it is."""

    origin: str
    held: str
    claimed: bool
    signature: Signature
    content: bytes | None = None  # a followed link: these bytes are filed instead of the link


class Acknowledging:
    """The folder source's `ack` and the filing behind it, and giving claims back at a stop.

    A mixin of `FolderSource`, whose constructor sets the state used here.
    """

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
        taken = Taken(
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

    def _finish(self, taken: Taken, outcome: ItemOutcome, reason: str | None) -> Path | None:
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

    def _file(self, taken: Taken, folder: Path, reason: str | None) -> Path | None:
        """Move the held entry under `folder` (keeping its sub-folder), never overwriting."""
        with self._filing_lock:
            if taken.claimed and not os.path.lexists(taken.held):
                # given back to its name at a stop: file it from there if it is still the same
                taken = Taken(taken.origin, taken.origin, False, taken.signature, taken.content)
            return self._file_locked(taken, folder, reason)

    def _file_locked(self, taken: Taken, folder: Path, reason: str | None) -> Path | None:
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

    def _could_not_file(self, taken: Taken, folder: Path, exc: OSError) -> None:
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

    def _remove_original(self, taken: Taken) -> None:
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
                self._pending[moved] = Candidate(
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
