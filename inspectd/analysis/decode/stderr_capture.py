"""Capturing what the C decoders print on file descriptor 2 while they run.

libjpeg and libpng report problems only by printing ("Corrupt JPEG data", "libpng
error: Not enough image data"), and OpenCV logs its own decoder failures the same way;
capturing them is the one way to turn those into a reason and to keep the CLI free of
decoder noise. The redirect is process-wide, so capturing blocks are serialised by a lock.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
import threading
from collections.abc import Iterator

# Lines that OpenCV, libpng, libjpeg or libtiff write; anything else captured while a decode
# runs came from another thread and is written back to stderr untouched.
_DECODER_LINE = re.compile(
    r"\[\s*(?:ERROR|WARN|INFO|DEBUG|FATAL|VERBOSE)\b|libpng|libtiff|TIFF|OpenCV|"
    r"Corrupt JPEG|Premature end|Not a JPEG|Invalid|Unsupported|Bogus|Warning|JPEG|"
    r"Huffman|Quantization|Improper|Inconsistent|Unknown|Wrong|Bad |>|where"
)
_OPENCV_LOG_PREFIX = re.compile(r"^\[\s*\w+:\d+@[\d.]+\]\s*(?:global\s+)?")
_STDERR_LOCK = threading.Lock()


@contextlib.contextmanager
def captured_stderr() -> Iterator[list[str]]:
    """Route file descriptor 2 to a temporary file for the block; yield the lines it got.

    The list is filled when the block ends. Without a stderr at all (a detached daemon)
    there is nothing to capture and the list stays empty.

    Example:
        >>> with captured_stderr() as lines:
        ...     _ = os.write(2, b"libpng warning: iCCP: known incorrect sRGB profile\\n")
        >>> lines
        ['libpng warning: iCCP: known incorrect sRGB profile']
    """
    lines: list[str] = []
    with _STDERR_LOCK:
        try:
            saved_fd = os.dup(2)
        except OSError:  # no stderr at all (detached daemon): nothing to capture
            yield lines
            return
        try:
            with tempfile.TemporaryFile() as sink:
                if sys.stderr is not None:
                    with contextlib.suppress(OSError, ValueError):
                        sys.stderr.flush()
                os.dup2(sink.fileno(), 2)
                try:
                    yield lines
                finally:
                    os.dup2(saved_fd, 2)
                    sink.seek(0)
                    lines.extend(sink.read().decode("utf-8", "replace").splitlines())
        finally:
            os.close(saved_fd)


def split_decoder_lines(lines: list[str]) -> list[str]:
    """Keep the decoder's lines (OpenCV's log prefix stripped); write the rest back to stderr.

    Another thread's output that landed in the capture is not ours to swallow.

    Example:
        >>> split_decoder_lines(["[ WARN:0@0.1] global loadsave.cpp:1390 imdecode_ can't read data"])
        ["loadsave.cpp:1390 imdecode_ can't read data"]
    """
    decoder_lines: list[str] = []
    foreign_lines: list[str] = []
    previous_was_decoder = False
    for line in lines:
        continuation = previous_was_decoder and (not line.strip() or line[:1] in " \t>")
        if continuation or _DECODER_LINE.match(line):
            if line.strip():
                decoder_lines.append(_OPENCV_LOG_PREFIX.sub("", line).strip())
            previous_was_decoder = True
        else:
            foreign_lines.append(line)
            previous_was_decoder = False
    if foreign_lines:
        with contextlib.suppress(OSError):
            os.write(2, ("\n".join(foreign_lines) + "\n").encode())
    return decoder_lines
