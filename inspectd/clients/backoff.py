"""Reconnect backoff, shared by the camera sources and the PLC bridges: both retry a peer
that went away (a camera, a daemon) without hammering it and without giving up."""

from __future__ import annotations


class Backoff:
    """Reconnect delays: `initial_s`, then doubling, capped at `max_s`; `reset()` on success.

    >>> b = Backoff(0.5, 3.0)
    >>> [b.next() for _ in range(5)]
    [0.5, 1.0, 2.0, 3.0, 3.0]
    """

    def __init__(self, initial_s: float = 0.5, max_s: float = 30.0, factor: float = 2.0) -> None:
        if initial_s <= 0 or max_s < initial_s or factor < 1:
            msg = f"bad backoff: initial_s={initial_s}, max_s={max_s}, factor={factor}"
            raise ValueError(msg)
        self.initial_s = initial_s
        self.max_s = max_s
        self.factor = factor
        self._next = initial_s

    def next(self) -> float:
        delay = self._next
        self._next = min(self._next * self.factor, self.max_s)
        return delay

    def reset(self) -> None:
        self._next = self.initial_s
