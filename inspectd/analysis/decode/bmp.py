"""BMP header and structure: the info header's size and a check that the pixel array fits.

Given a cut BMP, OpenCV logs "Unexpected end of input stream" and returns nothing; the
declared extent names the cause ("truncated") before it runs. RLE streams are not walked:
damage there OpenCV reports itself, in a log line that `opencv.py` captures.
"""

from __future__ import annotations

import struct

from inspectd.analysis.decode.layout import FieldLayout, Layout

# BMP compressions OpenCV decodes: BI_RGB, BI_RLE8, BI_RLE4, BI_BITFIELDS, BI_ALPHABITFIELDS.
_BMP_COMPRESSIONS = {0: "none", 1: "RLE8", 2: "RLE4", 3: "bitfields", 6: "alpha bitfields"}
_BMP_INFO_HEADER_SIZES = (12, 40, 52, 56, 64, 108, 124)


def read_layout(data: bytes) -> Layout:
    """Info-header size and a check that the pixel array fits in the file.

    Example:
        >>> import cv2, numpy as np
        >>> bmp = cv2.imencode(".bmp", np.zeros((20, 30), np.uint8))[1].tobytes()
        >>> read_layout(bmp).fields
        (FieldLayout(width_px=30, height_px=20, declared_bits=None),)
        >>> read_layout(bmp[:-100]).problem
        'truncated BMP: 30x20 at 8 bits needs 1,716 bytes, the file has 1,618'
    """
    size = len(data)
    if size < 18:
        return Layout("BMP", (), f"truncated BMP: only {size} bytes, the header needs 26 or more")
    (pixel_offset,) = struct.unpack_from("<I", data, 10)
    (header_size,) = struct.unpack_from("<I", data, 14)
    if header_size not in _BMP_INFO_HEADER_SIZES:
        return Layout("BMP", (), f"corrupt BMP: unknown info-header size {header_size}")
    header_end = 14 + min(header_size, 40)
    if size < header_end:
        return Layout(
            "BMP", (), f"truncated BMP: the file ends inside the {header_size}-byte info header"
        )
    if header_size == 12:  # OS/2 BITMAPCOREHEADER
        width, height, _planes, bits_per_px = struct.unpack_from("<HHHH", data, 18)
        compression = 0
    else:
        width, height, _planes, bits_per_px, compression = struct.unpack_from("<iiHHI", data, 18)
    rows = abs(height)
    if width <= 0 or rows == 0:
        return Layout("BMP", (), f"corrupt BMP: header declares an invalid size {width}x{height}")
    field = FieldLayout(width, rows)

    def layout(problem: str | None) -> Layout:
        return Layout("BMP", (field,), problem)

    if bits_per_px not in (1, 4, 8, 16, 24, 32):
        return layout(f"corrupt BMP: {bits_per_px} bits per pixel")
    if compression not in _BMP_COMPRESSIONS:
        kind = {4: "embedded JPEG", 5: "embedded PNG"}.get(compression, f"type {compression}")
        return layout(f"unsupported BMP compression ({kind})")
    if pixel_offset < 14 + header_size or pixel_offset >= size:
        return layout(
            f"truncated BMP: pixel data offset {pixel_offset} is outside the file ({size} bytes)"
        )
    if compression in (0, 3, 6):
        row_bytes = (width * bits_per_px + 31) // 32 * 4
        # The last row's padding is sometimes left out by writers; its pixels are not.
        needed = pixel_offset + row_bytes * (rows - 1) + (width * bits_per_px + 7) // 8
        if needed > size:
            return layout(
                f"truncated BMP: {width}x{rows} at {bits_per_px} bits needs {needed:,} bytes, "
                f"the file has {size:,}"
            )
    return layout(None)
