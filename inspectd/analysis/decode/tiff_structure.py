"""TIFF structure: walk the chain of image directories (IFDs) and check they lie in the file.

tifffile logs and stops at an IFD it cannot read, and reads a page whose strip offsets
are cut off as a page without data, which would silently drop pages of a truncated
multi-page TIFF; walking the chain here first makes that an error. Pure Python, reads
only directories, never pixel data.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

# A TIFF with more pages than this is not a set of fields of view (and walking a crafted
# IFD chain of millions of entries would stall the pipeline).
MAX_TIFF_PAGES = 10_000

# Bytes per value of each TIFF field type; types not listed are skipped, as tifffile does.
_TIFF_TYPE_BYTES = {
    1: 1,
    2: 1,
    3: 2,
    4: 4,
    5: 8,
    6: 1,
    7: 1,
    8: 2,
    9: 4,
    10: 8,
    11: 4,
    12: 8,
    13: 4,
    16: 8,
    17: 8,
    18: 8,
}


@dataclass(frozen=True)
class _TiffFlavour:
    """Classic TIFF or BigTIFF: widths of the IFD's parts."""

    byte_order: str
    header_size: int
    count_format: str  # entries in an IFD
    entry_format: str  # tag, type, count, value-or-offset
    offset_format: str  # next-IFD and value offsets

    @property
    def inline_bytes(self) -> int:
        return struct.calcsize(self.offset_format)


def walk_ifds(data: bytes) -> tuple[int, str | None]:
    """Count the top-level IFDs, checking each and its tag values lie inside the file.

    Returns the number of whole IFDs before the first problem, and that problem (None
    when the chain is whole).

    Example:
        >>> import io, numpy as np, tifffile
        >>> buffer = io.BytesIO()
        >>> tifffile.imwrite(buffer, np.zeros((20, 30), np.uint16))
        >>> tiff = buffer.getvalue()
        >>> walk_ifds(tiff)
        (1, None)
        >>> walk_ifds(tiff[:20])
        (0, 'truncated TIFF: page 0 directory at byte 8 runs past the end of the file (20 bytes)')
    """
    size = len(data)
    byte_order = "<" if data[:2] == b"II" else ">"
    (version,) = struct.unpack_from(byte_order + "H", data, 2)
    if version == 42:
        if size < 8:
            return 0, "truncated TIFF: the file ends inside the 8-byte header"
        flavour = _TiffFlavour(byte_order, 8, "H", "HHII", "I")
        (offset,) = struct.unpack_from(byte_order + "I", data, 4)
    else:  # 43: BigTIFF
        if size < 16:
            return 0, "truncated TIFF: the file ends inside the 16-byte BigTIFF header"
        offset_size, _reserved, offset = struct.unpack_from(byte_order + "HHQ", data, 4)
        if offset_size != 8:
            return 0, f"corrupt TIFF: BigTIFF offset size {offset_size}"
        flavour = _TiffFlavour(byte_order, 16, "Q", "HHQQ", "Q")
    seen: set[int] = set()
    while offset:
        page = len(seen)
        if offset in seen:
            return page, f"corrupt TIFF: the chain of pages loops back to byte {offset}"
        if page >= MAX_TIFF_PAGES:
            return page, f"unsupported TIFF: more than {MAX_TIFF_PAGES} pages"
        seen.add(offset)
        offset, problem = _check_ifd(data, offset, page, flavour)
        if problem:
            return page, problem
    if not seen:
        return 0, "corrupt TIFF: no image directory (IFD offset 0)"
    return len(seen), None


def _check_ifd(
    data: bytes, offset: int, page: int, flavour: _TiffFlavour
) -> tuple[int, str | None]:
    """Next IFD offset, or the reason this IFD (or a tag value it points to) is unusable.

    Any tag value past the end counts, not only strip offsets: a writer stores values
    after the pixels as often as before, so a cut through them is still a cut file.
    """
    size = len(data)
    order = flavour.byte_order
    count_size = struct.calcsize(flavour.count_format)
    entry_size = struct.calcsize(order + flavour.entry_format)
    where = f"page {page} directory at byte {offset}"
    if offset < flavour.header_size:
        return 0, f"corrupt TIFF: page {page} directory offset {offset} points into the header"
    if offset + count_size > size:
        return 0, f"truncated TIFF: {where} lies past the end of the file ({size} bytes)"
    (entries,) = struct.unpack_from(order + flavour.count_format, data, offset)
    if entries == 0:
        return 0, f"corrupt TIFF: {where} is empty"
    end = offset + count_size + entries * entry_size + flavour.inline_bytes
    if end > size:
        return 0, f"truncated TIFF: {where} runs past the end of the file ({size} bytes)"
    for entry in range(entries):
        entry_offset = offset + count_size + entry * entry_size
        tag, field_type, count, value_offset = struct.unpack_from(
            order + flavour.entry_format, data, entry_offset
        )
        value_bytes = _TIFF_TYPE_BYTES.get(field_type, 0) * count
        if value_bytes > flavour.inline_bytes and value_offset + value_bytes > size:
            return 0, (
                f"truncated TIFF: page {page} tag {tag} value (bytes {value_offset}-"
                f"{value_offset + value_bytes}) lies past the end of the file ({size} bytes)"
            )
    (next_offset,) = struct.unpack_from(
        order + flavour.offset_format, data, end - flavour.inline_bytes
    )
    return next_offset, None
