"""`inspectd status`: ask a running daemon how it is, for an operator or a health check.

Exit codes: 0 ready and healthy; 1 answering but not healthy (warming up, stalled, a source
not running); 3 no answer (daemon down, wrong endpoint, wrong CurveZMQ keys).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from inspectd.commands.control_client import add_control_options, ask_daemon
from inspectd.escaping import printable
from inspectd.sources.base import SourceState

EXIT_HEALTHY, EXIT_UNHEALTHY, EXIT_NO_ANSWER = 0, 1, 3
_SOURCE_STATES_OK = (SourceState.RUNNING.value, SourceState.ENDED.value)  # as `status` spells them


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("status", help="ask a running daemon how it is (exit 0 healthy, 1 not, 3 no answer)")
    add_control_options(parser)
    parser.add_argument("--json", action="store_true", help="print the daemon's whole status answer as JSON")
    parser.add_argument("--timeout-s", type=float, default=2.0, metavar="S", help="wait this long for an answer")
    return parser


def run(args: argparse.Namespace) -> int:
    status = ask_daemon(args, {"cmd": "status"}, "status")
    if status is None:
        return EXIT_NO_ANSWER
    problems = health_problems(status)
    if args.json:
        print(json.dumps(status, indent=2, sort_keys=True))
    else:
        print("\n".join(describe(status, problems)))
    return EXIT_UNHEALTHY if problems else EXIT_HEALTHY


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
                 if source.get("state") not in _SOURCE_STATES_OK]
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
