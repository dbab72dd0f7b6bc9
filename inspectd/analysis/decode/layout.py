"""What a header declares: refusals that rest on it alone, and how far its bit depth is believed.

The pixel limit is the decompression-bomb guard: a 379 KiB PNG declaring 20000x20000
would make OpenCV allocate 808 MiB, so every format's header reader produces a `Layout`
and `check_dimensions` runs on it before a decoder does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from inspectd.errors import ImageDecodeError, ImageTooLargeError

# A micrograph field narrower than this cannot hold a particle or a pore worth measuring;
# refusing it also turns "1x1 placeholder written by a crashed exporter" into an ERROR verdict.
MIN_SIDE_PX = 16


@dataclass(frozen=True)
class FieldLayout:
    """What a header says about one field, read without decoding it."""

    width_px: int
    height_px: int
    declared_bits: int | None = None  # significant bits per sample, when the file says


@dataclass(frozen=True)
class Layout:
    """Header facts plus the first structural problem found (None when the file is whole)."""

    format_name: str
    fields: tuple[FieldLayout, ...]
    problem: str | None = None


def check_dimensions(layout: Layout, source: str, max_pixels: int) -> None:
    """Refuse more than `max_pixels` in all, or a side under `MIN_SIDE_PX`, before decoding.

    Example:
        >>> check_dimensions(Layout("PNG", (FieldLayout(64, 48),)), "a.png", max_pixels=10_000)
        >>> check_dimensions(Layout("PNG", (FieldLayout(640, 480),)), "b.png", max_pixels=10_000)
        Traceback (most recent call last):
        ...
        inspectd.errors.ImageTooLargeError: b.png: PNG header declares 640x480 = 307,200 pixels, over the limit of 10,000 (max_pixels); refused before decoding (decompression-bomb guard)
    """
    total_px = sum(field.width_px * field.height_px for field in layout.fields)
    if total_px > max_pixels:
        if len(layout.fields) == 1:
            [field] = layout.fields
            size = f"{field.width_px}x{field.height_px} = {total_px:,} pixels"
        else:
            size = f"{len(layout.fields)} pages, {total_px:,} pixels in all"
        msg = (
            f"{layout.format_name} header declares {size}, over the limit of "
            f"{max_pixels:,} (max_pixels); refused before decoding (decompression-bomb guard)"
        )
        raise ImageTooLargeError(source, msg)
    for index, field in enumerate(layout.fields):
        if field.width_px < MIN_SIDE_PX or field.height_px < MIN_SIDE_PX:
            where = f"page {index} is" if len(layout.fields) > 1 else "image is"
            msg = (
                f"{where} {field.width_px}x{field.height_px} pixels, smaller than the "
                f"{MIN_SIDE_PX}x{MIN_SIDE_PX} minimum for a micrograph field"
            )
            raise ImageDecodeError(source, msg)


def significant_bits(pixels: np.ndarray, declared_bits: int | None) -> int:
    """Bits that carry data: the file's own claim when the values fit in it, else the dtype's.

    The guarantee downstream may rely on is `pixels.max() < 2**bit_depth`, so a declared
    12 bits (TIFF BitsPerSample, PNG sBIT, JPEG precision) is only believed when true;
    a PNG whose sBIT-scaled samples fill 16 bits reports 16.

    Example:
        >>> significant_bits(np.array([0, 4095], np.uint16), 12)
        12
        >>> significant_bits(np.array([0, 65535], np.uint16), 12)
        16
    """
    container_bits = pixels.dtype.itemsize * 8
    if declared_bits and 0 < declared_bits < container_bits:
        if pixels.size and int(pixels.max()) < (1 << declared_bits):
            return declared_bits
    return container_bits
