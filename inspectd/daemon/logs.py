"""Structured log lines (logfmt: `level=INFO logger=inspectd.daemon.app msg="..."`) on stderr.

journald adds its own timestamp, but the line carries one too so a plain file is readable.

A message may quote a file name or a reason that someone else chose, so every value goes
through `inspectd.escaping`: a newline, a carriage return, an ANSI escape or a name that is
not UTF-8 is shown escaped inside its value and can never start a forged log line. The
console format of the other commands (`ConsoleFormatter`) follows the same rule.

Example:
    >>> record = logging.LogRecord("inspectd.x", logging.WARNING, __file__, 1,
    ...                            "cannot read %s", ("a\\nlevel=INFO msg=forged",), None)
    >>> LogfmtFormatter().format(record).partition(" msg=")[2]
    '"cannot read a\\\\nlevel=INFO msg=forged"'
"""

from __future__ import annotations

import logging
import sys
from datetime import datetime, timezone

from inspectd.escaping import logfmt_value, printable

CONSOLE_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class LogfmtFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        moment = datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds")
        fields = [
            f"ts={moment.replace('+00:00', 'Z')}",
            f"level={logfmt_value(record.levelname)}",
            f"logger={logfmt_value(record.name)}",
            f"thread={logfmt_value(record.threadName)}",
            f"msg={logfmt_value(record.getMessage(), always_quote=True)}",
        ]
        if record.exc_info:
            fields.append(f"exc={logfmt_value(self.formatException(record.exc_info), always_quote=True)}")
        return " ".join(fields)


class ConsoleFormatter(logging.Formatter):
    """`CONSOLE_FORMAT` for a person at a terminal: the message on one printable line, a
    traceback indented below it (each line printable), so no text inside either can pass for
    a record of its own."""

    def __init__(self) -> None:
        super().__init__(CONSOLE_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        shown = logging.makeLogRecord(record.__dict__)  # other handlers see the record unchanged
        shown.msg, shown.args = printable(record.getMessage()), None
        shown.name = printable(record.name)
        shown.exc_text = None  # another handler's cached, unescaped traceback must not be reused
        return super().format(shown)

    def formatException(self, ei) -> str:  # noqa: N802 - logging's name
        return "\n".join("    " + printable(line) for line in super().formatException(ei).splitlines())

    def formatStack(self, stack_info: str) -> str:  # noqa: N802 - logging's name
        return "\n".join("    " + printable(line) for line in stack_info.splitlines())


def configure(level: str) -> None:
    """Replace the root handlers with one logfmt handler at `level` (the daemon)."""
    _install(level, LogfmtFormatter(), replace=True)


def configure_console(level: str) -> None:
    """One `ConsoleFormatter` handler at `level` on stderr (the other commands), unless the
    root logger has handlers already (an embedding program's, pytest's)."""
    _install(level, ConsoleFormatter(), replace=False)


def _install(level: str, formatter: logging.Formatter, *, replace: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    logging.basicConfig(level=level.upper(), handlers=[handler], force=replace)
