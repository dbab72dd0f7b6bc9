"""Structured log lines (logfmt: `level=INFO logger=inspectd.app msg="..."`) on stderr.

journald adds its own timestamp, but the line carries one too so a plain file is readable.
"""

from __future__ import annotations

import logging
import sys
from datetime import datetime, timezone


class LogfmtFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        moment = datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds")
        fields = [
            f"ts={moment.replace('+00:00', 'Z')}",
            f"level={record.levelname}",
            f"logger={record.name}",
            f"thread={record.threadName}",
            f"msg={_quote(record.getMessage())}",
        ]
        if record.exc_info:
            fields.append(f"exc={_quote(self.formatException(record.exc_info))}")
        return " ".join(fields)


def configure(level: str) -> None:
    """Replace the root handlers with one logfmt handler at `level`."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LogfmtFormatter())
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
