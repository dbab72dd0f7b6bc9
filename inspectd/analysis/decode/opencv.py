"""Decoding with OpenCV: `IMREAD_UNCHANGED` so 16-bit stays 16-bit, stderr turned into reasons.

Used for PNG, JPEG and BMP, and for TIFF compressions tifffile cannot decode alone.
Every call runs under `captured_stderr`, and each format needs it: libjpeg's
"Corrupt JPEG data" / "Premature end" warnings are the only sign of a damaged scan in a
structurally whole file (the image comes back partly garbage), libpng's errors
("Not enough image data", "incorrect data check") come from inside the zlib stream that
the chunk walk does not inflate and are the only reason given, and OpenCV's BMP reader
("Unexpected end of input stream") and libtiff ("Using code not yet in table"), through
OpenCV's log, report failures the same way.
"""

from __future__ import annotations

import logging

import cv2
import numpy as np

from inspectd.analysis.decode.layout import FieldLayout
from inspectd.analysis.decode.stderr_capture import captured_stderr, split_decoder_lines
from inspectd.errors import ImageDecodeError

logger = logging.getLogger(__name__)

# libjpeg prints these and still returns an image with garbage or grey where data is bad.
_JPEG_CORRUPTION_PREFIXES = ("Corrupt JPEG data", "Premature end of JPEG file")


def decode(data: bytes, format_name: str, source: str, *, all_pages: bool = False):
    """cv2.imdecode (or imdecodemulti: a list of every page), or raise with the decoder's words.

    Example:
        >>> png = cv2.imencode(".png", np.zeros((20, 30), np.uint16))[1].tobytes()
        >>> pixels = decode(png, "PNG", "a.png")
        >>> pixels.shape, pixels.dtype.name
        ((20, 30), 'uint16')
    """
    buffer = np.frombuffer(data, dtype=np.uint8)
    result = None
    failure: cv2.error | None = None
    with captured_stderr() as captured:
        try:
            if all_pages:
                ok, mats = cv2.imdecodemulti(buffer, cv2.IMREAD_UNCHANGED)
                result = list(mats) if ok else None
            else:
                result = cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED)
        except cv2.error as exc:
            failure = exc
    messages = split_decoder_lines(captured)
    if messages:
        logger.debug("%s: %s decoder said: %s", source, format_name, " | ".join(messages))
    if failure is not None or result is None:
        said = f": {'; '.join(messages)[:300]}" if messages else ""
        if failure is not None and not said:
            said = f": {str(failure).strip()[:300]}"
        msg = f"corrupt {format_name}: OpenCV could not decode the image data{said}"
        raise ImageDecodeError(source, msg) from failure
    if format_name == "JPEG":
        corruption = [line for line in messages if line.startswith(_JPEG_CORRUPTION_PREFIXES)]
        if corruption:
            msg = f"corrupt JPEG: libjpeg reported {corruption[0]!r} (the image would be partly garbage)"
            raise ImageDecodeError(source, msg)
    return result


def check_decoded(
    pixels: np.ndarray, field: FieldLayout, format_name: str, source: str
) -> np.ndarray:
    """The decoder must agree with the header the limits were checked against.

    Example:
        >>> check_decoded(np.zeros((20, 30), np.uint8), FieldLayout(30, 20), "PNG", "a.png").shape
        (20, 30)
    """
    if pixels.shape[:2] != (field.height_px, field.width_px):
        msg = (
            f"{format_name} decoder produced {pixels.shape[1]}x{pixels.shape[0]} pixels but the "
            f"header declares {field.width_px}x{field.height_px}"
        )
        raise ImageDecodeError(source, msg)
    if pixels.dtype not in (np.uint8, np.uint16):
        msg = f"{format_name} decoded to {pixels.dtype} samples; only 8- and 16-bit are supported"
        raise ImageDecodeError(source, msg)
    return pixels


def to_grey(pixels: np.ndarray, format_name: str, source: str) -> np.ndarray:
    """OpenCV returns grey as 2-D and colour as BGR or BGRA; grey is ITU-R 601 luma.

    Example:
        >>> to_grey(np.full((2, 2, 3), (0, 0, 255), np.uint8), "PNG", "red.png")[0, 0]
        np.uint8(76)
    """
    if pixels.ndim == 2:
        return pixels
    channels = pixels.shape[2] if pixels.ndim == 3 else 0
    if channels == 1:
        return np.ascontiguousarray(pixels[..., 0])
    if channels == 3:
        return cv2.cvtColor(pixels, cv2.COLOR_BGR2GRAY)
    if channels == 4:
        return cv2.cvtColor(pixels, cv2.COLOR_BGRA2GRAY)
    msg = f"{format_name} decoded to an unexpected array shape {pixels.shape}"
    raise ImageDecodeError(source, msg)
