"""`inspectd ui`: the web UI alone, over an existing state dir (a copy of a station's, an archive).

The same pages as `inspectd run --http`, without a daemon: Live shows what the journal holds
(updated as another process writes it), Trends, Analyse and Review work as there; what
needs the running daemon (its health, swapping its model) says it is offline.

Exit codes: 0 stopped by Ctrl-C / SIGTERM; 1 cannot listen; 2 usage or config error.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

from inspectd import config
from inspectd.commands.run import one_line
from inspectd.daemon import logs
from inspectd.errors import ConfigError, InspectdError, PermanentError

DEFAULT_LISTEN = "127.0.0.1:8080"
EXIT_STOPPED, EXIT_START_FAILED, EXIT_USAGE = 0, 1, 2


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "ui",
        description="The station web UI over a state dir's journal, without running the daemon.",
    )
    parser.add_argument("--state-dir", required=True, metavar="DIR", help="the state dir (holds journal.sqlite3)")
    parser.add_argument("--http", default=None, metavar="HOST:PORT",
                        help=f"listen here (default: the config's http.listen, else {DEFAULT_LISTEN}); an "
                             f"address other than loopback needs http.token or http.token_file")
    parser.add_argument("--config", default=None, help="YAML config (engine, rules, http token; default: built-in)")
    return parser


def run(args: argparse.Namespace) -> int:
    from inspectd.web.auth import AccessGuard, read_token
    from inspectd.web.context import WebContext
    from inspectd.web.server import WebServer

    cfg = config.load(args.config)
    logs.configure(args.log_level or cfg.log_level.value)
    state_dir = Path(args.state_dir)
    if not state_dir.is_dir():
        print(f"inspectd ui: {state_dir} is not a directory (give the daemon's state dir)", file=sys.stderr)
        return EXIT_USAGE
    listen = args.http or cfg.http.listen or DEFAULT_LISTEN
    try:
        host, port = config.parse_http_listen(listen)
        token = read_token(cfg.http.token, cfg.http.token_file)
        config.verify_http_token_for(listen, token is not None)
    except (ValueError, ConfigError) as exc:
        print(f"inspectd ui: {one_line(exc)}", file=sys.stderr)
        return EXIT_USAGE
    cfg = cfg.model_copy(update={"state_dir": state_dir})
    context = WebContext(cfg, state_dir, AccessGuard(token))
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, lambda *_: stopping.set())
    server = WebServer(context, host, port)
    try:
        server.start()
    except PermanentError as exc:
        print(f"inspectd ui: cannot start: {one_line(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except InspectdError as exc:
        print(f"inspectd ui: cannot start: {one_line(exc)}", file=sys.stderr)
        return EXIT_START_FAILED
    print(f"inspectd ui: {server.url} (state dir {state_dir}); Ctrl-C stops", flush=True)
    try:
        stopping.wait()
    finally:
        server.stop()
    return EXIT_STOPPED
