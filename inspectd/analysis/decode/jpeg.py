"""JPEG header and structure: the SOFn size and a marker walk through every scan up to EOI.

A JPEG cut anywhere ends inside a segment or inside entropy-coded data, never at an EOI
marker (0xFF is byte-stuffed in scans), so "no EOI" is an exact truncation test. In
memory OpenCV may refuse the cut file, but read from a file it returns a full-size image
with a grey lower part, so this does not rely on the decoder. Damage inside a scan that
keeps the structure whole only libjpeg sees; `opencv.py` turns its warning into an error.
"""

from __future__ import annotations

import struct

from inspectd.analysis.decode.layout import FieldLayout, Layout

# JPEG start-of-frame markers (C4 DHT, C8 JPG and CC DAC share the range but are not frames).
_JPEG_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_JPEG_SOS = 0xDA
_JPEG_EOI = 0xD9


def read_layout(data: bytes) -> Layout:
    """SOFn size and precision, and whether every segment and scan is whole up to EOI.

    Example:
        >>> import cv2, numpy as np
        >>> jpeg = cv2.imencode(".jpg", np.zeros((20, 30), np.uint8))[1].tobytes()
        >>> read_layout(jpeg).fields
        (FieldLayout(width_px=30, height_px=20, declared_bits=8),)
        >>> read_layout(jpeg[:-2]).problem[:46]
        'truncated JPEG: the file ends inside compresse'
    """
    size = len(data)
    field: FieldLayout | None = None
    scans = 0
    pos = 2  # after SOI

    def layout(problem: str | None) -> Layout:
        return Layout("JPEG", () if field is None else (field,), problem)

    while True:
        if pos >= size:
            return layout(f"truncated JPEG: the file ends at byte {size} without an EOI marker")
        if data[pos] != 0xFF:
            return layout(f"corrupt JPEG: expected a marker at byte {pos}")
        while pos < size and data[pos] == 0xFF:  # fill bytes may precede a marker
            pos += 1
        if pos >= size:
            return layout(f"truncated JPEG: the file ends at byte {size} without an EOI marker")
        marker = data[pos]
        pos += 1
        if marker == _JPEG_EOI:
            break
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # stand-alone markers
            continue
        if marker in (0x00, 0xD8):
            return layout(f"corrupt JPEG: unexpected marker 0xFF{marker:02X} at byte {pos - 2}")
        if pos + 2 > size:
            return layout(f"truncated JPEG: the file ends inside marker 0xFF{marker:02X}")
        (length,) = struct.unpack_from(">H", data, pos)
        if length < 2:
            return layout(
                f"corrupt JPEG: segment 0xFF{marker:02X} at byte {pos - 2} has length {length}"
            )
        if pos + length > size:
            return layout(
                f"truncated JPEG: segment 0xFF{marker:02X} at byte {pos - 2} runs past the end "
                f"of the file ({size} bytes)"
            )
        if marker in _JPEG_SOF_MARKERS:
            if field is not None:
                return layout("corrupt JPEG: more than one frame header (SOF)")
            if length < 8:
                return layout("corrupt JPEG: frame header (SOF) too short")
            precision, height, width, components = struct.unpack_from(">BHHB", data, pos + 2)
            if height == 0:
                return layout("unsupported JPEG: height defined later by a DNL marker")
            if width == 0 or components not in (1, 3, 4) or not 2 <= precision <= 16:
                return layout(
                    f"corrupt JPEG: frame header declares {width}x{height}, {components} "
                    f"component(s), {precision}-bit precision"
                )
            field = FieldLayout(width, height, precision)
        pos += length
        if marker == _JPEG_SOS:
            if field is None:
                return layout("corrupt JPEG: scan (SOS) before the frame header (SOF)")
            scans += 1
            pos = _skip_entropy_coded_data(data, pos)
            if pos < 0:
                return layout(
                    f"truncated JPEG: the file ends inside compressed scan {scans} "
                    f"(no EOI marker after {size} bytes)"
                )
    if field is None or scans == 0:
        return layout("corrupt JPEG: EOI reached with no frame header or scan")
    return layout(None)


def _skip_entropy_coded_data(data: bytes, pos: int) -> int:
    """Offset of the marker that ends a scan, or -1 when the data ends first.

    Inside a scan 0xFF is followed by 0x00 (a stuffed data byte), by RST0-7, or by more
    0xFF fill; anything else is the next marker. `bytes.find` keeps this at about one
    Python step per 256 bytes of scan.
    """
    size = len(data)
    while True:
        pos = data.find(b"\xff", pos)
        if pos < 0 or pos + 1 >= size:
            return -1
        following = data[pos + 1]
        if following == 0xFF:
            pos += 1
        elif following == 0x00 or 0xD0 <= following <= 0xD7:
            pos += 2
        else:
            return pos
