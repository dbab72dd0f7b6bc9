"""What goes out on `error.<station>`: daemon-level problems a line controller should hear of.

Per-item failures are ERROR / NO_INSPECTION *verdicts* (every part gets exactly one), so the
source events that already end in a verdict are not sent again here. Every other source
event of WARNING or ERROR severity is (camera lost, folder gone, inotify overflow, a file
that could not be moved), and so are the daemon's own troubles: the journal refusing writes
(`journal_write_failed`: input is paused until it takes them again), a journal deleted under
the daemon and rebuilt (`journal_restored`), a new journal epoch where verdicts were
journaled before (`journal_new_epoch`: consumers start a new stream), a pipeline thread
restarting, a stall. One kind from one source goes out at most once per
`repeat_after_s`, so a flapping camera cannot flood a PLC bridge; the next message says
how many were held back.

Frames out of distribution (`inspectd.analysis.ood`) go out once per *run*: the first flagged frame
from a source is reported (kind `out_of_distribution`), the rest of the run is not, and the
next frame in the envelope ends it (`OutOfDistributionRuns`). A run is the unit an operator
acts on (the camera was switched to negative, a wrong folder is fed in), so its start is
sent without the time throttle: a new run after a good frame is news, however soon it comes.

Example:
    >>> sent = []
    >>> reporter = ErrorReporter(sent.append, station="line3", epoch=4, clock=lambda: 100.0)
    >>> reporter.report("journal_write_failed", "cannot write verdict: disk I/O error")
    True
    >>> sent[0]["kind"], sent[0]["epoch"], sent[0]["source"]
    ('journal_write_failed', 4, None)
    >>> reporter.report("journal_write_failed", "cannot write verdict: disk I/O error")
    False
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from inspectd.sources.base import Severity, StatusUpdate
from inspectd.types import Assessment
from inspectd.wire.message import build_error_message

logger = logging.getLogger(__name__)

OUT_OF_DISTRIBUTION = "out_of_distribution"
# Source events that end in a verdict of their own (ERROR / NO_INSPECTION with the reason).
EVENTS_WITH_A_VERDICT = frozenset({"file_quarantined", "file_unreadable", "no_inspection"})
REPEAT_AFTER_S = 10.0


class ErrorReporter:
    """Turns problems into `error.<station>` messages for `send` (e.g. `Publisher.publish_error`)."""

    def __init__(
        self,
        send: Callable[[dict[str, Any]], None],
        *,
        station: str,
        epoch: int | None,
        repeat_after_s: float = REPEAT_AFTER_S,
        counted: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._send = send
        self.station = station
        self.epoch = epoch
        self.repeat_after_s = repeat_after_s
        self._counted = counted
        self._clock = clock
        self._lock = threading.Lock()
        self._last_sent: dict[tuple[str, str | None], float] = {}
        self._held_back: dict[tuple[str, str | None], int] = {}

    def report(self, kind: str, error: str, source: str | None = None, *, throttle: bool = True) -> bool:
        """Send one problem unless the same kind from the same source went out within
        `repeat_after_s` (`throttle=False`: send regardless, for events already de-duplicated,
        such as the start of a run); True when sent. Never raises: reporting must not add a failure."""
        if self._counted is not None:
            self._counted(kind)
        key = (kind, source)
        with self._lock:
            now = self._clock()
            last = self._last_sent.get(key)
            if throttle and last is not None and now - last < self.repeat_after_s:
                self._held_back[key] = self._held_back.get(key, 0) + 1
                return False
            self._last_sent[key] = now
            held_back = self._held_back.pop(key, 0)
        if held_back:
            error = f"{error} (and {held_back} more like it since the last report)"
        try:
            self._send(build_error_message(station=self.station, epoch=self.epoch, error=error, source=source,
                                           kind=kind))
        except Exception as exc:  # noqa: BLE001 - the problem itself is logged where it happened
            logger.warning("could not publish the %s error (%s): %s", kind, exc, error)
            return False
        return True

    def on_source_status(self, update: StatusUpdate) -> None:
        """A source's status callback: WARNING and ERROR events without a verdict of their own."""
        if update.severity in (Severity.WARNING, Severity.ERROR) and update.event not in EVENTS_WITH_A_VERDICT:
            self.report(update.event, describe(update), update.source_id)


def describe(update: StatusUpdate) -> str:
    """One readable line from a status event: its error or reason first, then the details.

    Example:
        >>> from datetime import datetime, timezone
        >>> describe(StatusUpdate("cam", datetime.now(timezone.utc), Severity.WARNING, "camera_lost",
        ...                       {"camera_id": "Fake_1", "reason": "no frame in 5.0 s"}))
        'no frame in 5.0 s (camera_id=Fake_1)'
    """
    details = dict(update.payload)
    head = details.pop("error", None) or details.pop("reason", None) or update.event.replace("_", " ")
    tail = ", ".join(f"{name}={value}" for name, value in details.items())
    return f"{head} ({tail})" if tail else str(head)


class OutOfDistributionRuns:
    """Per source, whether its frames are in a run of out-of-distribution frames.

    `observe` returns True for the first flagged frame of a run; a frame in the envelope ends
    the run; a frame never assessed (unreadable, no inspection) neither starts nor ends one.

    >>> from inspectd.types import Assessment
    >>> runs, flagged, fine = OutOfDistributionRuns(), Assessment(0.2, True, 2.5), Assessment(0.8, False, 0.3)
    >>> [runs.observe("cam", a) for a in (flagged, flagged, None, flagged, fine, flagged)]
    [True, False, False, False, False, True]
    """

    def __init__(self) -> None:
        self._in_run: dict[str, bool] = {}

    def observe(self, source_id: str, assessment: Assessment | None) -> bool:
        if assessment is None:
            return False
        started = assessment.out_of_distribution and not self._in_run.get(source_id, False)
        self._in_run[source_id] = assessment.out_of_distribution
        return started
