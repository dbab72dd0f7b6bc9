"""`inspectd reload`: make a running daemon re-read its rules (as SIGHUP / `systemctl reload` does).

Exit codes: 0 reloaded; 2 the daemon refused the config (the reason is printed); 3 no answer.
"""

from __future__ import annotations

import argparse
import sys

from inspectd.commands.control_client import add_control_options, ask_daemon

EXIT_RELOADED, EXIT_REFUSED, EXIT_NO_ANSWER = 0, 2, 3


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("reload")
    add_control_options(parser)
    parser.add_argument("--timeout-s", type=float, default=5.0, metavar="S", help="wait this long for an answer")
    return parser


def run(args: argparse.Namespace) -> int:
    answer = ask_daemon(args, {"cmd": "reload"}, "reload")
    if answer is None:
        return EXIT_NO_ANSWER
    if not answer.get("ok"):
        print(f"inspectd reload: refused, the rules stay as they were: {answer.get('error')}", file=sys.stderr)
        return EXIT_REFUSED
    for rule in answer.get("rules", []):
        print(f"{rule['metric']} {rule['op']} {rule['limit']}")
    return EXIT_RELOADED
