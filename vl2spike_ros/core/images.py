"""Raw pixels in, RGB uint8 HxWx3 out: the one image format inside the runtime.

Untrusted input is sized before it is decoded: a compressed image's width and height are read from
its header (a few hundred bytes can claim 20000x20000 pixels, gigabytes once decoded) and a raw
image's `step * height` is checked against the bytes it really carries, both before any pixel
buffer is allocated. Images above `max_pixels` (default DEFAULT_MAX_IMAGE_PIXELS) are refused, and
so is an image file far larger than its pixels could need, before the rest of it is read.
"""
from __future__ import annotations

import os
import struct
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from vl2spike_ros.core.limits import DEFAULT_MAX_IMAGE_PIXELS
from vl2spike_ros.core.png_check import check_png
from vl2spike_ros.errors import InputError

# ROS encoding -> (dtype, channels, OpenCV conversion to RGB or None when already RGB).
ENCODINGS: dict[str, tuple[type, int, int | None]] = {
    "rgb8": (np.uint8, 3, None),
    "bgr8": (np.uint8, 3, cv2.COLOR_BGR2RGB),
    "mono8": (np.uint8, 1, cv2.COLOR_GRAY2RGB),
    "mono16": (np.uint16, 1, cv2.COLOR_GRAY2RGB),
    "rgba8": (np.uint8, 4, cv2.COLOR_RGBA2RGB),
    "bgra8": (np.uint8, 4, cv2.COLOR_BGRA2RGB),
}
SUPPORTED_ENCODINGS = tuple(ENCODINGS)
# Further ROS encodings that rosbags-image converts to RGB (Bayer, YUV 4:2:2, 16-bit colour), with
# their bytes per pixel, so that their size is checked like any other before conversion.
CONVERTED_ENCODINGS: dict[str, int] = {
    **{f"bayer_{order}8": 1 for order in ("rggb", "bggr", "gbrg", "grbg")},
    **{f"bayer_{order}16": 2 for order in ("rggb", "bggr", "gbrg", "grbg")},
    "uyvy": 2, "yuv422": 2, "yuyv": 2, "yuv422_yuy2": 2,
    "rgb16": 6, "bgr16": 6, "rgba16": 8, "bgra16": 8,
}
BYTES_PER_PIXEL: dict[str, int] = {
    **{name: np.dtype(dtype).itemsize * channels for name, (dtype, channels, _) in ENCODINGS.items()},
    **CONVERTED_ENCODINGS,
}

# How OpenCV orders the channels it decodes, by channel count.
_OPENCV_ORDER = {1: "mono8", 3: "bgr8", 4: "bgra8"}
_DEFAULT_ORDER = {1: "mono8", 3: "rgb8", 4: "rgba8"}
_FILE_FORMATS = "PNG, JPEG, BMP, PPM, PGM or TIFF"
# An image file holds at most its pixels uncompressed (16-bit RGBA: 8 bytes each; twice that allows
# for row filters and stored blocks) plus metadata (EXIF, ICC profiles, text chunks). The header is
# looked for in the first MAX_IMAGE_METADATA_BYTES.
MAX_ENCODED_BYTES_PER_PIXEL = 16
MAX_IMAGE_METADATA_BYTES = 16 << 20
# Real JPEGs have a few dozen segments before their frame header; a stream of thousands of tiny ones
# only makes the (per-frame, in the subscriber) header walk slow.
MAX_JPEG_SEGMENTS = 1024


def _channels(array: np.ndarray) -> int:
    if array.ndim == 2:
        return 1
    if array.ndim == 3 and array.shape[2] in (1, 3, 4):
        return array.shape[2]
    raise InputError(
        f"image of shape {array.shape}: expected HxW, HxWx1, HxWx3 or HxWx4 pixels"
    )


def to_8bit(array: np.ndarray) -> np.ndarray:
    """Scale uint16 to uint8 with rounding, so 65535 maps to 255 and 0 to 0 (uint8 passes through)."""
    if array.dtype != np.uint16:
        return array
    return ((array.astype(np.uint32) + 128) // 257).astype(np.uint8)


def to_rgb(array: np.ndarray, encoding: str | None = None) -> np.ndarray:
    """Convert uint8 or uint16 pixels to a contiguous RGB uint8 HxWx3 array.

    Without `encoding`, 1 channel is gray, 3 are RGB and 4 are RGBA; uint16 is scaled to 8 bit.
    With a ROS `encoding` (see SUPPORTED_ENCODINGS), dtype and channel count must match it.
    Input that already is contiguous RGB uint8 is returned as is, not copied.
    """
    array = np.asarray(array)
    if array.dtype not in (np.uint8, np.uint16):
        raise InputError(f"image dtype {array.dtype}: expected uint8 or uint16 pixels")
    if array.size == 0:
        raise InputError(f"image of shape {array.shape}: expected at least one pixel")
    channels = _channels(array)
    if encoding is None:
        encoding = _DEFAULT_ORDER[channels]
    elif encoding not in ENCODINGS:
        raise InputError(
            f"image encoding {encoding!r}: expected one of {', '.join(SUPPORTED_ENCODINGS)}"
        )
    else:
        dtype, expected_channels, _ = ENCODINGS[encoding]
        if array.dtype != dtype or channels != expected_channels:
            raise InputError(
                f"image encoding {encoding!r}: expected {np.dtype(dtype)} with {expected_channels} "
                f"channel(s), got {array.dtype} of shape {array.shape}"
            )
    array = to_8bit(array)
    conversion = ENCODINGS[encoding][2]
    if array.ndim == 3 and channels == 1:
        array = array[:, :, 0]
    rgb = cv2.cvtColor(array, conversion) if conversion is not None else array
    return np.ascontiguousarray(rgb)


def opencv_to_rgb(array: np.ndarray) -> np.ndarray:
    """Convert an image as OpenCV decodes it (gray, BGR or BGRA; 8 or 16 bit) to RGB uint8."""
    array = to_8bit(array)
    return to_rgb(array, _OPENCV_ORDER[_channels(array)])


# --- size checks before decoding -----------------------------------------------------------------
def check_max_pixels(max_pixels: int) -> int:
    """`max_pixels` itself, when it is a usable limit (a positive integer)."""
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, (int, np.integer)) or max_pixels < 1:
        raise InputError(f"max_image_pixels must be a positive integer, got {max_pixels!r}")
    return int(max_pixels)


def check_pixel_count(width: int, height: int, max_pixels: int, what: str) -> None:
    """Refuse a non-positive size, or more than `max_pixels` pixels, naming `what` was sized."""
    if width <= 0 or height <= 0:
        raise InputError(f"{what}: size {width}x{height}; expected a positive width and height")
    if width * height > check_max_pixels(max_pixels):
        raise InputError(f"{what}: {width}x{height} = {width * height} pixels; expected at most "
                         f"max_image_pixels = {max_pixels}")


def check_raw_image(encoding: str, width: int, height: int, step: int, data_length: int,
                    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> None:
    """The checks of a sensor_msgs/Image's fields, O(1) and before any pixel buffer exists:
    a convertible encoding, a positive size within `max_pixels`, a `step` that holds a row,
    and exactly `step * height` bytes of data."""
    if encoding not in BYTES_PER_PIXEL:
        raise InputError(f"image encoding {encoding!r}: expected one of {', '.join(BYTES_PER_PIXEL)}")
    if width <= 0 or height <= 0:
        raise InputError(f"image size {width}x{height}: expected a positive width and height")
    row = width * BYTES_PER_PIXEL[encoding]
    if step < row:
        raise InputError(f"image step {step}: a {encoding} row of width {width} needs at least {row} bytes")
    expected = step * height
    if data_length != expected:
        kind = "truncated" if data_length < expected else "oversized"
        raise InputError(f"image data {kind}: {data_length} bytes, expected step*height = {expected}")
    check_pixel_count(width, height, max_pixels, f"image ({encoding})")


def _be16(data: bytes, offset: int) -> int:
    return int.from_bytes(data[offset:offset + 2], "big")


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG's start-of-frame segment, walking the segments from the start."""
    position, segments = 2, 0
    while position + 4 <= len(data) and segments < MAX_JPEG_SEGMENTS:
        segments += 1
        if data[position] != 0xFF:
            return None
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            position += 2
            continue
        length = _be16(data, position + 2)
        if length < 2:
            return None
        # SOF0..SOF15, except DHT (C4), JPG (C8) and DAC (CC), carry precision, height, width.
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if position + 9 > len(data):
                return None
            return _be16(data, position + 7), _be16(data, position + 5)
        if marker in (0xDA, 0xD9):  # scan data or end of image before any frame header
            return None
        position += 2 + length
    return None


def _bmp_size(data: bytes) -> tuple[int, int] | None:
    if len(data) < 26:
        return None
    header_size = int.from_bytes(data[14:18], "little")
    if header_size == 12:  # BITMAPCOREHEADER: 16-bit unsigned sizes
        return int.from_bytes(data[18:20], "little"), int.from_bytes(data[20:22], "little")
    width, height = struct.unpack_from("<ii", data, 18)
    return width, abs(height)  # a negative height means rows stored top-down


def _pnm_size(data: bytes) -> tuple[int, int] | None:
    tokens: list[bytes] = []
    for line in data[2:512].split(b"\n"):
        tokens.extend(line.split(b"#", 1)[0].split())
        if len(tokens) >= 2:
            break
    if len(tokens) < 2 or not (tokens[0].isdigit() and tokens[1].isdigit()):
        return None
    return int(tokens[0]), int(tokens[1])


def _tiff_size(data: bytes) -> tuple[int, int] | None:
    order = "<" if data[:2] == b"II" else ">"
    if len(data) < 8:
        return None
    (offset,) = struct.unpack_from(f"{order}I", data, 4)
    if offset + 2 > len(data):
        return None
    (entries,) = struct.unpack_from(f"{order}H", data, offset)
    size: dict[int, int] = {}
    for entry in range(entries):
        start = offset + 2 + 12 * entry
        if start + 12 > len(data):
            return None
        tag, kind, _ = struct.unpack_from(f"{order}HHI", data, start)
        if tag in (256, 257):  # ImageWidth, ImageLength: SHORT (3) or LONG (4)
            size[tag] = struct.unpack_from(f"{order}H" if kind == 3 else f"{order}I", data, start + 8)[0]
    return (size[256], size[257]) if len(size) == 2 else None


def _png_size(data: bytes) -> tuple[int, int] | None:
    if len(data) < 24 or data[12:16] != b"IHDR":
        return None
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


# magic bytes -> (format name, header reader)
_HEADER_READERS = (
    (b"\x89PNG\r\n\x1a\n", "PNG", _png_size),
    (b"\xff\xd8", "JPEG", _jpeg_size),
    (b"BM", "BMP", _bmp_size),
    (b"P5", "PGM", _pnm_size),
    (b"P6", "PPM", _pnm_size),
    (b"II*\x00", "TIFF", _tiff_size),
    (b"MM\x00*", "TIFF", _tiff_size),
)
COMPRESSED_FORMATS = ("PNG", "JPEG")


def claimed_size(data: bytes, formats: tuple[str, ...] | None = None) -> tuple[str, int, int] | None:
    """(format, width, height) that an encoded image's header claims, or None when `data` is not
    one of `formats` (default: every format read here) or its header is unreadable."""
    for magic, name, reader in _HEADER_READERS:
        if data.startswith(magic) and (formats is None or name in formats):
            size = reader(data)
            return None if size is None else (name, *size)
    return None


_opencv_quiet_lock = threading.Lock()
_opencv_quiet_users = 0
_opencv_level_before = 0


@contextmanager
def _opencv_quiet() -> Iterator[None]:
    """OpenCV's own log lines off while decoding: on a truncated file it prints warnings such as
    "PNG input buffer is incomplete" before our one-line error says the same. The level is process-wide,
    so concurrent decodes share one silenced period and the last restores the level."""
    global _opencv_quiet_users, _opencv_level_before
    with _opencv_quiet_lock:
        if _opencv_quiet_users == 0:
            _opencv_level_before = cv2.utils.logging.getLogLevel()
            cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
        _opencv_quiet_users += 1
    try:
        yield
    finally:
        with _opencv_quiet_lock:
            _opencv_quiet_users -= 1
            if _opencv_quiet_users == 0:
                cv2.utils.logging.setLogLevel(_opencv_level_before)


def _claimed_pixels(data: bytes, what: str, expected: str, formats: tuple[str, ...] | None,
                    max_pixels: int) -> tuple[str, int, int]:
    """(format, width, height) from the header, refused above `max_pixels`."""
    claimed = claimed_size(data, formats)
    if claimed is None:
        raise InputError(f"{what}: cannot decode: no readable image header (expected {expected})")
    image_format, width, height = claimed
    check_pixel_count(width, height, max_pixels, f"{what} ({image_format})")
    return claimed


def _decode(data: bytes, what: str, expected: str, formats: tuple[str, ...] | None,
            max_pixels: int) -> np.ndarray:
    image_format, _, _ = _claimed_pixels(data, what, expected, formats, max_pixels)
    if image_format == "PNG":
        check_png(data, what)  # libpng would print its own line on stderr for what this refuses
    with _opencv_quiet():
        decoded = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if decoded is None or decoded.size == 0:
        raise InputError(f"{what}: cannot decode its {image_format} data (expected {expected})")
    if decoded.shape[0] * decoded.shape[1] > max_pixels:  # a header that lied about its size
        raise InputError(f"{what}: decodes to {decoded.shape[1]}x{decoded.shape[0]} pixels, more than "
                         f"max_image_pixels = {max_pixels}")
    return opencv_to_rgb(decoded)


def read_image(path: str | Path, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> np.ndarray:
    """Read an image file as RGB uint8; its header must claim at most `max_pixels` pixels."""
    path = Path(path)
    what = f"image file {path}"
    if not path.is_file():
        raise InputError(f"{what}: not found (expected a readable image file)")
    try:
        with open(path, "rb") as stream:
            size = os.fstat(stream.fileno()).st_size
            head = stream.read(min(size, MAX_IMAGE_METADATA_BYTES))
            if not head:
                raise InputError(f"{what}: file is empty (expected an image such as PNG or JPEG)")
            image_format, width, height = _claimed_pixels(head, what, _FILE_FORMATS, None, max_pixels)
            limit = width * height * MAX_ENCODED_BYTES_PER_PIXEL + MAX_IMAGE_METADATA_BYTES
            if size > limit:
                raise InputError(f"{what}: {size} bytes for a {width}x{height} {image_format}; expected at "
                                 f"most {limit} (its pixels uncompressed plus metadata)")
            data = head + stream.read(size - len(head))
    except OSError as error:
        raise InputError(f"{what}: cannot read ({error.strerror})") from None
    return _decode(data, what, _FILE_FORMATS, None, max_pixels)


def decode_compressed(data: bytes, format_hint: str = "",
                      max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> np.ndarray:
    """Decode compressed image bytes (for instance a CompressedImage's `data`) to RGB uint8.

    The codec is found from the bytes (JPEG or PNG); `format_hint` only makes errors clearer.
    """
    return _decode(bytes(data), _compressed_label(data, format_hint), "JPEG or PNG bytes",
                   COMPRESSED_FORMATS, max_pixels)


def check_compressed(data: bytes, format_hint: str = "", max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> None:
    """Cheap checks of compressed image bytes, without decoding: JPEG or PNG whose header claims a
    size within `max_pixels`."""
    # All of it: a JPEG's frame header follows its EXIF and ICC segments, which can be long. Walking
    # the segments touches a few bytes of each.
    claimed = claimed_size(bytes(data), COMPRESSED_FORMATS)
    what = _compressed_label(data, format_hint)
    if claimed is None:
        raise InputError(f"{what}: cannot decode: not JPEG or PNG data with a readable header")
    image_format, width, height = claimed
    check_pixel_count(width, height, max_pixels, f"{what} ({image_format})")


def _compressed_label(data: bytes, format_hint: str) -> str:
    described = f" (format {format_hint!r})" if format_hint else ""
    return f"compressed image{described}, {len(data)} bytes"
