"""sensor_msgs Image / CompressedImage <-> RGB uint8, with the checks a node needs on live input.

Conversion goes through ROS 2 `cv_bridge` where it imports (a ROS 2 install) and through
rosbags-image / OpenCV otherwise (pip installs). Either way the message is validated first:
a supported encoding, non-zero size, a `step` that holds a row, and exactly `step * height` bytes;
a compressed image must decode. Anything else raises InputError naming what is wrong, so the
node can count it, log it and drop the frame. Works on rclpy messages and on rosbags' messages
(both have the same field names).
"""
from __future__ import annotations

import sys
from typing import Any

import cv2
import numpy as np

from vl2spike_ros.errors import InputError
from vl2spike_ros.core.images import ENCODINGS, SUPPORTED_ENCODINGS, decode_compressed, to_rgb

try:  # ROS 2 cv_bridge (apt: ros-<distro>-cv-bridge). The PyPI `cv-bridge` is a ROS 1 port: see below.
    from cv_bridge import CvBridge, CvBridgeError  # type: ignore[import-not-found]

    _BRIDGE = CvBridge()
    # The ROS 1 port on PyPI has no compressed_imgmsg_to_cv2 for ROS 2 messages and breaks on numpy 2.
    if not hasattr(_BRIDGE, "compressed_imgmsg_to_cv2"):
        raise ImportError("cv_bridge without compressed support")
except Exception:  # noqa: BLE001 - any failure means "use the fallback"
    _BRIDGE = None
    CvBridgeError = RuntimeError  # type: ignore[assignment,misc]

if _BRIDGE is None:
    from rosbags.image import message_to_cvimage

BACKEND = "cv_bridge" if _BRIDGE is not None else "rosbags-image"
# Bytes per pixel of each supported encoding.
BYTES_PER_PIXEL = {name: np.dtype(dtype).itemsize * channels for name, (dtype, channels, _) in ENCODINGS.items()}
_JPEG_MAGIC = b"\xff\xd8"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def check_image(message: Any) -> None:
    """Structural checks of a sensor_msgs/Image, O(1): raise InputError when it cannot be used."""
    encoding = str(message.encoding)
    if encoding not in ENCODINGS:
        raise InputError(f"image encoding {encoding!r}: expected one of {', '.join(SUPPORTED_ENCODINGS)}")
    height, width, step = int(message.height), int(message.width), int(message.step)
    if height <= 0 or width <= 0:
        raise InputError(f"image size {width}x{height}: expected a positive width and height")
    row = width * BYTES_PER_PIXEL[encoding]
    if step < row:
        raise InputError(f"image step {step}: a {encoding} row of width {width} needs at least {row} bytes")
    expected = step * height
    actual = len(message.data)
    if actual != expected:
        kind = "truncated" if actual < expected else "oversized"
        raise InputError(f"image data {kind}: {actual} bytes, expected step*height = {expected}")


def check_compressed(message: Any) -> None:
    """Cheap checks of a sensor_msgs/CompressedImage (magic bytes); full decoding finds the rest."""
    head = bytes(message.data[:8])
    if not (head.startswith(_JPEG_MAGIC) or head.startswith(_PNG_MAGIC)):
        raise InputError(f"compressed image (format {str(message.format)!r}), {len(message.data)} bytes: "
                         "not JPEG or PNG data")


def _pixels(message: Any) -> np.ndarray:
    """HxW(xC) array of an already checked Image, honouring step and is_bigendian."""
    encoding = str(message.encoding)
    dtype, channels, _ = ENCODINGS[encoding]
    height, width, step = int(message.height), int(message.width), int(message.step)
    if _BRIDGE is not None:
        try:
            array = _BRIDGE.imgmsg_to_cv2(message, desired_encoding="passthrough")
        except CvBridgeError as error:
            raise InputError(f"image ({encoding}, {width}x{height}): cv_bridge cannot convert it: {error}") from None
        return np.asarray(array)
    itemsize = np.dtype(dtype).itemsize
    if step == width * channels * itemsize:
        # rosbags-image reads rclpy's and rosbags' messages alike (and swaps bytes for big endian).
        return np.array(message_to_cvimage(message), copy=True)
    # Padded rows: rosbags-image ignores `step`, so cut each row to its pixels here.
    buffer = message.data if isinstance(message.data, np.ndarray) else memoryview(message.data).cast("B")
    rows = np.frombuffer(buffer, dtype=np.uint8).reshape(height, step)[:, : width * channels * itemsize]
    order = ">" if message.is_bigendian else "<"
    array = np.ascontiguousarray(rows).view(np.dtype(dtype).newbyteorder(order)).astype(dtype)
    return array.reshape(height, width, channels) if channels > 1 else array.reshape(height, width)


def image_to_rgb(message: Any) -> np.ndarray:
    """RGB uint8 HxWx3 of a sensor_msgs/Image in rgb8, bgr8, mono8, mono16, rgba8 or bgra8."""
    check_image(message)
    array = _pixels(message)
    return to_rgb(array, str(message.encoding))


def compressed_to_rgb(message: Any) -> np.ndarray:
    """RGB uint8 HxWx3 of a sensor_msgs/CompressedImage holding JPEG or PNG data."""
    check_compressed(message)
    if _BRIDGE is not None:
        try:
            array = _BRIDGE.compressed_imgmsg_to_cv2(message, desired_encoding="passthrough")
        except (CvBridgeError, cv2.error, AssertionError) as error:
            raise InputError(f"compressed image (format {str(message.format)!r}): cannot decode: {error}") from None
        if array is None or np.asarray(array).size == 0:
            raise InputError(f"compressed image (format {str(message.format)!r}): cannot decode")
        array = np.asarray(array)
        # cv_bridge decodes with OpenCV: BGR(A) order.
        channels = 1 if array.ndim == 2 else array.shape[2]
        if array.dtype == np.uint16:
            array = ((array.astype(np.uint32) + 128) // 257).astype(np.uint8)
        return to_rgb(array, {1: "mono8", 3: "bgr8", 4: "bgra8"}[channels])
    data = message.data
    return decode_compressed(data.tobytes() if isinstance(data, np.ndarray) else bytes(data), str(message.format))


def message_to_rgb(message: Any) -> np.ndarray:
    """Either kind of image message to RGB uint8."""
    if hasattr(message, "format") and not hasattr(message, "encoding"):
        return compressed_to_rgb(message)
    return image_to_rgb(message)


def rgb_to_image(rgb: np.ndarray, header: Any = None, encoding: str = "rgb8") -> Any:
    """An rclpy sensor_msgs/Image of RGB uint8 pixels (encoding rgb8 or bgr8)."""
    from sensor_msgs.msg import Image

    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    if encoding == "bgr8":
        rgb = np.ascontiguousarray(rgb[:, :, ::-1])
    message = Image()
    if header is not None:
        message.header = header
    message.height, message.width = int(rgb.shape[0]), int(rgb.shape[1])
    message.encoding = encoding
    message.is_bigendian = 1 if sys.byteorder == "big" else 0
    message.step = int(rgb.shape[1] * 3)
    message.data = rgb.tobytes()
    return message


def rgb_to_compressed(rgb: np.ndarray, header: Any = None, compression: str = "jpeg") -> Any:
    """An rclpy sensor_msgs/CompressedImage (JPEG or PNG, in the format string image_transport writes)."""
    from sensor_msgs.msg import CompressedImage

    ok, encoded = cv2.imencode(f".{ 'jpg' if compression == 'jpeg' else compression}",
                               cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR))
    if not ok:
        raise InputError(f"image of shape {rgb.shape}: OpenCV cannot encode it as {compression}")
    message = CompressedImage()
    if header is not None:
        message.header = header
    message.format = f"rgb8; {compression} compressed bgr8"
    message.data = encoded.tobytes()
    return message
