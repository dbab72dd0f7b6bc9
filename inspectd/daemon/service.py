"""systemd glue: sd_notify messages and a watchdog that pings only while the pipeline moves.

systemd restarts a `Type=notify` service whose `WatchdogSec=` ping stops. A thread that
pings on a timer regardless of health would keep a wedged daemon alive forever, so
`StallWatchdog` pings only while the pipeline is healthy: nothing is pending, or progress
was made recently (frigate `watchdog.py`; AaronDMarasco/systemd-watchdog `ping()`).

`Notifier` talks the sd_notify datagram protocol directly with the `socket` module: it
is a dozen lines, needs no extra dependency, and supports abstract-namespace sockets
(`@name`). Without `NOTIFY_SOCKET` (run by hand, in tests, in a container) every call is
a no-op.

Example::

    >>> n = Notifier(environ={})           # not under systemd: a silent no-op
    >>> n.enabled, n.ready(), n.watchdog()
    (False, False, False)
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping

logger = logging.getLogger(__name__)


def watchdog_interval_s(environ: Mapping[str, str] | None = None) -> float | None:
    """The systemd watchdog interval from `WATCHDOG_USEC`, or None when not watched.

    `WATCHDOG_PID`, when set, must name this process (a child must not ping for its parent).

    >>> watchdog_interval_s({"WATCHDOG_USEC": "30000000"})
    30.0
    >>> watchdog_interval_s({}) is None
    True
    """
    environ = os.environ if environ is None else environ
    raw_usec = environ.get("WATCHDOG_USEC")
    if not raw_usec:
        return None
    pid = environ.get("WATCHDOG_PID")
    if pid and pid.strip() != str(os.getpid()):
        return None
    try:
        usec = int(raw_usec)
    except ValueError:
        logger.warning("ignoring WATCHDOG_USEC=%r: not an integer", raw_usec)
        return None
    return usec / 1e6 if usec > 0 else None


class Notifier:
    """Sends sd_notify state lines (READY=1, STATUS=..., WATCHDOG=1 ...) to systemd.

    `notify_socket` defaults to `environ["NOTIFY_SOCKET"]`; a leading `@` means the
    Linux abstract namespace. A send that fails (systemd gone, socket removed) is logged
    once and reported as False, never raised: notification must not take the daemon down.

    >>> Notifier(environ={}).status("warming up")
    False
    """

    def __init__(
        self,
        notify_socket: str | None = None,
        *,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        environ = os.environ if environ is None else environ
        self.address = notify_socket if notify_socket is not None else environ.get("NOTIFY_SOCKET")
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._warned = False

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def notify(self, *lines: str) -> bool:
        """Send one datagram of newline-separated `KEY=value` lines; True if it went out."""
        if not self.address:
            return False
        message = "\n".join(lines).encode("utf-8")
        target = self.address
        if target.startswith("@"):
            target = "\0" + target[1:]
        with self._lock:
            try:
                if self._sock is None:
                    self._sock = socket.socket(
                        socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
                    )
                # Never block: systemd reads at once, and a receiver that does not (a full
                # queue) must not stall the daemon's main loop, which also handles SIGTERM.
                self._sock.sendto(message, socket.MSG_DONTWAIT, target)
            except OSError as exc:
                if not self._warned:
                    logger.warning("sd_notify to %s failed: %s", self.address, exc)
                    self._warned = True
                return False
        self._warned = False
        return True

    def ready(self, status: str | None = None) -> bool:
        """READY=1: warm-up is over; systemd marks the unit started."""
        lines = ["READY=1"]
        if status:
            lines.append(f"STATUS={_one_line(status)}")
        return self.notify(*lines)

    def status(self, text: str) -> bool:
        """STATUS=...: one line shown by `systemctl status`."""
        return self.notify(f"STATUS={_one_line(text)}")

    def watchdog(self) -> bool:
        """WATCHDOG=1: the keep-alive ping (send it only while healthy)."""
        return self.notify("WATCHDOG=1")

    def stopping(self) -> bool:
        """STOPPING=1: shutdown started (SIGTERM), so systemd does not read it as a hang."""
        return self.notify("STOPPING=1")

    def reloading(self) -> bool:
        """RELOADING=1 (+ MONOTONIC_USEC, which systemd >= 253 requires); send ready() after."""
        monotonic_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={monotonic_usec}")

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None


def _one_line(text: str) -> str:
    return " ".join(text.split())


class StallWatchdog:
    """Pings systemd's watchdog only while the pipeline is healthy.

    Healthy = nothing is pending (`busy()` is False), or `progress()` changed within the
    last `stall_after_s` seconds. `progress` returns anything that changes when work is
    done: a frame counter or a last-progress timestamp. Once unhealthy the thread logs the
    stuck state (with `describe()`, e.g. per-stage start times), calls `on_stall` once and
    stops pinging, so systemd restarts the service after `WatchdogSec`; pings resume if
    progress returns first.

    The check runs every half watchdog interval (`WATCHDOG_USEC`), or every
    `check_interval_s` when given or when systemd does not watch us (then only the logging
    and `on_stall` matter).

    >>> frames = [0]
    >>> dog = StallWatchdog(Notifier(environ={}), stall_after_s=5.0,
    ...                     progress=lambda: frames[0], busy=lambda: True)
    >>> dog.check()        # first look: counts as progress
    True
    """

    def __init__(
        self,
        notifier: Notifier,
        *,
        progress: Callable[[], object],
        busy: Callable[[], bool],
        stall_after_s: float = 60.0,
        watchdog_usec: int | None = None,
        check_interval_s: float | None = None,
        describe: Callable[[], str] | None = None,
        on_stall: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        if stall_after_s <= 0:
            msg = f"stall_after_s must be > 0, got {stall_after_s}"
            raise ValueError(msg)
        self.notifier = notifier
        self.stall_after_s = stall_after_s
        if watchdog_usec is None:
            interval_s = watchdog_interval_s(environ)
        else:
            interval_s = watchdog_usec / 1e6 if watchdog_usec > 0 else None
        self.watchdog_interval_s = interval_s
        if check_interval_s is not None:
            self.check_interval_s = check_interval_s
        elif interval_s is not None:
            self.check_interval_s = interval_s / 2
        else:
            self.check_interval_s = 1.0
        self._progress = progress
        self._busy = busy
        self._describe = describe
        self._on_stall = on_stall
        self._clock = clock
        self._last_value: object = _UNSET
        self._last_change = clock()
        self._stalled = False
        self.pings = 0
        self.stalls = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def stalled(self) -> bool:
        return self._stalled

    def seconds_since_progress(self) -> float:
        return self._clock() - self._last_change

    def check(self) -> bool:
        """Evaluate health once and ping if healthy; returns the health verdict."""
        now = self._clock()
        try:
            value = self._progress()
            busy = bool(self._busy())
        except Exception:
            # A probe that raises cannot vouch for the pipeline: treat it as stuck.
            logger.exception("watchdog health probe failed; not pinging")
            value, busy = self._last_value, True
        if value != self._last_value:
            self._last_value = value
            self._last_change = now
        idle_s = now - self._last_change
        healthy = (not busy) or idle_s <= self.stall_after_s
        if healthy:
            if self._stalled:
                logger.warning(
                    "pipeline progress resumed after %.1f s; watchdog pings resume", idle_s
                )
                self.notifier.status("running")
            self._stalled = False
            if self.notifier.watchdog():
                self.pings += 1
        elif not self._stalled:
            self._stalled = True
            self.stalls += 1
            detail = self._describe_safely()
            reason = (
                f"no progress for {idle_s:.1f} s with work pending{': ' + detail if detail else ''}"
            )
            logger.error("pipeline stalled, withholding watchdog pings: %s", reason)
            self.notifier.status(f"STALLED: {reason}")
            if self._on_stall is not None:
                try:
                    self._on_stall(reason)
                except Exception:
                    logger.exception("on_stall callback failed")
        return healthy

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="stall-watchdog", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    def __enter__(self) -> StallWatchdog:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.check()
            self._stop.wait(self.check_interval_s)

    def _describe_safely(self) -> str:
        if self._describe is None:
            return ""
        try:
            return self._describe()
        except Exception:
            logger.exception("watchdog describe() failed")
            return ""


_UNSET = object()
