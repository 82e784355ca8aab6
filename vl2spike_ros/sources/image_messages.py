"""sensor_msgs Image / CompressedImage -> RGB uint8, with the checks untrusted input needs.

The one conversion of image messages, for the node's live input and for the images in a bag alike;
it needs no ROS 2 install (building rclpy messages is in `vl2spike_ros.ros.image_messages`).
Conversion goes through ROS 2 `cv_bridge` where it imports (a ROS 2 install) and through
rosbags-image / OpenCV otherwise (pip installs). Either way the message is checked first, before
any pixel buffer is allocated (`vl2spike_ros.core.images`): a convertible encoding, a positive
size of at most `max_pixels`, a `step` that holds a row and exactly `step * height` bytes; a
compressed image must be JPEG or PNG whose header claims at most `max_pixels` and must decode.
Anything else raises InputError naming what is wrong, so the node can count it, log it and drop
the frame. Works on rclpy messages and on rosbags' messages (both have the same field names).
"""
from __future__ import annotations

from typing import Any

import cv2
import numpy as np
from rosbags.image import ImageError, message_to_cvimage

from vl2spike_ros.errors import InputError
from vl2spike_ros.core import images
from vl2spike_ros.core.images import DEFAULT_MAX_IMAGE_PIXELS, ENCODINGS, to_rgb

try:  # ROS 2 cv_bridge (apt: ros-<distro>-cv-bridge). The PyPI `cv-bridge` is a ROS 1 port: see below.
    from cv_bridge import CvBridge, CvBridgeError  # type: ignore[import-not-found]

    _BRIDGE = CvBridge()
    # The ROS 1 port on PyPI has no compressed_imgmsg_to_cv2 for ROS 2 messages and breaks on numpy 2.
    if not hasattr(_BRIDGE, "compressed_imgmsg_to_cv2"):
        raise ImportError("cv_bridge without compressed support")
except Exception:  # noqa: BLE001 - any failure means "use the fallback"
    _BRIDGE = None
    CvBridgeError = RuntimeError  # type: ignore[assignment,misc]

BACKEND = "cv_bridge" if _BRIDGE is not None else "rosbags-image"


def _is_compressed(message: Any) -> bool:
    return hasattr(message, "format") and not hasattr(message, "encoding")


def check_image(message: Any, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> None:
    """Checks of a sensor_msgs/Image, O(1): raise InputError when it cannot be used."""
    images.check_raw_image(str(message.encoding), int(message.width), int(message.height),
                           int(message.step), len(message.data), max_pixels)


def check_compressed(message: Any, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> None:
    """Checks of a sensor_msgs/CompressedImage without decoding it: JPEG or PNG, and the size its
    header claims at most `max_pixels`."""
    images.check_compressed(_bytes(message.data), str(message.format), max_pixels)


def _bytes(data: Any) -> bytes:
    return data.tobytes() if hasattr(data, "tobytes") else bytes(data)


def _pixels(message: Any) -> np.ndarray:
    """HxW(xC) array of an already checked Image in one of ENCODINGS, honouring step and is_bigendian."""
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


def image_to_rgb(message: Any, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> np.ndarray:
    """RGB uint8 HxWx3 of a sensor_msgs/Image: rgb8, bgr8, mono8, mono16, rgba8, bgra8, and the
    Bayer, YUV 4:2:2 and 16-bit colour encodings rosbags-image converts."""
    check_image(message, max_pixels)
    encoding = str(message.encoding)
    if encoding in ENCODINGS:
        return to_rgb(_pixels(message), encoding)
    if int(message.step) != int(message.width) * images.BYTES_PER_PIXEL[encoding]:
        raise InputError(f"image ({encoding}): padded rows (step {message.step}) are only read for "
                         f"{', '.join(ENCODINGS)}")
    try:
        return to_rgb(message_to_cvimage(message, "rgb8"))
    except (ImageError, cv2.error) as error:
        raise InputError(f"image encoding {encoding!r}: cannot convert to RGB ({error})") from None


def compressed_to_rgb(message: Any, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> np.ndarray:
    """RGB uint8 HxWx3 of a sensor_msgs/CompressedImage holding JPEG or PNG data."""
    check_compressed(message, max_pixels)
    if _BRIDGE is not None:
        try:
            array = _BRIDGE.compressed_imgmsg_to_cv2(message, desired_encoding="passthrough")
        except (CvBridgeError, cv2.error, AssertionError) as error:
            raise InputError(f"compressed image (format {str(message.format)!r}): cannot decode: {error}") from None
        if array is None or np.asarray(array).size == 0:
            raise InputError(f"compressed image (format {str(message.format)!r}): cannot decode")
        return images.opencv_to_rgb(np.asarray(array))  # cv_bridge decodes with OpenCV: BGR(A) order
    return images.decode_compressed(_bytes(message.data), str(message.format), max_pixels)


def message_to_rgb(message: Any, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> np.ndarray:
    """Either kind of image message to RGB uint8, refusing images above `max_pixels` pixels."""
    if _is_compressed(message):
        return compressed_to_rgb(message, max_pixels)
    return image_to_rgb(message, max_pixels)
