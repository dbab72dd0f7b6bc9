"""Reading a daemon's status answer: is it healthy, and what to tell a person at the station.

Shared by `inspectd status` (the health check) and the web UI's Live page. It reads the
answer's fields only, so it never imports the daemon: source states are spelled as the
status answer spells them (`inspectd.sources.base.SourceState` values).
"""

from __future__ import annotations

from typing import Any

from inspectd.escaping import printable

SOURCE_STATES_OK = ("RUNNING", "ENDED")  # a source in any other state makes the station unhealthy


def health_problems(status: dict[str, Any]) -> list[str]:
    """Why a status answer is not healthy; empty when it is.

    Example:
        >>> health_problems({"ready": True, "sources": [{"id": "cam", "state": "RECONNECTING"}]})
        ['source cam is RECONNECTING']
    """
    problems = [] if status.get("ready") else ["not ready (warming up or stopping)"]
    if (status.get("watchdog") or {}).get("stalled"):
        problems.append("pipeline stalled")
    journal = status.get("journal") or {}
    if journal.get("writable") is False:
        problems.append(f"journal cannot be written ({journal.get('error')}); input paused, "
                        f"{journal.get('held')} item(s) held")
    problems += [f"source {source.get('id')} is {source.get('state')}" for source in status.get("sources", [])
                 if source.get("state") not in SOURCE_STATES_OK]
    return problems


def describe(status: dict[str, Any], problems: list[str]) -> list[str]:
    """A few lines for a person at the station."""
    engine = status.get("engine") or {}
    lines = [
        f"station {status.get('station')}: {'healthy' if not problems else 'NOT healthy: ' + '; '.join(problems)}",
        f"epoch {status.get('epoch')}, last seq {status.get('last_seq')}, up {_duration(status.get('uptime_s', 0.0))}, "
        f"pid {status.get('pid')}",
    ]
    if engine:
        lines.append(f"engine {engine.get('name')} on {engine.get('backend')}")
    for source in status.get("sources", []):
        lines.append(f"source {source.get('id')} ({source.get('kind')}): {source.get('state')}")
    queues = status.get("queues") or {}
    if queues:
        lines.append("queues: " + ", ".join(f"{name} {depth}" for name, depth in queues.items()))
    counts = status.get("counts") or {}
    lines.append("verdicts: " + (", ".join(f"{name} {n}" for name, n in sorted(counts.items())) or "none yet"))
    if status.get("last_error"):
        lines.append(f"last error: {printable(status['last_error'])}")  # may quote a file name
    return lines


def _duration(seconds: float) -> str:
    """Uptime the way a person reads it.

    >>> _duration(11532.4), _duration(245.0)
    ('3h12m', '4m05s')
    """
    minutes, _ = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{int(seconds) % 60:02d}s"
