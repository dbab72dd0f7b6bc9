"""`inspectd status`: ask a running daemon how it is, for an operator or a health check.

Exit codes: 0 ready and healthy; 1 answering but not healthy (warming up, stalled, a source
not running); 3 no answer (daemon down, wrong endpoint, wrong CurveZMQ keys).
"""

from __future__ import annotations

import argparse
import json

from inspectd.clients.health import describe, health_problems
from inspectd.commands.control_client import add_control_options, ask_daemon

EXIT_HEALTHY, EXIT_UNHEALTHY, EXIT_NO_ANSWER = 0, 1, 3


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("status")
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
