"""`inspectd run`: the inspection daemon (systemd service `inspectd.service`)."""

from __future__ import annotations

import argparse
import sys

from inspectd import config
from inspectd.daemon import logs
from inspectd.daemon.app import Daemon
from inspectd.errors import InspectdError, PermanentError
from inspectd.sources.folder import FolderSourceConfig


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "run",
        description="Flags override the config file; with --watch alone it runs on the built-in defaults.",
    )
    parser.add_argument("--config", default=None, help="YAML config (default: built-in defaults)")
    parser.add_argument("--watch", default=None, metavar="DIR",
                        help="watch this folder (replaces the first folder source's path, or adds one)")
    parser.add_argument("--publish", action="append", default=None, metavar="ENDPOINT",
                        help="ZeroMQ PUB endpoint (repeatable; default tcp://127.0.0.1:5556)")
    parser.add_argument("--control", default=None, metavar="ENDPOINT",
                        help="control REQ/REP endpoint (default tcp://127.0.0.1:5557)")
    parser.add_argument("--state-dir", default=None, metavar="DIR", help="journal, done/ and quarantine/ (default "
                        "inspectd-state)")
    parser.add_argument("--http", default=None, metavar="HOST:PORT",
                        help="serve the web UI here (config http.listen; an address other than loopback needs "
                             "http.token or http.token_file)")
    return parser


def apply_overrides(cfg: config.Config, args: argparse.Namespace) -> config.Config:
    """The command-line flags win over the file; validated like the file."""
    raw = cfg.model_dump(mode="python")
    if args.watch:
        folders = [s for s in raw["sources"] if s["kind"] == "folder"]
        if folders:
            folders[0]["path"] = args.watch
        else:
            raw["sources"].append(FolderSourceConfig(path=args.watch).model_dump(mode="python"))
    if args.publish:
        raw["publish"]["bind"] = args.publish
    if args.control:
        raw["control"]["bind"] = args.control
    if args.state_dir:
        raw["state_dir"] = args.state_dir
    if getattr(args, "http", None):
        raw["http"]["listen"] = args.http
    return config.parse_object(raw, origin="command line")


# The unit's RestartPreventExitStatus: a start-up failure that a restart cannot fix.
EXIT_CANNOT_START = 2
# A start-up failure that may clear by itself (a share not mounted yet, the journal's disk
# full or locked, a socket address still taken): systemd restarts the unit after RestartSec.
EXIT_START_FAILED = 1


def run(args: argparse.Namespace) -> int:
    # config.load is what `inspectd validate-config` runs: a ConfigError here leaves main() as exit 2.
    cfg = apply_overrides(config.load(args.config), args)
    logs.configure(args.log_level or cfg.log_level.value)
    daemon = Daemon(cfg, config_path=args.config)
    try:
        return daemon.run_until_signalled()
    except PermanentError as exc:  # backend cuda without a GPU, an engine that cannot load, a damaged file
        print(f"inspectd: cannot start: {one_line(exc)}", file=sys.stderr)
        return EXIT_CANNOT_START
    except InspectdError as exc:  # the watched folder, the state dir, the journal, a socket
        print(f"inspectd: cannot start: {one_line(exc)}", file=sys.stderr)
        return EXIT_START_FAILED
    except OSError as exc:  # a condition of the machine no check named: it may clear, so systemd retries
        print(f"inspectd: cannot start: {one_line(exc)}", file=sys.stderr)
        return EXIT_START_FAILED


def one_line(exc: BaseException) -> str:
    """The error's text on one line: journald and a line integrator's tooling read the last line."""
    return "; ".join(line.strip() for line in str(exc).splitlines() if line.strip()) or type(exc).__name__
