"""TIFF pages: the facts each page's decoding depends on, read from tifffile and type-checked.

tifffile hands back whatever a corrupt tag holds (bytes for a size, a tuple for the
photometric), so every fact is checked once here and nothing later trusts the raw page.
Thumbnails and masks are not fields of view and are left out; a page that cannot become
8/16-bit grey, or whose data lies past the end of the file, is refused.
"""

from __future__ import annotations

import logging
import lzma
import struct
import zlib
from dataclasses import dataclass

import numpy as np
import tifffile

from inspectd.errors import ImageDecodeError

logger = logging.getLogger(__name__)

# What tifffile's pure-Python parser and its codecs raise on corrupt tags, offsets and
# streams. Seen under fuzzing: zlib.error, TypeError, ValueError, IndexError,
# ZeroDivisionError, OverflowError, and imagecodecs' *Error classes (RuntimeError
# subclasses). Documented by tifffile: KeyError / NotImplementedError for a codec it lacks,
# struct.error, EOFError and OSError from short reads. Anything else still reaches the
# final guard in the public functions.
TIFFFILE_ERRORS = (
    tifffile.TiffFileError,
    ValueError,
    KeyError,
    IndexError,
    TypeError,
    struct.error,
    OverflowError,
    NotImplementedError,
    zlib.error,
    lzma.LZMAError,
    EOFError,
    OSError,
    RuntimeError,
    ZeroDivisionError,
)

_PHOTOMETRIC_NAMES = {0: "MINISWHITE", 1: "MINISBLACK", 2: "RGB", 3: "PALETTE", 6: "YCBCR"}
_SAMPLE_FORMAT_NAMES = {
    2: "signed integer",
    3: "floating-point",
    5: "complex integer",
    6: "complex floating-point",
}
_TIFF_SUBFILE_REDUCED = 1  # a thumbnail / pyramid level, not a field of view
_TIFF_SUBFILE_MASK = 4  # a transparency mask
_TIFF_MAX_SAMPLE_VALUE = 281


@dataclass(frozen=True)
class TiffPage:
    """The facts about one page that decoding depends on, read once and type-checked."""

    index: int
    page: tifffile.TiffPage
    width_px: int
    height_px: int
    depth: int
    bits: int
    sample_format: int
    photometric: int
    samples: int
    planar_separate: bool
    compression: int
    predictor: int
    extra_samples: tuple[int, ...]
    subfile_type: int
    data_extents: tuple[tuple[int, int], ...]
    max_sample_value: int | None

    @property
    def is_field(self) -> bool:
        return not self.subfile_type & (_TIFF_SUBFILE_REDUCED | _TIFF_SUBFILE_MASK)


def tifffile_reason(problem: str | None, doing: str, exc: BaseException) -> str:
    """A structural problem found by our own walk explains a tifffile failure best.

    Example:
        >>> tifffile_reason(None, "opening", ValueError("bad tag"))
        'corrupt TIFF: tifffile failed opening (ValueError: bad tag)'
    """
    if problem:
        return problem
    return f"corrupt TIFF: tifffile failed {doing} ({type(exc).__name__}: {exc})"


def read_field_pages(
    tif: tifffile.TiffFile, ifd_count: int, problem: str | None, source: str
) -> list[TiffPage]:
    """Every full-resolution page (thumbnails and masks skipped), or raise.

    `ifd_count` and `problem` come from `tiff_structure.walk_ifds`: tifffile must read as
    many pages as the walk found directories, and the walk's problem is the better reason.

    Example:
        >>> import io, numpy as np
        >>> buffer = io.BytesIO()
        >>> tifffile.imwrite(buffer, np.zeros((20, 30), np.uint16))
        >>> with tifffile.TiffFile(io.BytesIO(buffer.getvalue())) as tif:
        ...     [page] = read_field_pages(tif, 1, None, "a.tif")
        >>> page.width_px, page.height_px, page.bits
        (30, 20, 16)
    """
    tif.pages.useframes = False  # full TiffPage objects: shape and offsets per page
    try:
        page_count = len(tif.pages)
        raw_pages = [(index, tif.pages[index]) for index in range(page_count)]
    except TIFFFILE_ERRORS as exc:
        raise ImageDecodeError(source, tifffile_reason(problem, "reading a page", exc)) from exc
    if not problem and page_count != ifd_count:
        msg = f"corrupt TIFF: tifffile read {page_count} of the {ifd_count} page directories"
        raise ImageDecodeError(source, msg)
    pages = []
    for index, raw_page in raw_pages:
        if not isinstance(raw_page, tifffile.TiffPage):
            msg = problem or f"corrupt TIFF: page {index} could not be read"
            raise ImageDecodeError(source, msg)
        page = _read_page(raw_page, index, source)
        if page.is_field:
            pages.append(page)
        else:
            logger.debug(
                "%s: skipping TIFF page %d (subfile type %d)", source, index, page.subfile_type
            )
    if not pages:
        msg = problem or "corrupt TIFF: no full-resolution page (only thumbnails or masks)"
        raise ImageDecodeError(source, msg)
    return pages


def _read_page(page: tifffile.TiffPage, index: int, source: str) -> TiffPage:
    def integer(name: str, value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int | np.integer):
            msg = f"corrupt TIFF: page {index} has an invalid {name} ({value!r:.40})"
            raise ImageDecodeError(source, msg)
        return int(value)

    def integers(name: str, values: object) -> tuple[int, ...]:
        if not isinstance(values, tuple | list | np.ndarray):
            values = (values,)
        return tuple(integer(name, value) for value in values)

    bits = page.bitspersample
    if isinstance(bits, tuple):
        bits = bits[0] if len(set(bits)) == 1 else -1  # -1: refused as mixed widths
    max_sample_tag = page.tags.get(_TIFF_MAX_SAMPLE_VALUE)
    max_sample_value = None
    if max_sample_tag is not None:
        max_values = integers("MaxSampleValue", max_sample_tag.value)
        max_sample_value = max(max_values) if max_values else None
    offsets = integers("StripOffsets", page.dataoffsets)
    counts = integers("StripByteCounts", page.databytecounts)
    return TiffPage(
        index=index,
        page=page,
        width_px=integer("ImageWidth", page.imagewidth),
        height_px=integer("ImageLength", page.imagelength),
        depth=integer("ImageDepth", page.imagedepth),
        bits=integer("BitsPerSample", bits),
        sample_format=integer("SampleFormat", page.sampleformat),
        photometric=integer("PhotometricInterpretation", page.photometric),
        samples=integer("SamplesPerPixel", page.samplesperpixel),
        planar_separate=integer("PlanarConfiguration", page.planarconfig) == 2,
        compression=integer("Compression", page.compression),
        predictor=integer("Predictor", page.predictor),
        extra_samples=integers("ExtraSamples", page.extrasamples),
        subfile_type=integer("NewSubfileType", page.subfiletype),
        data_extents=tuple(zip(offsets, counts, strict=False)),
        max_sample_value=max_sample_value,
    )


def check_page(page: TiffPage, file_size: int, source: str) -> None:
    """Refuse what cannot become 8/16-bit grey, and pages whose data lies past the file's end.

    Example:
        >>> import io, numpy as np
        >>> buffer = io.BytesIO()
        >>> tifffile.imwrite(buffer, np.zeros((20, 30), np.float32))
        >>> with tifffile.TiffFile(io.BytesIO(buffer.getvalue())) as tif:
        ...     [page] = read_field_pages(tif, 1, None, "f.tif")
        ...     check_page(page, len(buffer.getvalue()), "f.tif")
        Traceback (most recent call last):
        ...
        inspectd.errors.ImageDecodeError: f.tif: unsupported TIFF page 0: 32-bit floating-point samples; inspectd analyses 8- or 16-bit unsigned grey levels (there is no fixed scale to convert them to), re-export the image as 8/16-bit
    """
    problem = _unsupported(page)
    if problem:
        msg = f"unsupported TIFF page {page.index}: {problem}"
        raise ImageDecodeError(source, msg)
    extents = [(offset, count) for offset, count in page.data_extents if count > 0]
    if not extents:
        msg = f"corrupt TIFF: page {page.index} has no image data"
        raise ImageDecodeError(source, msg)
    for offset, count in extents:
        if offset + count > file_size:
            msg = (
                f"truncated TIFF: page {page.index} image data (bytes {offset}-{offset + count}) "
                f"runs past the end of the file ({file_size} bytes)"
            )
            raise ImageDecodeError(source, msg)


def _unsupported(page: TiffPage) -> str | None:
    """Why a page cannot become 8/16-bit grey, or None when it can."""
    if page.depth > 1:
        return f"a 3-D volume ({page.depth} planes deep)"
    if page.bits < 0:
        return "samples of different bit widths"
    if page.sample_format != 1:
        kind = _SAMPLE_FORMAT_NAMES.get(page.sample_format, f"sample format {page.sample_format}")
        return (
            f"{page.bits}-bit {kind} samples; inspectd analyses 8- or 16-bit unsigned grey "
            "levels (there is no fixed scale to convert them to), re-export the image as 8/16-bit"
        )
    if not 1 <= page.bits <= 16:
        return f"{page.bits}-bit samples; only 1- to 16-bit unsigned integers are supported"
    if page.photometric not in _PHOTOMETRIC_NAMES:
        return f"colour model {page.photometric} (only grey, RGB, YCbCr and palette images)"
    name = _PHOTOMETRIC_NAMES[page.photometric]
    if page.samples < 1 or (page.photometric in (2, 6) and page.samples < 3):
        return f"colour model {name} with {page.samples} sample(s) per pixel"
    if page.photometric in (0, 1) and page.samples > 1:
        extra = page.extra_samples
        if len(extra) != page.samples - 1 or 0 in extra:  # 0 = unspecified, not alpha
            return f"grey image with {page.samples - 1} extra channel(s) that are not alpha"
    if page.photometric == 3:
        colormap = page.page.colormap
        if page.samples != 1 or colormap is None or np.shape(colormap) != (3, 1 << page.bits):
            return "palette image without a valid colour map"
    if page.page.dtype is None:
        return f"{page.bits}-bit samples in a layout tifffile cannot represent"
    return None
