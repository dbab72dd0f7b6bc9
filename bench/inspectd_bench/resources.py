"""CPU time and peak memory of this process over one benchmark phase, without psutil.

CPU % is top's: user + system CPU seconds of the whole process (every thread: sources,
analysis workers, ONNX Runtime's pool, numba's, the publisher) per wall second, so 2 busy
cores read 200 %. On a shared machine the numbers only mean something next to what the
other processes took meanwhile: `others_cpu_pct_of_machine` is the machine's busy time from
`/proc/stat` minus this process's, as a share of all cores (None where /proc/stat is absent). Peak RSS is the kernel's high-water mark `VmHWM`, reset at the start of a
phase by writing 5 to `/proc/self/clear_refs` (Linux >= 4.0), so each phase gets its own
peak; where that is not possible the process-lifetime `ru_maxrss` is reported and
`peak_rss_scope` says `process`.

Example:
    >>> meter = ProcessMeter()
    >>> meter.start()
    >>> _ = sum(range(100_000))
    >>> usage = meter.stop()
    >>> usage.wall_s > 0 and usage.peak_rss_mb > 0
    True
"""

from __future__ import annotations

import logging
import os
import resource
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

_CLEAR_REFS = Path("/proc/self/clear_refs")
_STATUS = Path("/proc/self/status")
_RESET_PEAK_RSS = "5"


@dataclass(frozen=True)
class Usage:
    wall_s: float
    cpu_s: float
    cpu_pct: float  # of one core, top-style: 200 = two cores busy
    cpu_pct_of_machine: float  # of all cores the process may run on
    peak_rss_mb: float
    peak_rss_scope: str  # "phase" (VmHWM reset at start) or "process" (lifetime maximum)
    others_cpu_pct_of_machine: float | None = None  # what other processes used meanwhile

    def as_dict(self) -> dict[str, float | str]:
        return {key: (round(value, 2) if isinstance(value, float) else value) for key, value in asdict(self).items()}


def usable_cores() -> int:
    """Cores this process may run on (its affinity mask), at least 1.

    >>> usable_cores() >= 1
    True
    """
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _status_kib(field: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _reset_peak_rss() -> bool:
    try:
        _CLEAR_REFS.write_text(_RESET_PEAK_RSS)
    except OSError:
        return False
    return True


def machine_busy_s() -> float | None:
    """CPU seconds all processes have been busy since boot (every core), from /proc/stat.

    >>> busy = machine_busy_s()
    >>> busy is None or busy > 0
    True
    """
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[1:9])
    except (OSError, ValueError, IndexError):
        return None
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _lifetime_peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return peak / (1024.0 * 1024.0) if sys.platform == "darwin" else peak / 1024.0


class ProcessMeter:
    """`start()`, run the phase, `stop()` -> `Usage`."""

    def __init__(self) -> None:
        self._wall0 = 0.0
        self._cpu0 = 0.0
        self._phase_peak = False
        self._busy0: float | None = None

    def start(self) -> None:
        self._phase_peak = _reset_peak_rss() and _status_kib("VmHWM") is not None
        times = os.times()
        self._cpu0 = times.user + times.system
        self._busy0 = machine_busy_s()
        self._wall0 = time.perf_counter()

    def stop(self) -> Usage:
        wall_s = max(time.perf_counter() - self._wall0, 1e-9)
        times = os.times()
        cpu_s = times.user + times.system - self._cpu0
        busy1 = machine_busy_s()
        others = None
        if busy1 is not None and self._busy0 is not None:
            others = max(0.0, 100.0 * (busy1 - self._busy0 - cpu_s) / (wall_s * usable_cores()))
        hwm_kib = _status_kib("VmHWM") if self._phase_peak else None
        if hwm_kib is not None:
            peak_mb, scope = hwm_kib / 1024.0, "phase"
        else:
            peak_mb, scope = _lifetime_peak_rss_mb(), "process"
        cpu_pct = 100.0 * cpu_s / wall_s
        return Usage(wall_s=wall_s, cpu_s=cpu_s, cpu_pct=cpu_pct, cpu_pct_of_machine=cpu_pct / usable_cores(),
                     peak_rss_mb=peak_mb, peak_rss_scope=scope, others_cpu_pct_of_machine=others)
