"""`inspectd` command line: one sub-command per module in `inspectd.commands`.

Exit codes (a contract with line integrators): 0 all PASS, 1 any FAIL, 2 usage or config
error, 3 any ERROR.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

import inspectd
from inspectd.errors import ConfigError

EXIT_PASS, EXIT_FAIL, EXIT_USAGE, EXIT_ERROR = 0, 1, 2, 3

# Order shown in --help; each module defines `add_parser(subparsers)` and `run(args) -> int`.
COMMAND_MODULES = (
    "analyze", "run", "status", "reload", "subscribe", "bridge", "synth", "demo", "validate_config",
    "train", "export", "quantize", "evaluate", "build_engine", "bench",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="inspectd",
        description="Inline inspection of thermal- and cold-spray coating micrographs.",
    )
    parser.add_argument("--version", action="version", version=f"inspectd {inspectd.__version__}")
    parser.add_argument("--log-level", default=None, help="override the config's log_level (DEBUG, INFO, ...)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for name in COMMAND_MODULES:
        module = importlib.import_module(f"inspectd.commands.{name}")
        sub = module.add_parser(subparsers)
        sub.set_defaults(handler=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=(args.log_level or "WARNING").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return args.handler(args)
    except ConfigError as exc:
        print(f"inspectd: config error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
