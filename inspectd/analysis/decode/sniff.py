"""Which format a file is, from its magic bytes, and what it looks like when it is none of ours.

The name is never trusted (an exporter writes TIFF into `.png` as readily as a web page
into `.jpg`), and a refusal says what kind of content it is, so an operator can tell a
wrong export setting from a broken file; it never quotes the content itself.
"""

from __future__ import annotations

import os
import re

from inspectd.errors import ImageDecodeError

SUPPORTED_FORMATS = ("PNG", "TIFF", "BMP", "JPEG")

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (PNG_SIGNATURE, "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"BM", "BMP"),
    *((signature, "TIFF") for signature in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")),
)
_OTHER_IMAGE_SIGNATURES: tuple[tuple[int, bytes, str], ...] = (
    (0, b"GIF87a", "a GIF image"),
    (0, b"GIF89a", "a GIF image"),
    (0, b"\x00\x00\x00\x0cjP  \r\n\x87\n", "a JPEG 2000 image"),
    (0, b"\xff\x4f\xff\x51", "a JPEG 2000 codestream"),
    (0, b"\x00\x00\x00\x0cJXL \r\n\x87\n", "a JPEG XL image"),
    (0, b"\xff\x0a", "a JPEG XL image"),
    (0, b"\x76\x2f\x31\x01", "an OpenEXR image"),
    (0, b"8BPS", "a Photoshop document"),
    (0, b"SIMPLE  =", "a FITS image"),
    (128, b"DICM", "a DICOM file"),
)
_OTHER_SIGNATURES: tuple[tuple[int, bytes, str], ...] = (
    (0, b"%PDF-", "a PDF document"),
    (0, b"PK\x03\x04", "a ZIP archive (or an Office document)"),
    (0, b"\x1f\x8b", "gzip-compressed data"),
    (0, b"BZh", "bzip2-compressed data"),
    (0, b"\xfd7zXZ\x00", "xz-compressed data"),
    (0, b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"),
    (0, b"\x28\xb5\x2f\xfd", "zstd-compressed data"),
    (0, b"\x7fELF", "an ELF executable"),
    (0, b"SQLite format 3\x00", "an SQLite database"),
)
_IMAGE_SUFFIXES = frozenset(
    {".png", ".tif", ".tiff", ".bmp", ".jpg", ".jpeg", ".jpe", ".jfif", ".dib", ".gif", ".webp"}
)


def sniff_format(data: bytes, source: str) -> str:
    """One of SUPPORTED_FORMATS, from magic bytes; otherwise raise saying what the file is.

    Example:
        >>> sniff_format(b"II*\\x00" + bytes(8), "field.png")
        'TIFF'
    """
    for signature, format_name in _SIGNATURES:
        if data.startswith(signature):
            return format_name
    for signature, format_name in _SIGNATURES:
        if len(data) < len(signature) and signature.startswith(data):
            msg = (
                f"truncated {format_name} file: only {len(data)} byte(s), too short to hold "
                f"the {format_name} signature"
            )
            raise ImageDecodeError(source, msg)
    looks_like, is_image = _describe_content(data)
    suffix = os.path.splitext(source)[1].lower()
    named = f" despite its '{suffix}' name" if suffix in _IMAGE_SUFFIXES else ""
    supported = ", ".join(SUPPORTED_FORMATS)
    if is_image:
        msg = (
            f"unsupported image format: the content is {looks_like}{named}; supported: {supported}"
        )
    else:
        msg = (
            f"not an image: the content is {looks_like}{named}; "
            f"supported formats (recognised by content): {supported}"
        )
    raise ImageDecodeError(source, msg)


def _describe_content(data: bytes) -> tuple[str, bool]:
    """What unsupported content looks like, and whether it is some other image format."""
    for offset, signature, name in _OTHER_IMAGE_SIGNATURES:
        if data[offset : offset + len(signature)] == signature:
            return name, True
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "a WebP image", True
    if data[4:8] == b"ftyp":
        if data[8:12] in (b"avif", b"avis", b"heic", b"heix", b"mif1", b"msf1"):
            return "an HEIF/AVIF image", True
        return "an MP4/QuickTime media file", False
    if re.match(rb"P[1-7][ \t\r\n]", data[:3]):
        return "a Netpbm (PBM/PGM/PPM) image", True
    for offset, signature, name in _OTHER_SIGNATURES:
        if data[offset : offset + len(signature)] == signature:
            return name, False
    text = _describe_text(data[:512])
    if text:
        return text, False
    return "unrecognised binary data", False


def _describe_text(sample: bytes) -> str | None:
    if b"\x00" in sample:
        return None
    try:
        text = sample.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(sample) - 3:  # not just a character cut at the sample's end
            return None
        text = sample[: exc.start].decode("utf-8")
    printable = sum(char.isprintable() or char in "\t\n\r\f\v\ufeff" for char in text)
    if not text or printable < 0.95 * len(text):
        return None
    head = text.lstrip("\ufeff \t\r\n").lower()
    if head.startswith(("<!doctype html", "<html")):
        kind = "an HTML page"
    elif head.startswith(("<?xml", "<svg")):
        kind = "an XML document"
    elif head.startswith(("{", "[")):
        kind = "JSON-like text"
    else:
        kind = "plain text"
    # The kind only, never a quote: a reason is published and kept, and the file (a link to
    # a secret, say) may hold what must not leave the station.
    return kind if text.strip() else "blank text (only whitespace)"
