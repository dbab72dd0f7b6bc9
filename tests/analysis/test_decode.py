"""Decode stage: real files written to tmp_path, decoded back; every bad input is refused.

Images come from OpenCV's and tifffile's own encoders; the few files no encoder writes
(palette PNG, sBIT PNG, a PNG bomb, hand-made TIFF headers) are assembled byte by byte.
"""

from __future__ import annotations

import hashlib
import io
import os
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile

from inspectd.analysis import decode as decode_module
from inspectd.analysis.decode import MIN_SIDE_PX, decode_bytes, decode_file
from inspectd.errors import ImageDecodeError, ImageTooLargeError

# ---------------------------------------------------------------------------------------
# Builders
# ---------------------------------------------------------------------------------------


def _micrograph(height: int = 96, width: int = 128, seed: int = 0) -> np.ndarray:
    """Smooth seeded texture with dark blobs: compresses like a micrograph, not like noise."""
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 256, (height, width), dtype=np.uint8)
    image = cv2.GaussianBlur(noise, (0, 0), 3)
    image = cv2.normalize(image, None, 20, 235, cv2.NORM_MINMAX)
    for _ in range(5):
        centre = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        cv2.circle(image, centre, int(rng.integers(3, 10)), 5, -1)
    return image


def _micrograph16(seed: int = 0) -> np.ndarray:
    base = _micrograph(seed=seed).astype(np.uint16) * 257
    return base + np.arange(base.shape[1], dtype=np.uint16)[None, :]  # low byte carries data


def _encode(extension: str, image: np.ndarray, *params: int) -> bytes:
    ok, encoded = cv2.imencode(extension, image, list(params))
    assert ok
    return encoded.tobytes()


def _tiff_bytes(image: np.ndarray, **kwargs) -> bytes:
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, image, **kwargs)
    return buffer.getvalue()


def _png_chunk(chunk_type: bytes, body: bytes) -> bytes:
    crc = zlib.crc32(chunk_type + body)
    return struct.pack(">I", len(body)) + chunk_type + body + struct.pack(">I", crc)


def _png(
    width: int,
    height: int,
    *,
    bit_depth: int,
    color_type: int,
    raw_rows: bytes,
    before_idat: tuple[bytes, ...] = (),
) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + b"".join(before_idat)
        + _png_chunk(b"IDAT", zlib.compress(raw_rows))
        + _png_chunk(b"IEND", b"")
    )


def _png_rows(image: np.ndarray) -> bytes:
    """Filter type 0 before every row; 16-bit samples big-endian as PNG stores them."""
    rows = image.astype(">u2") if image.dtype == np.uint16 else image
    return b"".join(b"\x00" + row.tobytes() for row in rows)


def _minimal_tiff(width: int, height: int, strip: bytes, *, bits: int = 8) -> bytes:
    """Little-endian baseline TIFF, one strip, tags as given (may lie about the size)."""
    entries = [
        (256, 4, 1, width),
        (257, 4, 1, height),
        (258, 3, 1, bits),
        (259, 3, 1, 1),
        (262, 3, 1, 1),
        (273, 4, 1, 0),  # patched below
        (277, 3, 1, 1),
        (278, 4, 1, height),
        (279, 4, 1, len(strip)),
    ]
    ifd_offset = 8
    data_offset = ifd_offset + 2 + 12 * len(entries) + 4
    ifd = struct.pack("<H", len(entries))
    for tag, kind, count, value in entries:
        value = data_offset if tag == 273 else value
        packed = struct.pack("<HH", value, 0) if kind == 3 else struct.pack("<I", value)
        ifd += struct.pack("<HHI", tag, kind, count) + packed
    ifd += struct.pack("<I", 0)
    return b"II*\x00" + struct.pack("<I", ifd_offset) + ifd + strip


def _write(tmp_path: Path, name: str, content: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(content)
    return path


def _decode_one(path: Path, **limits: int):
    frames = decode_file(path, **limits)
    assert len(frames) == 1
    frame = frames[0]
    assert frame.field_index == 0
    assert frame.source == str(path)
    assert frame.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert frame.pixels.ndim == 2
    return frame


def _reason(excinfo: pytest.ExceptionInfo[ImageDecodeError]) -> str:
    return excinfo.value.reason.lower()


# ---------------------------------------------------------------------------------------
# Round trips
# ---------------------------------------------------------------------------------------


def test_png_8bit_grey_round_trip(tmp_path: Path) -> None:
    image = _micrograph()
    frame = _decode_one(_write(tmp_path, "a.png", _encode(".png", image)))
    assert frame.pixels.dtype == np.uint8
    assert frame.bit_depth == 8
    np.testing.assert_array_equal(frame.pixels, image)


def test_png_16bit_grey_stays_16bit(tmp_path: Path) -> None:
    image = _micrograph16()
    frame = _decode_one(_write(tmp_path, "a16.png", _encode(".png", image)))
    assert frame.pixels.dtype == np.uint16
    assert frame.bit_depth == 16
    np.testing.assert_array_equal(frame.pixels, image)


def test_png_colour_and_alpha_become_grey(tmp_path: Path) -> None:
    grey = _micrograph()
    bgr = np.dstack([grey, 255 - grey, grey // 2])
    frame = _decode_one(_write(tmp_path, "rgb.png", _encode(".png", bgr)))
    np.testing.assert_array_equal(frame.pixels, cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY))

    bgra16 = np.dstack([bgr, np.full_like(grey, 128)]).astype(np.uint16) * 257
    frame = _decode_one(_write(tmp_path, "rgba16.png", _encode(".png", bgra16)))
    assert frame.pixels.dtype == np.uint16
    assert frame.bit_depth == 16
    np.testing.assert_array_equal(frame.pixels, cv2.cvtColor(bgra16, cv2.COLOR_BGRA2GRAY))


def test_palette_png_becomes_grey_of_palette_entries(tmp_path: Path) -> None:
    palette = np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0], [200, 200, 200]], dtype=np.uint8)
    indices = (np.arange(32 * 24).reshape(24, 32) % 4).astype(np.uint8)
    content = _png(
        32,
        24,
        bit_depth=8,
        color_type=3,
        raw_rows=_png_rows(indices),
        before_idat=(_png_chunk(b"PLTE", palette.tobytes()),),
    )
    frame = _decode_one(_write(tmp_path, "palette.png", content))
    grey_of_entry = cv2.cvtColor(palette[None, :, ::-1], cv2.COLOR_BGR2GRAY)[0]
    np.testing.assert_array_equal(frame.pixels, grey_of_entry[indices])
    assert frame.bit_depth == 8


def test_png_sbit_reports_12_bits_only_when_values_fit(tmp_path: Path) -> None:
    twelve_bit = (np.arange(40 * 30, dtype=np.uint16).reshape(30, 40) * 3) % 4096
    sbit = (_png_chunk(b"sBIT", bytes([12])),)
    raw = _png(40, 30, bit_depth=16, color_type=0, raw_rows=_png_rows(twelve_bit), before_idat=sbit)
    frame = _decode_one(_write(tmp_path, "raw12.png", raw))
    np.testing.assert_array_equal(frame.pixels, twelve_bit)
    assert frame.bit_depth == 12

    # Per the PNG spec the writer may scale 12-bit samples up to 16 bits: then 16 carry data.
    scaled = twelve_bit << 4
    raw = _png(40, 30, bit_depth=16, color_type=0, raw_rows=_png_rows(scaled), before_idat=sbit)
    frame = _decode_one(_write(tmp_path, "scaled12.png", raw))
    assert frame.bit_depth == 16
    assert int(frame.pixels.max()) < 2**frame.bit_depth


@pytest.mark.parametrize("compression", [None, "zlib"])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_tiff_round_trip_keeps_bit_depth(tmp_path: Path, dtype, compression) -> None:
    image = _micrograph() if dtype == np.uint8 else _micrograph16()
    path = _write(tmp_path, "a.tif", _tiff_bytes(image, compression=compression))
    frame = _decode_one(path)
    assert frame.pixels.dtype == dtype
    assert frame.bit_depth == 8 * np.dtype(dtype).itemsize
    np.testing.assert_array_equal(frame.pixels, image)


def test_tiff_written_by_opencv_lzw_16bit(tmp_path: Path) -> None:
    """OpenCV writes LZW; tifffile needs imagecodecs for it, so this exercises the fallback."""
    image = _micrograph16()
    path = tmp_path / "cv.tiff"
    assert cv2.imwrite(str(path), image)
    frame = _decode_one(path)
    assert frame.pixels.dtype == np.uint16
    np.testing.assert_array_equal(frame.pixels, image)


def test_multipage_tiff_gives_one_frame_per_page(tmp_path: Path) -> None:
    pages = [_micrograph16(seed) for seed in range(3)]
    path = tmp_path / "stack.tif"
    with tifffile.TiffWriter(path) as writer:
        for page in pages:
            writer.write(page, photometric="minisblack")
    frames = decode_file(path)
    assert [frame.field_index for frame in frames] == [0, 1, 2]
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    for frame, page in zip(frames, pages, strict=True):
        assert frame.sha256 == digest
        assert frame.bit_depth == 16
        np.testing.assert_array_equal(frame.pixels, page)


def test_multipage_tiff_written_by_opencv(tmp_path: Path) -> None:
    pages = [_micrograph(seed=seed) for seed in range(2)]
    path = tmp_path / "cvstack.tiff"
    assert cv2.imwritemulti(str(path), pages)
    frames = decode_file(path)
    assert len(frames) == 2
    for frame, page in zip(frames, pages, strict=True):
        np.testing.assert_array_equal(frame.pixels, page)


def test_tiff_thumbnail_pages_are_not_fields(tmp_path: Path) -> None:
    field = _micrograph()
    path = tmp_path / "with_thumb.tif"
    with tifffile.TiffWriter(path) as writer:
        writer.write(field)
        writer.write(field[::4, ::4].copy(), subfiletype=1)  # reduced-resolution image
    [frame] = decode_file(path)
    np.testing.assert_array_equal(frame.pixels, field)


def test_tiff_colour_models(tmp_path: Path) -> None:
    grey = _micrograph()
    rgb = np.dstack([grey, 255 - grey, grey // 2])
    frame = _decode_one(_write(tmp_path, "rgb.tif", _tiff_bytes(rgb, photometric="rgb")))
    np.testing.assert_array_equal(frame.pixels, cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))

    planar = _tiff_bytes(np.moveaxis(rgb, -1, 0), photometric="rgb", planarconfig="separate")
    frame = _decode_one(_write(tmp_path, "planar.tif", planar))
    np.testing.assert_array_equal(frame.pixels, cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))

    inverted = _tiff_bytes(grey, photometric="miniswhite")
    frame = _decode_one(_write(tmp_path, "white.tif", inverted))
    np.testing.assert_array_equal(frame.pixels, 255 - grey)

    bright = grey > 100
    frame = _decode_one(
        _write(tmp_path, "bilevel.tif", _tiff_bytes(bright, photometric="minisblack"))
    )
    np.testing.assert_array_equal(frame.pixels, np.where(bright, 255, 0))
    assert frame.bit_depth == 8
    # tifffile's default for bool is MINISWHITE (fax convention): a set bit is black.
    frame = _decode_one(_write(tmp_path, "fax.tif", _tiff_bytes(bright)))
    np.testing.assert_array_equal(frame.pixels, np.where(bright, 0, 255))


def test_tiff_max_sample_value_declares_12_bits(tmp_path: Path) -> None:
    image = (_micrograph().astype(np.uint16) * 16) + 7  # <= 4087
    content = _tiff_bytes(image, extratags=[(281, "H", 1, 4095, False)])
    frame = _decode_one(_write(tmp_path, "cam12.tif", content))
    assert frame.pixels.dtype == np.uint16
    assert frame.bit_depth == 12
    np.testing.assert_array_equal(frame.pixels, image)


def test_packed_12bit_tiff_gives_12bit_values(tmp_path: Path) -> None:
    """Packed 12-bit strips (two samples in three bytes), as some camera SDKs write them.

    Without imagecodecs OpenCV decodes this and scales it to 16 bits; either way the frame
    holds the stored 0..4095 values with bit_depth 12.
    """
    image = ((np.arange(40 * 48).reshape(40, 48) * 37) % 4096).astype(np.uint16)
    first, second = image[:, 0::2].astype(np.uint32), image[:, 1::2].astype(np.uint32)
    packed = np.stack([first >> 4, ((first & 0xF) << 4) | (second >> 8), second & 0xFF], axis=-1)
    content = _minimal_tiff(48, 40, packed.astype(np.uint8).tobytes(), bits=12)
    frame = _decode_one(_write(tmp_path, "packed12.tif", content))
    assert frame.pixels.dtype == np.uint16
    assert frame.bit_depth == 12
    np.testing.assert_array_equal(frame.pixels, image)


@pytest.mark.parametrize(
    ("dtype", "expected"),
    [(np.float32, "floating-point"), (np.int16, "signed integer"), (np.uint32, "32-bit")],
)
def test_tiff_sample_types_without_a_grey_scale_are_refused(
    tmp_path: Path, dtype, expected
) -> None:
    path = _write(tmp_path, "odd.tif", _tiff_bytes(_micrograph().astype(dtype)))
    with pytest.raises(ImageDecodeError) as excinfo:
        decode_file(path)
    assert expected in _reason(excinfo)


def test_bmp_grey_and_colour(tmp_path: Path) -> None:
    grey = _micrograph()
    frame = _decode_one(_write(tmp_path, "g.bmp", _encode(".bmp", grey)))
    np.testing.assert_array_equal(frame.pixels, grey)
    bgr = np.dstack([grey, 255 - grey, grey // 2])
    frame = _decode_one(_write(tmp_path, "c.bmp", _encode(".bmp", bgr)))
    np.testing.assert_array_equal(frame.pixels, cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY))


@pytest.mark.parametrize("progressive", [0, 1])
def test_jpeg_grey_and_colour(tmp_path: Path, progressive: int) -> None:
    grey = _micrograph()
    params = (cv2.IMWRITE_JPEG_QUALITY, 95, cv2.IMWRITE_JPEG_PROGRESSIVE, progressive)
    frame = _decode_one(_write(tmp_path, "g.jpg", _encode(".jpg", grey, *params)))
    assert frame.pixels.dtype == np.uint8
    assert frame.bit_depth == 8
    assert np.abs(frame.pixels.astype(int) - grey).mean() < 2.0

    bgr = np.dstack([grey, 255 - grey, grey // 2])
    content = _encode(".jpg", bgr, *params)
    frame = _decode_one(_write(tmp_path, "c.jpg", content))
    reference = cv2.cvtColor(
        cv2.imdecode(np.frombuffer(content, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2GRAY
    )
    np.testing.assert_array_equal(frame.pixels, reference)


def test_jpeg_with_restart_markers_and_trailing_bytes(tmp_path: Path) -> None:
    content = _encode(".jpg", _micrograph(), cv2.IMWRITE_JPEG_RST_INTERVAL, 2)
    frame = _decode_one(_write(tmp_path, "rst.jpg", content + b"\x00camera trailer"))
    assert frame.pixels.shape == (96, 128)


def test_format_comes_from_content_not_name(tmp_path: Path) -> None:
    image = _micrograph()
    frame = _decode_one(_write(tmp_path, "really_a_png.jpg", _encode(".png", image)))
    np.testing.assert_array_equal(frame.pixels, image)


def test_decode_bytes_matches_decode_file(tmp_path: Path) -> None:
    content = _tiff_bytes(np.stack([_micrograph16(0), _micrograph16(1)]), photometric="minisblack")
    path = _write(tmp_path, "s.tif", content)
    from_file = decode_file(path)
    from_memory = decode_bytes(content, str(path))
    assert len(from_file) == len(from_memory) == 2
    for a, b in zip(from_file, from_memory, strict=True):
        assert (a.source, a.field_index, a.bit_depth, a.sha256) == (
            b.source,
            b.field_index,
            b.bit_depth,
            b.sha256,
        )
        np.testing.assert_array_equal(a.pixels, b.pixels)


def test_real_coating_tile(real_tile_path: Path) -> None:
    frame = _decode_one(real_tile_path)
    reference = cv2.imread(str(real_tile_path), cv2.IMREAD_UNCHANGED)
    if reference.ndim == 3:
        reference = cv2.cvtColor(
            reference, cv2.COLOR_BGR2GRAY if reference.shape[2] == 3 else cv2.COLOR_BGRA2GRAY
        )
    np.testing.assert_array_equal(frame.pixels, reference)


# ---------------------------------------------------------------------------------------
# Bad inputs: each refused with ImageDecodeError naming the cause
# ---------------------------------------------------------------------------------------


def test_empty_file(tmp_path: Path) -> None:
    with pytest.raises(ImageDecodeError) as excinfo:
        decode_file(_write(tmp_path, "empty.png", b""))
    assert "empty" in _reason(excinfo)
    assert str(tmp_path / "empty.png") in str(excinfo.value)


@pytest.mark.parametrize("fraction", [0.0005, 0.003, 0.25, 0.5, 0.9, 0.999])
def test_truncated_png(tmp_path: Path, fraction: float) -> None:
    content = _encode(".png", _micrograph16())
    cut = max(1, int(len(content) * fraction))
    with pytest.raises(ImageDecodeError) as excinfo:
        decode_file(_write(tmp_path, "cut.png", content[:cut]))
    assert "truncated" in _reason(excinfo)


def test_png_without_iend_is_truncated(tmp_path: Path) -> None:
    content = _encode(".png", _micrograph())
    assert content.endswith(_png_chunk(b"IEND", b""))
    with pytest.raises(ImageDecodeError) as excinfo:
        decode_file(_write(tmp_path, "no_iend.png", content[:-12]))
    assert "truncated" in _reason(excinfo)
    assert "iend" in _reason(excinfo)


def test_png_with_bad_crc(tmp_path: Path) -> None:
    content = bytearray(_encode(".png", _micrograph()))
    content[60] ^= 0x01  # inside the first IDAT
    with pytest.raises(ImageDecodeError) as excinfo:
        decode_file(_write(tmp_path, "crc.png", bytes(content)))
    assert "crc" in _reason(excinfo)


def test_png_with_too_little_image_data(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """Chunks and CRCs intact, but the IDAT stream holds 10 of 64 rows: libpng's own error."""
    image = (np.arange(64 * 64).reshape(64, 64) % 251).astype(np.uint8)
    ten_rows = _png_rows(image)[: 65 * 10]
    ihdr = struct.pack(">IIBBBBB", 64, 64, 8, 0, 0, 0, 0)
    content = (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(ten_rows))
        + _png_chunk(b"IEND", b"")
    )
    with pytest.raises(ImageDecodeError) as excinfo:
        decode_file(_write(tmp_path, "short.png", content))
    assert "not enough image data" in _reason(excinfo)
    assert capfd.readouterr().err == ""  # libpng's complaint is in the reason, not on stderr


def _jpeg_cut_points(content: bytes) -> list[int]:
    return [
        2,
        3,
        20,
        150,
        len(content) // 3,
        len(content) // 2,
        len(content) - 100,
        len(content) - 2,
        len(content) - 1,
    ]


@pytest.mark.parametrize("progressive", [0, 1])
def test_truncated_jpeg_at_several_points(tmp_path: Path, progressive: int) -> None:
    image = np.dstack([_micrograph(), _micrograph(seed=1), _micrograph(seed=2)])
    content = _encode(".jpg", image, cv2.IMWRITE_JPEG_PROGRESSIVE, progressive)
    for cut in _jpeg_cut_points(content):
        path = _write(tmp_path, f"cut{cut}.jpg", content[:cut])
        with pytest.raises(ImageDecodeError) as excinfo:
            decode_file(path)
        assert "truncated" in _reason(excinfo), (cut, excinfo.value.reason)


def test_truncated_jpeg_that_opencv_imread_would_grey_fill(tmp_path: Path) -> None:
    """The issue's measured trap: imread returns a full-size image for this file."""
    content = _encode(".jpg", _micrograph())
    path = _write(tmp_path, "half.jpg", content[: len(content) // 2])
    silently_filled = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    assert silently_filled is not None and silently_filled.shape == (96, 128)
    with pytest.raises(ImageDecodeError, match="truncated JPEG"):
        decode_file(path)


@pytest.mark.parametrize("fraction", [0.2, 0.8])
def test_jpeg_cut_short_with_eoi_reappended(tmp_path: Path, fraction: float) -> None:
    """Structure looks whole; only libjpeg's stderr warning tells the scan is short."""
    content = _encode(".jpg", _micrograph())
    patched = content[: int(len(content) * fraction)] + b"\xff\xd9"
    with pytest.raises(ImageDecodeError) as excinfo:
        decode_file(_write(tmp_path, "patched.jpg", patched))
    assert "corrupt jpeg data" in _reason(excinfo)


def test_corrupt_jpeg_scan_is_an_error_and_stderr_stays_quiet(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    content = bytearray(_encode(".jpg", _micrograph(), cv2.IMWRITE_JPEG_QUALITY, 95))
    middle = len(content) // 2
    content[middle : middle + 4] = b"\xff\xd3\x12\x34"  # a stray restart marker mid-scan
    with pytest.raises(ImageDecodeError) as excinfo:
        decode_file(_write(tmp_path, "corrupt.jpg", bytes(content)))
    assert "corrupt jpeg data" in _reason(excinfo)
    assert capfd.readouterr().err == ""


def test_other_output_to_stderr_during_a_decode_is_passed_through(
    capfd: pytest.CaptureFixture[str],
) -> None:
    with decode_module._captured_stderr() as captured:
        os.write(2, b"Corrupt JPEG data: 3 extraneous bytes\nline from another thread\n")
    kept = decode_module._split_decoder_lines(captured)
    assert kept == ["Corrupt JPEG data: 3 extraneous bytes"]
    assert capfd.readouterr().err == "line from another thread\n"


def test_truncated_tiff_single_page(tmp_path: Path) -> None:
    content = _tiff_bytes(_micrograph16())
    for cut in (6, 100, len(content) // 2, len(content) - 1):
        with pytest.raises(ImageDecodeError) as excinfo:
            decode_file(_write(tmp_path, "cut.tif", content[:cut]))
        assert "truncated" in _reason(excinfo), (cut, excinfo.value.reason)


def test_truncated_multipage_tiff_is_not_silently_shortened(tmp_path: Path) -> None:
    pages = [_micrograph(seed=seed) for seed in range(3)]
    path = tmp_path / "cv3.tiff"
    assert cv2.imwritemulti(str(path), pages)  # OpenCV writes each directory after its data
    content = path.read_bytes()
    for cut in (len(content) - 1, len(content) - 200, 2 * len(content) // 3):
        with pytest.raises(ImageDecodeError) as excinfo:
            decode_file(_write(tmp_path, "cut3.tiff", content[:cut]))
        assert "truncated" in _reason(excinfo), (cut, excinfo.value.reason)


def test_truncated_bmp(tmp_path: Path) -> None:
    content = _encode(".bmp", _micrograph())
    for cut in (10, 40, len(content) // 2, len(content) - 1):
        with pytest.raises(ImageDecodeError) as excinfo:
            decode_file(_write(tmp_path, "cut.bmp", content[:cut]))
        assert "truncated" in _reason(excinfo), (cut, excinfo.value.reason)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"sample 42, operator J. Doe\nporosity looks fine\n", "plain text"),
        (b"<!DOCTYPE html><html><body>404 Not Found</body></html>", "html"),
        (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj", "pdf"),
        (b"\x00\x01\x02\x03\x04\x05\x06\x07\x08\x09" * 10, "unrecognised binary data"),
    ],
)
def test_non_image_named_png_says_what_it_is(tmp_path: Path, content: bytes, expected: str) -> None:
    with pytest.raises(ImageDecodeError) as excinfo:
        decode_file(_write(tmp_path, "field.png", content))
    reason = _reason(excinfo)
    assert reason.startswith("not an image")
    assert expected in reason
    assert "'.png'" in reason


def test_other_image_formats_are_named_and_refused(tmp_path: Path) -> None:
    gif = b"GIF89a\x20\x00\x20\x00\x80\x00\x00" + bytes(40)
    with pytest.raises(ImageDecodeError) as excinfo:
        decode_file(_write(tmp_path, "a.gif", gif))
    assert "unsupported image format" in _reason(excinfo)
    assert "gif" in _reason(excinfo)


@pytest.mark.parametrize(
    ("extension", "shape"),
    [(".png", (1, 1)), (".jpg", (1, 1)), (".bmp", (200, 8)), (".tif", (15, 300))],
)
def test_images_smaller_than_the_minimum_are_refused(tmp_path: Path, extension: str, shape) -> None:
    image = np.full(shape, 128, np.uint8)
    content = _tiff_bytes(image) if extension == ".tif" else _encode(extension, image)
    with pytest.raises(ImageDecodeError) as excinfo:
        decode_file(_write(tmp_path, f"tiny{extension}", content))
    assert f"smaller than the {MIN_SIDE_PX}x{MIN_SIDE_PX} minimum" in _reason(excinfo)
    assert f"{shape[1]}x{shape[0]}" in _reason(excinfo)


def _png_bomb() -> bytes:
    """A valid IHDR declaring 20000x20000 grey, with a small IDAT (the first rows of zeros)."""
    rows = zlib.compress(bytes(20001 * 500), 9)
    ihdr = struct.pack(">IIBBBBB", 20000, 20000, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", rows)
        + _png_chunk(b"IEND", b"")
    )


def test_png_bomb_is_refused_from_the_header_without_decoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    content = _png_bomb()
    assert len(content) < 100_000
    decoder_calls: list[str] = []

    def refuse_to_decode(*args, **kwargs):
        decoder_calls.append("imdecode")
        msg = "the decoder must not run on a decompression bomb"
        raise AssertionError(msg)

    monkeypatch.setattr(decode_module.cv2, "imdecode", refuse_to_decode)
    with pytest.raises(ImageTooLargeError) as excinfo:
        decode_file(_write(tmp_path, "bomb.png", content))
    reason = _reason(excinfo)
    assert "20000x20000" in reason
    assert "max_pixels" in reason
    assert decoder_calls == []


def test_header_bombs_in_every_format(tmp_path: Path) -> None:
    jpeg = bytearray(_encode(".jpg", _micrograph()))
    sof = jpeg.index(b"\xff\xc0")
    jpeg[sof + 5 : sof + 9] = struct.pack(">HH", 60000, 60000)
    bmp = bytearray(_encode(".bmp", _micrograph()))
    bmp[18:26] = struct.pack("<ii", 50000, 50000)
    tiff = _minimal_tiff(50000, 50000, bytes(64))
    for name, content in (("j.jpg", bytes(jpeg)), ("b.bmp", bytes(bmp)), ("t.tif", tiff)):
        with pytest.raises(ImageTooLargeError) as excinfo:
            decode_file(_write(tmp_path, name, content))
        assert "50000x50000" in _reason(excinfo) or "60000x60000" in _reason(excinfo)


def test_pixel_limit_counts_every_tiff_page(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "stack.tif",
        _tiff_bytes(np.stack([_micrograph(seed=s) for s in range(3)]), photometric="minisblack"),
    )
    assert len(decode_file(path, max_pixels=3 * 96 * 128)) == 3
    with pytest.raises(ImageTooLargeError, match="3 pages"):
        decode_file(path, max_pixels=3 * 96 * 128 - 1)


def test_max_file_bytes(tmp_path: Path) -> None:
    content = _encode(".png", _micrograph())
    path = _write(tmp_path, "big.png", content)
    assert decode_file(path, max_file_bytes=len(content))
    with pytest.raises(ImageDecodeError, match="max_file_bytes"):
        decode_file(path, max_file_bytes=len(content) - 1)
    with pytest.raises(ImageDecodeError, match="max_file_bytes"):
        decode_bytes(content, "mem.png", max_file_bytes=1000)


def test_unreadable_paths(tmp_path: Path) -> None:
    with pytest.raises(ImageDecodeError, match="cannot read file"):
        decode_file(tmp_path / "missing.png")
    with pytest.raises(ImageDecodeError):
        decode_file(tmp_path)
    with pytest.raises(ImageDecodeError, match="cannot read file"):
        decode_file(str(tmp_path / "nul\0byte.png"))


def test_concurrent_decodes_from_threads_give_the_same_frames(tmp_path: Path) -> None:
    """Decodes that capture the decoders' stderr are serialised; results must not mix."""
    contents = {
        "a.png": _encode(".png", _micrograph16(0)),
        "b.jpg": _encode(".jpg", _micrograph(seed=1)),
        "c.tiff": _encode(".tiff", _micrograph(seed=2)),
        "d.tif": _tiff_bytes(_micrograph16(3), compression="zlib"),
    }
    expected = {name: decode_bytes(content, name)[0].pixels for name, content in contents.items()}
    jobs = [name for name in contents for _ in range(8)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda name: (name, decode_bytes(contents[name], name)), jobs))
    for name, frames in results:
        assert frames[0].source == name
        np.testing.assert_array_equal(frames[0].pixels, expected[name])


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        decode_bytes(b"x", "x", max_pixels=0)
