"""An in-memory camera for the benchmark: pre-generated frames pushed into the real pipeline.

Why a source of its own: the benchmark must time the daemon's own path (source buffer ->
work queue -> analysis threads -> journal -> publish), not a copy of it, but without a
camera's own costs or limits in the way. `push` does what a camera source's grab thread
does per frame: stamp the capture time, hand the pipeline a fresh buffer (a copy of the
frame, as a camera delivers a new buffer each time), hash it (`SourceItem.from_pixels`)
and queue it. With `drop_oldest=True` the buffer behaves as a free-running camera's
(the OLDEST queued frame is dropped when the pipeline falls behind, counted in `drops`);
with `drop_oldest=False` `push` waits for room, as a folder does, so nothing is dropped.

The class lives outside `inspectd.sources`, so the source registry (and the config's
`kind:` list) never offers it.

Example:
    >>> import numpy as np
    >>> source = MemoryFrameSource("bench", buffer_size=2, drop_oldest=True)
    >>> source.start()
    >>> [source.push(np.zeros((4, 4), np.uint8), n) for n in range(3)]
    [True, True, True]
    >>> source.stats()["drops"], source.get(timeout_s=0).source
    (1, 'bench#1')
    >>> sorted(source.capture_perf_s)
    [0, 1, 2]
    >>> source.stop(); source.state.value
    'ENDED'
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime, timezone

import numpy as np

from inspectd.sources.base import FrameSource, SourceItem, SourceState, StatusCallback

logger = logging.getLogger(__name__)


class MemoryFrameSource(FrameSource):
    """Frames pushed by the caller's thread; `capture_perf_s[frame_number]` = when each was captured."""

    KEY = "memory"

    def __init__(
        self,
        source_id: str,
        *,
        buffer_size: int = 4,
        drop_oldest: bool = True,
        on_status: StatusCallback | None = None,
    ) -> None:
        super().__init__(source_id, buffer_size=buffer_size, drop_oldest=drop_oldest, on_status=on_status)
        self._capture_lock = threading.Lock()
        self.capture_perf_s: dict[int, float] = {}

    def start(self) -> None:
        self._reopen_buffer()
        self._set_state(SourceState.INITIALISING)
        self._set_state(SourceState.RUNNING)

    def stop(self, timeout_s: float = 5.0) -> None:
        self._close_buffer()
        if self.state is not SourceState.ENDED:
            self._set_state(SourceState.ENDED)

    def push(self, pixels: np.ndarray, frame_number: int, *, timeout_s: float | None = None) -> bool:
        """Capture one frame now and queue it; False if the source is stopped (or, waiting, timed out).

        The capture stamp is taken before the copy and the hash, as a camera stamps a frame
        when it arrives: both count in the capture-to-publish latency.
        """
        captured_perf_s = time.perf_counter()
        captured_at = datetime.now(timezone.utc)
        with self._capture_lock:
            self.capture_perf_s[frame_number] = captured_perf_s
        item = SourceItem.from_pixels(self.source_id, pixels.copy(), frame_number, capture_time=captured_at)
        return self._publish(item, timeout_s)

    def captured_at(self, frame_number: int) -> float | None:
        """`time.perf_counter()` at the capture of `frame_number`, or None if it was never pushed."""
        with self._capture_lock:
            return self.capture_perf_s.get(frame_number)
