"""Options shared by the commands that talk to a running daemon: its control endpoint and CurveZMQ keys."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from inspectd.clients.control import DEFAULT_CONTROL_ENDPOINT, ControlError, request
from inspectd.errors import ConfigError
from inspectd.wire.curve import CurveClientKeys, load_client_keys


def add_control_options(parser: argparse.ArgumentParser, *, control_help: str = "the daemon's control endpoint") -> None:
    parser.add_argument("--control", default=DEFAULT_CONTROL_ENDPOINT, metavar="CTL",
                        help=f"{control_help} (default: %(default)s)")
    add_curve_options(parser)


def add_curve_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--curve-secret", default=None, metavar="FILE", help="client certificate (CurveZMQ)")
    parser.add_argument("--curve-server", default=None, metavar="FILE", help="server public certificate (CurveZMQ)")


def curve_client_keys(args: argparse.Namespace) -> CurveClientKeys | None:
    """The client keys when the CurveZMQ options are given; one without the other is a usage error."""
    if not (args.curve_secret or args.curve_server):
        return None
    if not (args.curve_secret and args.curve_server):
        msg = "--curve-secret and --curve-server go together (client certificate and server public certificate)"
        raise ConfigError(msg)
    return load_client_keys(args.curve_secret, args.curve_server)


def ask_daemon(args: argparse.Namespace, payload: dict[str, Any], command: str) -> dict[str, Any] | None:
    """The daemon's answer to one control request, or None after printing why none came."""
    try:
        return request(args.control, payload, timeout_ms=int(args.timeout_s * 1000),
                       curve_client=curve_client_keys(args))
    except ControlError as exc:
        print(f"inspectd {command}: {exc} (is the daemon running, and are --control and the CurveZMQ keys right?)",
              file=sys.stderr)
        return None
