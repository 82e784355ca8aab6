"""ROS image messages -> RGB: every supported encoding, row padding, byte order, and the malformed
messages the node must count and drop. Uses rclpy's message classes (no DDS) and rosbags' ones."""
import sys

import cv2
import numpy as np
import pytest

from vl2spike_ros.ros.image_messages import rgb_to_compressed, rgb_to_image
from vl2spike_ros.sources import image_messages
from vl2spike_ros.errors import InputError

sensor_msgs = pytest.importorskip("sensor_msgs.msg", reason="ROS 2 sensor_msgs is not installed")
Image, CompressedImage = sensor_msgs.Image, sensor_msgs.CompressedImage

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (6, 5, 3), dtype=np.uint8)
GRAY16 = RNG.integers(0, 65536, (6, 5), dtype=np.uint16)


def _image(array, encoding, pad=0, big_endian=False):
    array = np.ascontiguousarray(array)
    height, width = array.shape[:2]
    if array.dtype == np.uint16:
        array = array.astype(">u2" if big_endian else "<u2")
    rows = array.reshape(height, -1).view(np.uint8)
    if pad:
        rows = np.concatenate([rows, np.full((height, pad), 0xAB, np.uint8)], axis=1)
    message = Image()
    message.height, message.width, message.encoding = height, width, encoding
    message.is_bigendian = int(big_endian)
    message.step = rows.shape[1]
    message.data = rows.tobytes()
    return message


EXPECTED_FROM = {
    "rgb8": (RGB, RGB),
    "bgr8": (RGB[:, :, ::-1], RGB),
    "rgba8": (np.dstack([RGB, np.full(RGB.shape[:2], 7, np.uint8)]), RGB),
    "bgra8": (np.dstack([RGB[:, :, ::-1], np.full(RGB.shape[:2], 7, np.uint8)]), RGB),
    "mono8": (RGB[:, :, 0], np.repeat(RGB[:, :, :1], 3, axis=2)),
}


@pytest.mark.parametrize("encoding", sorted(EXPECTED_FROM))
@pytest.mark.parametrize("pad", [0, 3])
def test_colour_and_mono8_encodings(encoding, pad):
    source, expected = EXPECTED_FROM[encoding]
    rgb = image_messages.image_to_rgb(_image(source, encoding, pad))
    assert rgb.dtype == np.uint8 and rgb.shape == (6, 5, 3)
    np.testing.assert_array_equal(rgb, expected)


@pytest.mark.parametrize("big_endian", [False, True])
@pytest.mark.parametrize("pad", [0, 4])
def test_mono16_scales_and_honours_byte_order(big_endian, pad):
    rgb = image_messages.image_to_rgb(_image(GRAY16, "mono16", pad, big_endian))
    expected = ((GRAY16.astype(np.uint32) + 128) // 257).astype(np.uint8)
    np.testing.assert_array_equal(rgb[:, :, 1], expected)


def test_rosbags_messages_convert_too():
    from vl2spike_ros.sources.bags import TYPESTORE

    types = TYPESTORE.types
    header = types["std_msgs/msg/Header"](stamp=types["builtin_interfaces/msg/Time"](sec=1, nanosec=2),
                                          frame_id="cam")
    message = types["sensor_msgs/msg/Image"](header=header, height=6, width=5, encoding="bgr8",
                                             is_bigendian=0, step=15,
                                             data=np.ascontiguousarray(RGB[:, :, ::-1]).reshape(-1))
    np.testing.assert_array_equal(image_messages.message_to_rgb(message), RGB)


@pytest.mark.parametrize("compression", ["png", "jpeg"])
def test_compressed_round_trip(compression):
    image = np.zeros((32, 64, 3), np.uint8)
    image[:, :32] = (200, 30, 10)
    message = rgb_to_compressed(image, compression=compression)
    assert message.format == f"rgb8; {compression} compressed bgr8"
    rgb = image_messages.message_to_rgb(message)
    error = np.abs(rgb.astype(int) - image.astype(int))
    if compression == "png":
        assert error.max() == 0
    else:
        assert error.mean() < 3


def test_compressed_gray_png():
    ok, encoded = cv2.imencode(".png", GRAY16[:, :].astype(np.uint8))
    message = CompressedImage(format="png", data=encoded.tobytes())
    rgb = image_messages.compressed_to_rgb(message)
    np.testing.assert_array_equal(rgb[:, :, 2], GRAY16.astype(np.uint8))


def test_rgb_to_image_round_trip_and_bgr():
    message = rgb_to_image(RGB)
    assert (message.height, message.width, message.step, message.encoding) == (6, 5, 15, "rgb8")
    np.testing.assert_array_equal(image_messages.image_to_rgb(message), RGB)
    np.testing.assert_array_equal(image_messages.image_to_rgb(rgb_to_image(RGB, encoding="bgr8")), RGB)


def _bad(change):
    message = _image(RGB, "rgb8")
    change(message)
    return message


@pytest.mark.parametrize("make, fragment", [
    (lambda: _bad(lambda m: setattr(m, "encoding", "nv12")), "expected one of"),
    (lambda: _bad(lambda m: setattr(m, "encoding", "32FC1")), "expected one of"),
    (lambda: _bad(lambda m: setattr(m, "step", 14)), "needs at least 15 bytes"),
    (lambda: _bad(lambda m: setattr(m, "data", bytes(m.data)[:-1])), "truncated"),
    (lambda: _bad(lambda m: setattr(m, "data", bytes(m.data) + b"x")), "oversized"),
    (lambda: _bad(lambda m: (setattr(m, "height", 0), setattr(m, "data", b""))), "positive width and height"),
    (lambda: _bad(lambda m: setattr(m, "encoding", "rgba8")), "needs at least 20 bytes"),  # 4 B/px
])
def test_malformed_images_raise_input_error(make, fragment):
    with pytest.raises(InputError, match=fragment):
        image_messages.message_to_rgb(make())


@pytest.mark.parametrize("data", [b"", b"not an image", b"\xff\xd8\xff\xe0" + b"\0" * 20,
                                  b"\x89PNG\r\n\x1a\n" + b"\0" * 30])
def test_corrupt_compressed_images_raise_input_error(data):
    with pytest.raises(InputError):
        image_messages.message_to_rgb(CompressedImage(format="jpeg", data=data))


def test_backend_is_named():
    assert image_messages.BACKEND in ("cv_bridge", "rosbags-image")
    if "cv_bridge" not in sys.modules:
        assert image_messages.BACKEND == "rosbags-image"


def test_size_bomb_is_refused_from_its_header():
    """629 bytes claiming 20000x20000 (1.2 GB decoded) never reach the decoder; a raw Image claiming
    30000x30000 is refused from its fields, and both from the check the subscriber runs."""
    from helpers import jpeg_size_bomb

    bomb = CompressedImage(format="jpeg", data=jpeg_size_bomb())
    for check in (image_messages.check_compressed, image_messages.message_to_rgb):
        with pytest.raises(InputError, match="20000x20000 = 400000000 pixels; expected at most"):
            check(bomb)
    huge = Image(height=30000, width=30000, encoding="mono8", step=30000)
    with pytest.raises(InputError, match="truncated: 0 bytes, expected step\\*height = 900000000"):
        image_messages.check_image(huge)
    small = _image(RGB, "rgb8")
    with pytest.raises(InputError, match="5x6 = 30 pixels; expected at most max_image_pixels = 29"):
        image_messages.message_to_rgb(small, max_pixels=29)


def test_yuv_and_bayer_convert_through_the_one_message_conversion():
    message = _image(np.zeros((6, 4, 2), np.uint8), "yuv422")
    assert image_messages.message_to_rgb(message).shape == (6, 4, 3)
    bayer = _image(RGB[:, :4, 1].copy(), "bayer_rggb8")
    np.testing.assert_array_equal(image_messages.message_to_rgb(bayer),
                                  cv2.cvtColor(RGB[:, :4, 1].copy(), cv2.COLOR_BAYER_BG2RGB))
