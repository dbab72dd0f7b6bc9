"""`inspectd` command line: one sub-command per module in `inspectd.commands`.

Exit codes (a contract with line integrators): 0 all PASS, 1 any FAIL, 2 usage or config
error, 3 any ERROR. `inspectd run`: 2 when a restart cannot help (config), 1 when it may.
An error nobody foresaw is one line and exit 1 too, never a traceback (`--log-level DEBUG`
logs the traceback).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

import inspectd
from inspectd import logs
from inspectd.errors import ConfigError

EXIT_PASS, EXIT_FAIL, EXIT_USAGE, EXIT_ERROR = 0, 1, 2, 3

# Order shown in --help; each module defines `add_parser(subparsers)` and `run(args) -> int`.
COMMAND_MODULES = (
    "analyze", "run", "ui", "status", "reload", "subscribe", "bridge", "journal", "synth", "demo", "validate_config",
    "train", "export", "quantize", "evaluate", "build_engine", "bench",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="inspectd",
        description="Inline inspection of thermal- and cold-spray coating micrographs.",
    )
    parser.add_argument("--version", action="version", version=f"inspectd {inspectd.__version__}")
    parser.add_argument("--log-level", default=None, type=str.upper, choices=("DEBUG", "INFO", "WARNING", "ERROR"),
                        help="override the config's log_level")
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
    logs.configure_console(args.log_level or "WARNING")  # `run` switches to logfmt
    try:
        return args.handler(args)
    except ConfigError as exc:
        print(f"inspectd: config error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # noqa: BLE001 - the last guard: one line for systemd and scripts, not a traceback
        logging.getLogger("inspectd").debug("unexpected error", exc_info=True)
        text = " ".join(str(exc).split()) or "no message"
        print(f"inspectd: unexpected error: {type(exc).__name__}: {text} (--log-level DEBUG logs where)",
              file=sys.stderr)
        return EXIT_FAIL


if __name__ == "__main__":
    sys.exit(main())
