"""The bridge's delivery cursor: the last verdict a PLC acknowledged, kept in a small file.

Why a file of its own and not the daemon's journal: the journal says what was *published*,
the cursor says what the *PLC took*. A restarted bridge asks the daemon to replay from
`last_seq + 1`, so nothing acknowledged is written again and nothing unacknowledged is
skipped. The file is replaced atomically (write a temporary file, fsync it, rename it over
the old one, fsync the folder), so a power cut leaves either the old or the new cursor,
never a torn one.

Duplicates are recognised on (station, epoch, seq): the daemon's `seq` never repeats within
an epoch (the journal's stream, kept across daemon restarts), so "same station, same epoch
and seq <= last_seq" is exactly "already delivered"; a verdict of another epoch belongs to a
new stream (a new or replaced journal) and was not. A cursor written before epochs named the
journal's stream (format 1: they counted daemon starts) is read without its epoch, and then
seq alone decides, as it did.

Example:
    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "bridge.cursor.json")
    >>> cursor = Cursor(path)
    >>> cursor.last_seq, cursor.next_from_seq()
    (None, None)
    >>> cursor.save(station="s1", epoch=2, seq=41)
    >>> reopened = Cursor(path)
    >>> reopened.next_from_seq(), reopened.is_delivered("s1", 2, 41), reopened.is_delivered("s1", 2, 42)
    (42, True, False)
    >>> reopened.is_delivered("s1", 9, 5)  # another epoch: a new journal's seq 5
    False
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from inspectd.durable_files import write_atomically
from inspectd.errors import InspectdError
from inspectd.wire.message import utc_iso

logger = logging.getLogger(__name__)

CURSOR_FORMAT = 2  # 2: `epoch` names the daemon journal's stream (1: it counted daemon starts)


class CursorError(InspectdError):
    """The cursor file cannot be read or written (corrupt content, permissions, disk full)."""


@dataclass(frozen=True)
class CursorState:
    """What the cursor file holds: the last verdict the PLC acknowledged."""

    station: str | None
    epoch: int | None
    last_seq: int
    updated_utc: str


class Cursor:
    """Last delivered (station, epoch, seq), persisted atomically at `path`.

    A missing file means "nothing delivered yet" (`last_seq` is None). A file that exists but
    cannot be parsed raises `CursorError` instead of silently starting over, which would
    skip or repeat results on the line.

    Example:
        >>> import tempfile, os
        >>> cursor = Cursor(os.path.join(tempfile.mkdtemp(), "sub", "c.json"))
        >>> cursor.save(station="s1", epoch=1, seq=7); cursor.state.last_seq
        7
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._state = self._load()

    @property
    def state(self) -> CursorState | None:
        """The last saved state, None before the first delivery."""
        return self._state

    @property
    def last_seq(self) -> int | None:
        """Seq of the last delivered verdict, None before the first delivery."""
        return None if self._state is None else self._state.last_seq

    @property
    def station(self) -> str | None:
        """Station of the last delivered verdict (the bridge follows that one station)."""
        return None if self._state is None else self._state.station

    def next_from_seq(self) -> int | None:
        """The `from_seq` a restarted bridge subscribes with: last delivered + 1, or None.

        Example:
            >>> import tempfile, os
            >>> Cursor(os.path.join(tempfile.mkdtemp(), "c.json")).next_from_seq() is None
            True
        """
        return None if self._state is None else self._state.last_seq + 1

    def is_delivered(self, station: str | None, epoch: int | None, seq: int) -> bool:
        """Whether the verdict (station, epoch, seq) was delivered already.

        Seq orders the verdicts of one epoch; a verdict of another epoch (when both are known)
        is of a new stream and was not delivered (see the module docstring).

        Example:
            >>> import tempfile, os
            >>> cursor = Cursor(os.path.join(tempfile.mkdtemp(), "c.json"))
            >>> cursor.save(station="s1", epoch=4, seq=10)
            >>> cursor.is_delivered("s1", 4, 9), cursor.is_delivered("s1", 3, 9), cursor.is_delivered("s2", 4, 9)
            (True, False, False)
        """
        state = self._state
        if state is None:
            return False
        if state.station is not None and station is not None and station != state.station:
            return False
        if state.epoch is not None and epoch is not None and epoch != state.epoch:
            return False
        return seq <= state.last_seq

    def save(self, *, station: str | None, epoch: int | None, seq: int) -> None:
        """Persist (station, epoch, seq) as delivered; durable when this returns.

        Example:
            >>> import tempfile, os, json
            >>> path = os.path.join(tempfile.mkdtemp(), "c.json")
            >>> Cursor(path).save(station="s1", epoch=1, seq=3)
            >>> json.load(open(path))["last_seq"]
            3
        """
        state = CursorState(station=station, epoch=epoch, last_seq=int(seq), updated_utc=utc_iso())
        payload = {"format": CURSOR_FORMAT, **asdict(state)}
        text = json.dumps(payload, indent=1, sort_keys=True) + "\n"
        try:
            write_atomically(self.path, text.encode("utf-8"))
        except OSError as exc:
            msg = f"cannot write bridge cursor {self.path}: {exc}"
            raise CursorError(msg) from exc
        self._state = state

    def _load(self) -> CursorState | None:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except OSError as exc:
            msg = f"cannot read bridge cursor {self.path}: {exc}"
            raise CursorError(msg) from exc
        try:
            payload: Any = json.loads(text)
            if not isinstance(payload, dict):
                msg = f"expected a JSON object, got {type(payload).__name__}"
                raise ValueError(msg)
            last_seq = payload["last_seq"]
            if isinstance(last_seq, bool) or not isinstance(last_seq, int) or last_seq < 0:
                msg = f"last_seq must be a non-negative integer, got {last_seq!r}"
                raise ValueError(msg)
            # Format 1 epochs counted daemon starts: they name no stream, so they are not compared.
            epoch = payload.get("epoch") if payload.get("format") == CURSOR_FORMAT else None
            station = payload.get("station")
            state = CursorState(
                station=None if station is None else str(station),
                epoch=None if epoch is None else int(epoch),
                last_seq=last_seq,
                updated_utc=str(payload.get("updated_utc", "")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            msg = (f"bridge cursor {self.path} is not valid ({exc}); fix it, or delete it to "
                   f"start from new verdicts (or pass --from-seq)")
            raise CursorError(msg) from exc
        logger.info("cursor %s: last delivered seq %d (station %s, epoch %s)",
                    self.path, state.last_seq, state.station, state.epoch)
        return state
