"""`inspectd subscribe`: the reference subscriber (prints verdicts, fills gaps by replay)."""

from __future__ import annotations

import argparse
import signal
import threading

from inspectd import subscribe
from inspectd.curve import load_client_keys


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("subscribe", help="print verdicts as they are published; fills gaps by replay")
    parser.add_argument("--endpoint", default="tcp://127.0.0.1:5556", help="PUB endpoint (default: %(default)s)")
    parser.add_argument("--control", default="tcp://127.0.0.1:5557",
                        help="control endpoint used for replay (default: %(default)s)")
    parser.add_argument("--from-seq", type=int, default=None, metavar="N",
                        help="first deliver every journaled verdict with seq >= N")
    parser.add_argument("--count", type=int, default=None, metavar="N", help="exit after N verdicts")
    parser.add_argument("--curve-secret", default=None, metavar="FILE", help="client certificate (CurveZMQ)")
    parser.add_argument("--curve-server", default=None, metavar="FILE", help="server public certificate (CurveZMQ)")
    return parser


def run(args: argparse.Namespace) -> int:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    curve_client = None
    if args.curve_secret or args.curve_server:
        curve_client = load_client_keys(args.curve_secret, args.curve_server)
    subscribe.run(args.endpoint, args.control, args.from_seq, stop=stop, max_messages=args.count,
                  curve_client=curve_client)
    return 0
