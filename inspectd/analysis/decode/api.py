"""The decode stage's entry points: read the file, apply the limits, dispatch on the format.

Every file takes the same path (see the package docstring), and one bad file becomes an
`ImageDecodeError`, never a crashed pipeline: third-party decoders raise arbitrary types
on corrupt data, so whatever escapes the format modules is translated at the end here.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat

import numpy as np

from inspectd.analysis.decode import bmp, jpeg, opencv, png
from inspectd.analysis.decode.layout import check_dimensions, significant_bits
from inspectd.analysis.decode.sniff import sniff_format
from inspectd.analysis.decode.tiff import decode_tiff
from inspectd.errors import ImageDecodeError
from inspectd.types import Frame

logger = logging.getLogger(__name__)

DEFAULT_MAX_PIXELS = 100_000_000
DEFAULT_MAX_FILE_BYTES = 1_000_000_000

_LAYOUT_READERS = {"PNG": png.read_layout, "JPEG": jpeg.read_layout, "BMP": bmp.read_layout}


def decode_file(
    path: str | os.PathLike[str],
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
) -> list[Frame]:
    """Decode an image file into one grey `Frame` per field (TIFF page), or raise.

    PNG, TIFF (8/16-bit, every page a separate field), BMP and JPEG, recognised by
    content. Colour becomes grey; 16-bit stays 16-bit. Raises `ImageDecodeError` (or
    `ImageTooLargeError` when the header declares more than `max_pixels` pixels in all,
    checked before decoding) for every file that cannot be decoded completely, including
    empty, truncated and corrupt files, non-images, and images with a side under
    `MIN_SIDE_PX` (16) pixels. The file is read once; `Frame.sha256` is of its bytes.

    Example:
        >>> import tempfile, cv2, numpy as np
        >>> path = tempfile.mkdtemp() + "/field.png"
        >>> _ = cv2.imwrite(path, np.full((32, 48), 7, np.uint16))
        >>> [frame] = decode_file(path)
        >>> frame.pixels.shape, frame.pixels.dtype.name, frame.bit_depth
        ((32, 48), 'uint16', 16)
    """
    _check_limits(max_pixels, max_file_bytes)
    source = str(path)
    data = _read_file(source, max_file_bytes)
    return decode_bytes(data, source, max_pixels=max_pixels, max_file_bytes=max_file_bytes)


def decode_bytes(
    data: bytes,
    source: str,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
) -> list[Frame]:
    """Decode an image held in memory (the daemon reads and hashes a file once).

    Same formats, limits and errors as `decode_file`; `source` names the image in
    `Frame.source` and in error messages.

    Example:
        >>> import cv2, numpy as np
        >>> ok, png = cv2.imencode(".png", np.zeros((20, 30, 3), np.uint8))
        >>> [frame] = decode_bytes(png.tobytes(), "cam0/0001.png")
        >>> frame.pixels.shape, frame.bit_depth, len(frame.sha256)
        ((20, 30), 8, 64)
        >>> decode_bytes(b"hello", "notes.png")
        Traceback (most recent call last):
        ...
        inspectd.errors.ImageDecodeError: notes.png: not an image: the content is plain text despite its '.png' name; supported formats (recognised by content): PNG, TIFF, BMP, JPEG
    """
    _check_limits(max_pixels, max_file_bytes)
    data = bytes(data)
    try:
        return _decode(data, source, max_pixels, max_file_bytes)
    except ImageDecodeError:
        raise
    except MemoryError as exc:
        msg = "not enough memory to decode the image"
        raise ImageDecodeError(source, msg) from exc
    except Exception as exc:
        # Final guard: known library errors are translated where they are raised; landing
        # here means a new one, and it must still become an ERROR verdict.
        logger.debug("%s: unexpected decoder failure", source, exc_info=True)
        msg = f"decoder failed unexpectedly ({type(exc).__name__}: {exc})"
        raise ImageDecodeError(source, msg) from exc


def _check_limits(max_pixels: int, max_file_bytes: int) -> None:
    """Limits come from validated config; a bad one is a caller bug, not a bad image."""
    if max_pixels <= 0 or max_file_bytes <= 0:
        msg = f"max_pixels and max_file_bytes must be positive, got {max_pixels}, {max_file_bytes}"
        raise ValueError(msg)


def _read_file(source: str, max_file_bytes: int) -> bytes:
    """The file's bytes, never more than `max_file_bytes` + 1 read.

    Opened non-blocking, so a FIFO (or a link to one) named like an image cannot hang the
    caller in open(); `fstat` on the open descriptor refuses anything but a regular file
    (a device such as /dev/zero would never end) before a byte is read.
    """
    try:
        fd = os.open(source, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except (OSError, ValueError) as exc:  # ValueError: a path with an embedded NUL
        msg = f"cannot read file: {getattr(exc, 'strerror', None) or exc}"
        raise ImageDecodeError(source, msg) from exc
    try:
        file_stat = os.fstat(fd)
        if not stat.S_ISREG(file_stat.st_mode):
            msg = "not a regular file"
            raise ImageDecodeError(source, msg)
        if file_stat.st_size > max_file_bytes:
            msg = _too_many_bytes(file_stat.st_size, max_file_bytes)
            raise ImageDecodeError(source, msg)
        # +1 so a file that grew after fstat is still caught by decode_bytes' size check.
        return _read_at_most(fd, max_file_bytes + 1, file_stat.st_size)
    except OSError as exc:
        msg = f"cannot read file: {exc.strerror or exc}"
        raise ImageDecodeError(source, msg) from exc
    finally:
        os.close(fd)


def _read_at_most(fd: int, limit: int, size_hint: int) -> bytes:
    """Up to `limit` bytes from `fd`: the expected size in one read, then small chunks."""
    chunks: list[bytes] = []
    total = 0
    want = min(size_hint + 1, limit)
    while total < limit:
        chunk = os.read(fd, max(1, min(want, limit - total, 0x7FFFF000)))
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
        want = 1 << 20
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _too_many_bytes(size_bytes: int, max_file_bytes: int) -> str:
    return (
        f"file is {size_bytes:,} bytes, over the limit of {max_file_bytes:,} bytes (max_file_bytes)"
    )


def _decode(data: bytes, source: str, max_pixels: int, max_file_bytes: int) -> list[Frame]:
    if not data:
        msg = "empty file (0 bytes)"
        raise ImageDecodeError(source, msg)
    if len(data) > max_file_bytes:
        raise ImageDecodeError(source, _too_many_bytes(len(data), max_file_bytes))
    format_name = sniff_format(data, source)
    sha256 = hashlib.sha256(data).hexdigest()
    if format_name == "TIFF":
        fields = decode_tiff(data, source, max_pixels)
    else:
        fields = [_decode_single(data, format_name, source, max_pixels)]
    frames = [
        Frame(pixels=pixels, source=source, field_index=index, bit_depth=bit_depth, sha256=sha256)
        for index, (pixels, bit_depth) in enumerate(fields)
    ]
    logger.debug("%s: decoded %s, %d field(s)", source, format_name, len(frames))
    return frames


def _decode_single(
    data: bytes, format_name: str, source: str, max_pixels: int
) -> tuple[np.ndarray, int]:
    """PNG, JPEG, BMP: header and structure checked in pure Python, then OpenCV decodes."""
    layout = _LAYOUT_READERS[format_name](data)
    if not layout.fields:
        raise ImageDecodeError(source, layout.problem or f"unreadable {format_name} header")
    check_dimensions(layout, source, max_pixels)
    if layout.problem:
        raise ImageDecodeError(source, layout.problem)
    [field] = layout.fields
    decoded = opencv.decode(data, format_name, source)
    pixels = opencv.check_decoded(decoded, field, format_name, source)
    pixels = opencv.to_grey(pixels, format_name, source)
    return pixels, significant_bits(pixels, field.declared_bits)
