"""Raw pixels in, RGB uint8 HxWx3 out: the one image format inside the runtime."""
from pathlib import Path

import cv2
import numpy as np

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

# How OpenCV orders the channels it decodes, by channel count.
_OPENCV_ORDER = {1: "mono8", 3: "bgr8", 4: "bgra8"}
_DEFAULT_ORDER = {1: "mono8", 3: "rgb8", 4: "rgba8"}


def _channels(array: np.ndarray) -> int:
    if array.ndim == 2:
        return 1
    if array.ndim == 3 and array.shape[2] in (1, 3, 4):
        return array.shape[2]
    raise InputError(
        f"image of shape {array.shape}: expected HxW, HxWx1, HxWx3 or HxWx4 pixels"
    )


def _to_8bit(array: np.ndarray) -> np.ndarray:
    """Scale uint16 to uint8 with rounding, so 65535 maps to 255 and 0 to 0."""
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
        if array.dtype == np.uint16:
            array = _to_8bit(array)
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
        if array.dtype == np.uint16:
            array = _to_8bit(array)
    conversion = ENCODINGS[encoding][2]
    if array.ndim == 3 and channels == 1:
        array = array[:, :, 0]
    rgb = cv2.cvtColor(array, conversion) if conversion is not None else array
    return np.ascontiguousarray(rgb)


def opencv_to_rgb(array: np.ndarray) -> np.ndarray:
    """Convert an image as OpenCV decodes it (gray, BGR or BGRA; 8 or 16 bit) to RGB uint8."""
    if array.dtype == np.uint16:
        array = _to_8bit(array)
    return to_rgb(array, _OPENCV_ORDER[_channels(array)])


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as RGB uint8."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"image file {path}: not found (expected a readable image file)")
    if path.stat().st_size == 0:
        raise InputError(f"image file {path}: file is empty (expected an image such as PNG or JPEG)")
    decoded = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if decoded is None:
        raise InputError(f"image file {path}: cannot decode (expected PNG, JPEG, BMP, PPM, PGM or TIFF)")
    return opencv_to_rgb(decoded)


def decode_compressed(data: bytes, format_hint: str = "") -> np.ndarray:
    """Decode compressed image bytes (for instance a CompressedImage's `data`) to RGB uint8.

    OpenCV detects the codec from the bytes; `format_hint` only makes the error message clearer.
    """
    buffer = np.frombuffer(data, dtype=np.uint8)
    decoded = cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED) if buffer.size else None
    if decoded is None:
        described = f" (format {format_hint!r})" if format_hint else ""
        raise InputError(
            f"compressed image data{described}, {len(data)} bytes: cannot decode "
            "(expected JPEG or PNG bytes)"
        )
    return opencv_to_rgb(decoded)
