"""Decode stage: image file bytes -> grey `Frame`s, or `ImageDecodeError` naming the cause.

Why not just `cv2.imread`: measured with OpenCV 5.0 it turns a truncated JPEG read from a
file into a full-size image whose lower part is flat grey (only a libjpeg warning on
stderr), returns None without a reason for truncated PNG/TIFF, drops a 16-bit TIFF to
8 bits unless read unchanged, reads only page 1 of a multi-page TIFF, and allocates
whatever a header declares (a 379 KiB PNG declaring 20000x20000 becomes 808 MiB).
So every file goes through the same steps, and a frame is either complete or refused:

1. sniff the format from magic bytes, never from the file name (`sniff.py`);
2. read the header with a small pure-Python reader (`png.py`, `jpeg.py`, `bmp.py`,
   `tiff_pages.py`) and refuse images over `max_pixels` or with a side under
   `MIN_SIDE_PX` before a single pixel is decoded (`layout.py`);
3. walk the file's structure (PNG chunks, CRCs and IEND; JPEG markers up to EOI; BMP pixel
   array extent; TIFF IFD chain in `tiff_structure.py` and strip/tile extents), so
   truncation is caught deterministically instead of being left to each decoder's leniency;
4. decode: OpenCV (`IMREAD_UNCHANGED`) for PNG, JPEG and BMP (`opencv.py`); tifffile for
   TIFF (`tiff.py`), falling back to OpenCV's libtiff for compressions tifffile cannot
   decode without the optional `imagecodecs` package (LZW, PackBits, JPEG-in-TIFF). The C
   decoders' stderr is captured (`stderr_capture.py`): libjpeg reports corrupt scan data
   only there, so "Corrupt JPEG data" becomes an error, and the CLI shows no decoder noise;
5. convert colour to grey (ITU-R 601 luma, OpenCV's weights) and keep 16-bit data at 16 bits.

`api.py` runs these steps; this module re-exports its public API.
"""

# cv2 and the two pre-split private names stay reachable here for
# tests/analysis/test_decode.py, which patches cv2.imdecode and drives the capture directly.
import cv2  # noqa: F401

from inspectd.analysis.decode.api import (
    DEFAULT_MAX_FILE_BYTES,
    DEFAULT_MAX_PIXELS,
    decode_bytes,
    decode_file,
)
from inspectd.analysis.decode.layout import MIN_SIDE_PX
from inspectd.analysis.decode.sniff import SUPPORTED_FORMATS
from inspectd.analysis.decode.stderr_capture import captured_stderr as _captured_stderr  # noqa: F401
from inspectd.analysis.decode.stderr_capture import split_decoder_lines as _split_decoder_lines  # noqa: F401
from inspectd.analysis.decode.tiff_structure import MAX_TIFF_PAGES

__all__ = [
    "DEFAULT_MAX_FILE_BYTES",
    "DEFAULT_MAX_PIXELS",
    "MAX_TIFF_PAGES",
    "MIN_SIDE_PX",
    "SUPPORTED_FORMATS",
    "decode_bytes",
    "decode_file",
]
