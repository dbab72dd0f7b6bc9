"""PNG header and structure: IHDR size, sBIT, and a chunk walk that finds truncation and bad CRCs.

libpng only notices a missing tail when it runs out of IDAT data, and a CRC error may
surface as anything from None to a wrong image, so this walk decides first; what it
cannot see (the zlib stream inside IDAT) libpng reports on stderr, which `opencv.py`
captures.
"""

from __future__ import annotations

import struct
import zlib

from inspectd.analysis.decode.layout import FieldLayout, Layout
from inspectd.analysis.decode.sniff import PNG_SIGNATURE

# Allowed bit depths per PNG colour type (PNG spec, table 11.1).
_PNG_BIT_DEPTHS = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}


def read_layout(data: bytes) -> Layout:
    """IHDR size, sBIT, and a chunk walk: every CRC right, IDAT present, IEND reached.

    Example:
        >>> import cv2, numpy as np
        >>> png = cv2.imencode(".png", np.zeros((20, 30), np.uint8))[1].tobytes()
        >>> read_layout(png)
        Layout(format_name='PNG', fields=(FieldLayout(width_px=30, height_px=20, declared_bits=None),), problem=None)
        >>> read_layout(png[:-12]).problem
        'truncated PNG: the file ends at byte 87 before the IEND chunk'
    """
    size = len(data)
    view = memoryview(data)
    field: FieldLayout | None = None
    color_type = 0
    significant_bits: int | None = None
    idat_count = 0
    pos = len(PNG_SIGNATURE)

    def layout(problem: str | None) -> Layout:
        fields = () if field is None else (field,)
        if field is not None and significant_bits:
            fields = (FieldLayout(field.width_px, field.height_px, significant_bits),)
        return Layout("PNG", fields, problem)

    while True:
        if pos + 8 > size:
            return layout(f"truncated PNG: the file ends at byte {size} before the IEND chunk")
        length, chunk_type = struct.unpack_from(">I4s", data, pos)
        name = chunk_type.decode("latin-1")
        if length > 0x7FFFFFFF or not chunk_type.isalpha():
            return layout(f"corrupt PNG: invalid chunk header at byte {pos}")
        end = pos + 12 + length
        if end > size:
            return layout(
                f"truncated PNG: chunk {name!r} at byte {pos} runs past the end of the file "
                f"({size} bytes)"
            )
        (stored_crc,) = struct.unpack_from(">I", data, end - 4)
        if zlib.crc32(view[pos + 4 : end - 4]) != stored_crc:
            return layout(f"corrupt PNG: CRC mismatch in chunk {name!r} at byte {pos}")
        body = view[pos + 8 : end - 4]
        if field is None and chunk_type != b"IHDR":
            return layout(f"corrupt PNG: first chunk is {name!r}, not IHDR")
        if chunk_type == b"IHDR":
            if field is not None or length != 13:
                return layout("corrupt PNG: malformed or repeated IHDR chunk")
            width, height, bit_depth, color_type, compression, filter_method, interlace = (
                struct.unpack_from(">IIBBBBB", body)
            )
            problem = _check_ihdr(width, height, bit_depth, color_type)
            if problem or compression or filter_method or interlace > 1:
                return layout(problem or "corrupt PNG: invalid IHDR compression/filter/interlace")
            field = FieldLayout(width, height)
        elif chunk_type == b"sBIT" and length >= 1:
            channels = 1 if color_type in (0, 4) else 3
            significant_bits = max(body[:channels])
        elif chunk_type == b"IDAT":
            idat_count += 1
        elif chunk_type == b"IEND":
            break
        pos = end
    if idat_count == 0:
        return layout("corrupt PNG: no image data (no IDAT chunk)")
    return layout(None)


def _check_ihdr(width: int, height: int, bit_depth: int, color_type: int) -> str | None:
    if not (0 < width <= 0x7FFFFFFF and 0 < height <= 0x7FFFFFFF):
        return f"corrupt PNG: IHDR declares an invalid size {width}x{height}"
    if bit_depth not in _PNG_BIT_DEPTHS.get(color_type, ()):
        return f"corrupt PNG: invalid bit depth {bit_depth} for colour type {color_type}"
    return None
