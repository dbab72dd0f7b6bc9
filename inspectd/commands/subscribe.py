"""`inspectd subscribe`: the reference subscriber (prints verdicts, fills gaps by replay)."""

from __future__ import annotations

import argparse
import signal
import threading

from inspectd.clients import subscribe
from inspectd.commands.control_client import add_control_options, curve_client_keys


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("subscribe")
    parser.add_argument("--endpoint", default="tcp://127.0.0.1:5556", help="PUB endpoint (default: %(default)s)")
    add_control_options(parser, control_help="control endpoint used for replay")
    parser.add_argument("--from-seq", type=int, default=None, metavar="N",
                        help="first deliver every journaled verdict with seq >= N")
    parser.add_argument("--count", type=int, default=None, metavar="N", help="exit after N verdicts")
    return parser


def run(args: argparse.Namespace) -> int:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    curve_client = curve_client_keys(args)
    subscribe.run(args.endpoint, args.control, args.from_seq, stop=stop, max_messages=args.count,
                  curve_client=curve_client)
    return 0
