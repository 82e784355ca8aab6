"""RGB uint8 -> rclpy sensor_msgs Image / CompressedImage (what the node publishes and the tests send).
Reading image messages is ROS-free: `vl2spike_ros.sources.image_messages`."""
from __future__ import annotations

import sys
from typing import Any

import cv2
import numpy as np

from vl2spike_ros.errors import InputError


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
