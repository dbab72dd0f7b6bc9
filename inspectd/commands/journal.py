"""`inspectd journal check|recover`: check the verdict journal, or salvage a damaged one.

    inspectd journal check   [--config FILE] [--state-dir DIR] [--full]
    inspectd journal recover [--config FILE] [--state-dir DIR] [--force]

The journal is `<state dir>/journal.sqlite3`; the state dir is found as `inspectd run` finds
it: `--state-dir` wins over the config file's `state_dir`, which wins over the built-in
default. `check` may run beside a running daemon; `recover` refuses to while one has the
journal open (stop it first), since it replaces the file.

Exit codes: `check` 0 sound (or no journal yet), 1 damaged, 3 the check could not run
(locked, unreadable); `recover` 0 recovered (or sound: nothing to do), 2 no journal there,
3 it could not (a daemon has it open, the new file cannot be written).
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
from pathlib import Path

EXIT_OK, EXIT_DAMAGED, EXIT_NO_JOURNAL, EXIT_FAILED = 0, 1, 2, 3


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "journal",
        description="Check the verdict journal (<state dir>/journal.sqlite3), or salvage what is readable of a "
                    "damaged one into a new journal with the daemon stopped.")
    actions = parser.add_subparsers(dest="journal_command", metavar="ACTION")
    actions.required = True
    check = actions.add_parser("check", help="check the journal's integrity (exit 0 sound, 1 damaged)")
    _add_location_options(check)
    check.add_argument("--full", action="store_true",
                       help="PRAGMA integrity_check (also compares indexes with their tables; slower) instead "
                            "of the quick_check the daemon runs at start")
    recover = actions.add_parser("recover", help="salvage what is readable of a damaged journal into a new one, "
                                                 "keeping the damaged file beside it (stop the daemon first)")
    _add_location_options(recover)
    recover.add_argument("--force", action="store_true", help="rebuild the journal even when it checks sound")
    return parser


def _add_location_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None, help="the daemon's YAML config, for its state_dir")
    parser.add_argument("--state-dir", default=None, metavar="DIR",
                        help="the daemon's state dir, holding journal.sqlite3 (wins over --config)")


def run(args: argparse.Namespace) -> int:
    # Imported here: the CLI builds every command's parser, and these pull in SQLite helpers
    # and the config model only when a journal command actually runs.
    from inspectd.daemon.journal import JOURNAL_FILE

    path = _state_dir(args) / JOURNAL_FILE
    if args.journal_command == "check":
        return _check(path, full=args.full)
    return _recover(path, force=args.force)


def _state_dir(args: argparse.Namespace) -> Path:
    if args.state_dir:
        return Path(args.state_dir)
    from inspectd import config

    return Path(config.load(args.config).state_dir)  # ConfigError: exit 2 by the CLI


def _check(path: Path, *, full: bool) -> int:
    from inspectd.daemon.journal import JournalError, find_damage, recovery_command

    try:
        problem = find_damage(path, full=full, lock_timeout_s=5.0)
    except JournalError as exc:
        print(f"inspectd journal check: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if problem is not None:
        print(f"journal {path} is damaged ({problem}); with the daemon stopped, `{recovery_command(path)}` "
              "salvages what is readable")
        return EXIT_DAMAGED
    if not path.exists():
        print(f"journal {path}: none yet (a daemon creates it at its first start)")
        return EXIT_OK
    print(f"journal {path} is sound{_describe(path)}")
    return EXIT_OK


def _recover(path: Path, *, force: bool) -> int:
    from inspectd.daemon.journal import JournalError
    from inspectd.daemon.journal_recovery import recover

    if not path.is_file():
        print(f"inspectd journal recover: no journal at {path} (wrong --state-dir?)", file=sys.stderr)
        return EXIT_NO_JOURNAL
    try:
        report = recover(path, force=force)
    except JournalError as exc:
        print(f"inspectd journal recover: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(report.summary() if report.kept_as is not None or force else
          f"{report.summary()} (--force rebuilds it anyway)")
    return EXIT_OK


def _describe(path: Path) -> str:
    """Epoch, last seq and rows of a sound journal, read without writing anything."""
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=5.0)
        try:
            meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
            rows = conn.execute("SELECT COUNT(*) FROM verdicts").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.Error:
        return ""
    return f" (epoch {meta.get('epoch')}, last seq {meta.get('last_seq')}, {rows} verdicts kept)"
