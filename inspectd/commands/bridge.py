"""`inspectd bridge modbus|opcua`: verdicts to a PLC with the ack handshake, triggers back."""

from __future__ import annotations

import argparse
import logging
import os
import re
import signal
import sys
import threading
from pathlib import Path

from inspectd.bridges.cursor import Cursor, CursorError
from inspectd.bridges.handshake import Bridge
from inspectd.commands.control_client import add_control_options, curve_client_keys
from inspectd.wire.publish import DEFAULT_PUBLISH_ENDPOINT

EXIT_OK, EXIT_USAGE = 0, 2


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "bridge",
        description="Subscribe to the daemon's verdicts (gaps filled by replay), show them one at a time "
                    "on a PLC with a new-result / acknowledge handshake, and forward PLC triggers to the "
                    "daemon's triggered camera. See the README section 'Integrating with a PLC'.")
    kinds = parser.add_subparsers(dest="bridge_kind", metavar="KIND")
    kinds.required = True

    modbus = kinds.add_parser("modbus", help="holding registers of a Modbus TCP device (pymodbus)")
    _common(modbus)
    modbus.add_argument("--plc", metavar="HOST:PORT", help="the PLC's Modbus TCP address (port 502 if left out)")
    modbus.add_argument("--unit", type=int, default=1, metavar="N", help="Modbus unit / device id (default: 1)")
    modbus.add_argument("--map", default=None, metavar="FILE", help="register map (YAML/JSON); default: the built-in map")
    modbus.add_argument("--print-map", action="store_true", help="print the register map table and exit")
    modbus.add_argument("--markdown", action="store_true", help="with --print-map: a Markdown table")

    opcua = kinds.add_parser("opcua", help="OPC UA variables: on the PLC's server, or served by the bridge")
    _common(opcua)
    where = opcua.add_mutually_exclusive_group(required=True)
    where.add_argument("--server", metavar="URL", help="write to the nodes of this OPC UA server (opc.tcp://...)")
    where.add_argument("--serve", metavar="URL", help="serve the address space at this endpoint (opc.tcp://0.0.0.0:4840/inspectd/)")
    opcua.add_argument("--nodes", default=None, metavar="FILE",
                       help="node map (YAML/JSON): node ids for --server, ack mode and parameter names")
    return parser


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--endpoint", default=DEFAULT_PUBLISH_ENDPOINT, metavar="PUB",
                        help="the daemon's PUB endpoint (default: %(default)s)")
    add_control_options(parser, control_help="the daemon's control endpoint, for replay")
    parser.add_argument("--state", default=None, metavar="FILE",
                        help="cursor file: the last seq the PLC acknowledged (default: in $STATE_DIRECTORY or .)")
    parser.add_argument("--from-seq", type=int, default=None, metavar="N",
                        help="start at seq N instead of the cursor (delivers N.. again if already delivered)")
    parser.add_argument("--trigger", default=None, metavar="ENDPOINT",
                        help="the camera's trigger endpoint; PLC triggers are forwarded there")
    parser.add_argument("--heartbeat-s", type=float, default=1.0, metavar="S", help="heartbeat period (default: 1)")
    parser.add_argument("--poll-s", type=float, default=0.05, metavar="S",
                        help="how often the PLC's ack and trigger are polled (default: 0.05)")
    parser.add_argument("--timeout-s", type=float, default=1.0, metavar="S", help="PLC request timeout (default: 1)")
    parser.add_argument("--max-queue", type=int, default=1000, metavar="N",
                        help="results held in memory while the PLC is slow; more wait in the journal (default: 1000)")
    parser.add_argument("--daemon-error-hold-s", type=float, default=60.0, metavar="S",
                        help="keep the status word's daemon-error bit set this long after the daemon's last "
                             "error.<station> message (default: 60)")


def run(args: argparse.Namespace) -> int:
    if args.bridge_kind == "modbus":
        return _run_modbus(args)
    return _run_opcua(args)


def _run_modbus(args: argparse.Namespace) -> int:
    from inspectd.bridges.modbus import ModbusBus, parse_host_port
    from inspectd.bridges.registermap import load_register_map

    register_map = load_register_map(args.map)  # ConfigError -> exit 2 with the key path
    if args.print_map:
        print(register_map.table(markdown=args.markdown))
        return EXIT_OK
    if not args.plc:
        print("inspectd bridge modbus: --plc HOST:PORT is required (or use --print-map)", file=sys.stderr)
        return EXIT_USAGE
    host, port = parse_host_port(args.plc)
    bus = ModbusBus(host, port, unit=args.unit, register_map=register_map, timeout_s=args.timeout_s)
    return _serve(bus, args, default_state=f"bridge-modbus-{host}-{port}-unit{args.unit}.cursor.json")


def _run_opcua(args: argparse.Namespace) -> int:
    from inspectd.bridges.opcua import OpcUaClientBus, OpcUaServerBus, load_node_map

    node_map = load_node_map(args.nodes)
    url = args.server or args.serve
    if not url.startswith("opc.tcp://"):
        print(f"inspectd bridge opcua: the URL must start with opc.tcp://, got {url!r}", file=sys.stderr)
        return EXIT_USAGE
    if args.server:
        bus = OpcUaClientBus(url, node_map, timeout_s=args.timeout_s)
    else:
        bus = OpcUaServerBus(url, node_map, timeout_s=args.timeout_s)
    slug = re.sub(r"[^A-Za-z0-9.]+", "-", url.removeprefix("opc.tcp://")).strip("-")
    return _serve(bus, args, default_state=f"bridge-opcua-{slug}.cursor.json")


def _serve(bus: object, args: argparse.Namespace, *, default_state: str) -> int:
    _quiet_protocol_loggers()
    state_dir = Path((os.environ.get("STATE_DIRECTORY") or ".").split(":")[0])
    state_path = Path(args.state) if args.state else state_dir / default_state
    try:
        cursor = Cursor(state_path)
    except CursorError as exc:
        print(f"inspectd bridge: {exc}", file=sys.stderr)
        return EXIT_USAGE
    curve_client = curve_client_keys(args)
    bridge = Bridge(bus, args.endpoint, args.control, cursor, from_seq=args.from_seq, trigger_endpoint=args.trigger,
                    heartbeat_interval_s=args.heartbeat_s, poll_interval_s=args.poll_s, max_queue=args.max_queue,
                    daemon_error_hold_s=args.daemon_error_hold_s, curve_client=curve_client)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        bridge.run(stop)
    except CursorError as exc:  # the cursor cannot be written: stop rather than deliver twice later
        print(f"inspectd bridge: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK


def _quiet_protocol_loggers() -> None:
    """pymodbus logs every refused connection at ERROR, asyncua chats at WARNING; the bridge
    reports connection trouble itself (once per cause), so theirs show only with DEBUG."""
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
        logging.getLogger("asyncua").setLevel(logging.ERROR)
