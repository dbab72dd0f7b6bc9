"""TIFF decoding: every full-resolution page a grey field, 8/16-bit kept, truncation refused.

tifffile decodes what it can alone (none, zlib, LZMA; 1/8/16-bit, or any width with
`imagecodecs`); for LZW, PackBits and JPEG-in-TIFF without `imagecodecs` OpenCV's libtiff
takes over, and its values are brought back to what tifffile would return, so a 12-bit
camera TIFF reads 0..4095 with `bit_depth` 12 whichever decoder ran.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import logging
import threading
from collections.abc import Iterator

import cv2
import numpy as np
import tifffile

from inspectd.analysis.decode import opencv
from inspectd.analysis.decode.layout import FieldLayout, Layout, check_dimensions, significant_bits
from inspectd.analysis.decode.tiff_pages import (
    TIFFFILE_ERRORS,
    TiffPage,
    check_page,
    read_field_pages,
    tifffile_reason,
)
from inspectd.analysis.decode.tiff_structure import walk_ifds
from inspectd.errors import ImageDecodeError

logger = logging.getLogger(__name__)

_HAVE_IMAGECODECS = importlib.util.find_spec("imagecodecs") is not None
_decoding = threading.local()


class _TifffileLogToDebug(logging.Filter):
    """tifffile logs ERROR for every corrupt tag it skips; while we decode, the reason we
    raise says it better, so its records are demoted to our DEBUG (other threads' and other
    callers' tifffile logging is untouched)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(_decoding, "tiff", False):
            logger.debug("tifffile: %s", record.getMessage())
            return False
        return True


logging.getLogger("tifffile").addFilter(_TifffileLogToDebug())


@contextlib.contextmanager
def _tifffile_logs_demoted() -> Iterator[None]:
    _decoding.tiff = True
    try:
        yield
    finally:
        _decoding.tiff = False


def decode_tiff(data: bytes, source: str, max_pixels: int) -> list[tuple[np.ndarray, int]]:
    """(grey pixels, bit depth) for every full-resolution page; thumbnails and masks skipped.

    Example:
        >>> buffer = io.BytesIO()
        >>> tifffile.imwrite(buffer, np.full((2, 20, 30), 7, np.uint16))
        >>> [(pixels.shape, bits) for pixels, bits in decode_tiff(buffer.getvalue(), "a.tif", 10_000)]
        [((20, 30), 16), ((20, 30), 16)]
    """
    with _tifffile_logs_demoted():
        return _decode_fields(data, source, max_pixels)


def _decode_fields(data: bytes, source: str, max_pixels: int) -> list[tuple[np.ndarray, int]]:
    ifd_count, problem = walk_ifds(data)
    if problem and ifd_count == 0:
        raise ImageDecodeError(source, problem)
    try:
        tif = tifffile.TiffFile(io.BytesIO(data))
    except TIFFFILE_ERRORS as exc:
        raise ImageDecodeError(source, tifffile_reason(problem, "opening", exc)) from exc
    with tif:
        pages = read_field_pages(tif, ifd_count, problem, source)
        fields = tuple(FieldLayout(page.width_px, page.height_px) for page in pages)
        check_dimensions(Layout("TIFF", fields, problem), source, max_pixels)
        if problem:
            raise ImageDecodeError(source, problem)
        for page in pages:
            check_page(page, len(data), source)
        if all(_tifffile_can_decode(page) for page in pages):
            return [_decode_page(page, source) for page in pages]
        return _decode_with_opencv(data, pages, ifd_count, source)


def _tifffile_can_decode(page: TiffPage) -> bool:
    """tifffile alone decodes none, zlib and LZMA; LZW, PackBits, JPEG need imagecodecs."""
    if page.compression != 1 and page.compression not in tifffile.TIFF.DECOMPRESSORS:
        return False
    if page.predictor != 1 and page.predictor not in tifffile.TIFF.UNPREDICTORS:
        return False
    return page.bits in (1, 8, 16) or _HAVE_IMAGECODECS


def _decode_page(page: TiffPage, source: str) -> tuple[np.ndarray, int]:
    try:
        decoded = page.page.asarray()
    except TIFFFILE_ERRORS as exc:
        msg = f"corrupt TIFF: page {page.index} could not be decoded ({type(exc).__name__}: {exc})"
        raise ImageDecodeError(source, msg) from exc
    height, width, samples = page.height_px, page.width_px, page.samples
    if decoded.size != height * width * samples:
        msg = (
            f"corrupt TIFF: page {page.index} decoded to {decoded.size} samples, "
            f"expected {width}x{height}x{samples}"
        )
        raise ImageDecodeError(source, msg)
    if page.planar_separate and samples > 1:  # separate planes: (samples, h, w)
        pixels = np.moveaxis(decoded.reshape(samples, height, width), 0, -1)
    else:
        pixels = decoded.reshape(height, width, samples)
    grey = _samples_to_grey(pixels, page)
    return grey, significant_bits(grey, _declared_bits(page))


def _samples_to_grey(pixels: np.ndarray, page: TiffPage) -> np.ndarray:
    if page.photometric == 3:  # palette: grey of each colour-map entry
        colormap = np.asarray(page.page.colormap, dtype=np.float64)
        grey_lut = 0.299 * colormap[0] + 0.587 * colormap[1] + 0.114 * colormap[2]
        indices = np.minimum(pixels[..., 0].astype(np.intp), grey_lut.size - 1)
        if page.bits <= 8:
            return np.rint(grey_lut / 257.0).astype(np.uint8)[indices]
        return np.rint(grey_lut).astype(np.uint16)[indices]
    if pixels.dtype == np.bool_:  # bilevel
        grey = pixels[..., 0]
        if page.photometric == 0:
            grey = ~grey
        return grey.astype(np.uint8) * np.uint8(255)
    if pixels.dtype not in (np.uint8, np.uint16):
        pixels = pixels.astype(np.uint16 if page.bits > 8 else np.uint8)
    if page.photometric in (2, 6):  # tifffile returns YCbCr (JPEG) already as RGB
        return cv2.cvtColor(np.ascontiguousarray(pixels[..., :3]), cv2.COLOR_RGB2GRAY)
    grey = np.ascontiguousarray(pixels[..., 0])
    if page.photometric == 0:
        grey = ((1 << page.bits) - 1 - grey.astype(np.int64)).astype(grey.dtype)
    return grey


def _declared_bits(page: TiffPage) -> int | None:
    """BitsPerSample, narrowed by MaxSampleValue (cameras write 12-bit data in 16-bit TIFFs)."""
    if page.photometric == 3 or page.bits == 1:
        return None
    max_value = page.max_sample_value
    if max_value is not None and 0 < max_value < (1 << page.bits) - 1:
        return max_value.bit_length()
    return page.bits


def _decode_with_opencv(
    data: bytes, pages: list[TiffPage], ifd_count: int, source: str
) -> list[tuple[np.ndarray, int]]:
    """OpenCV's libtiff decodes LZW/PackBits/JPEG-in-TIFF when imagecodecs is not installed."""
    try:
        mats = opencv.decode(data, "TIFF", source, all_pages=True)
    except ImageDecodeError as exc:
        if _HAVE_IMAGECODECS:
            raise
        msg = (
            f"{exc.reason} (with the optional 'imagecodecs' package installed, tifffile "
            "decodes this TIFF's compression itself)"
        )
        raise ImageDecodeError(source, msg) from exc
    if len(mats) != ifd_count:
        msg = f"corrupt TIFF: OpenCV decoded {len(mats)} of {ifd_count} pages"
        raise ImageDecodeError(source, msg)
    fields = []
    for page in pages:
        field = FieldLayout(page.width_px, page.height_px)
        pixels = opencv.check_decoded(mats[page.index], field, f"TIFF page {page.index}", source)
        grey = _unscale_opencv(opencv.to_grey(pixels, "TIFF", source), page)
        fields.append((grey, significant_bits(grey, _declared_bits(page))))
    return fields


def _unscale_opencv(grey: np.ndarray, page: TiffPage) -> np.ndarray:
    """OpenCV shifts 9..15-bit samples up to fill 16 bits; tifffile returns them as stored.

    Shifting back (only when every shifted-in bit is zero) gives the same values whichever
    decoder ran, so a 12-bit camera TIFF is 0..4095 with `bit_depth` 12 either way.
    """
    if grey.dtype != np.uint16 or not 8 < page.bits < 16:
        return grey
    shift = 16 - page.bits
    if np.any(grey & np.uint16((1 << shift) - 1)):
        return grey
    return grey >> np.uint16(shift)
