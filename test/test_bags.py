"""rosbag2 round trips on real bags (sqlite3 and mcap) written with rosbags, nothing mocked."""
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data
from rosbags.rosbag2 import Reader, Writer
from rosbags.typesys import Stores, get_typestore

from vl2spike_ros.sources.bags import FRAME_SOURCE_TOPIC, BagSequence, write_bag
from vl2spike_ros.sources.image_folders import ImageFolderSequence
from vl2spike_ros.sources.traverses import open_sequence
from vl2spike_ros.errors import InputError

NUMBERS = (210, 220, 230, 240, 250)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> ImageFolderSequence:
    path = tmp_path_factory.mktemp("images")
    photo = skimage.data.coffee()
    for i, number in enumerate(NUMBERS):
        crop = photo[40 * i:40 * i + 32, 60 * i:60 * i + 64]
        cv2.imwrite(str(path / f"images-{number:05d}.png"), cv2.cvtColor(crop, cv2.COLOR_RGB2BGR))
    return ImageFolderSequence(path)


@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
@pytest.mark.parametrize("compressed", [False, True])
def test_folder_to_bag_to_sequence_is_exact(tmp_path: Path, folder, storage, compressed):
    bag_path = write_bag(folder, tmp_path / "bag", storage=storage, compressed=compressed,
                         compression="png", rate_hz=20.0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bag"]  # no staging folder left behind
    bag = open_sequence(bag_path)
    assert isinstance(bag, BagSequence)
    assert bag.topic == ("/camera/image_raw/compressed" if compressed else "/camera/image_raw")
    assert len(bag) == len(folder)
    assert [(f.index, f.source, f.frame) for f in bag.frames] == [
        (f.index, f.source, f.frame) for f in folder.frames]
    assert np.allclose(np.diff([f.stamp for f in bag.frames]), 0.05)
    for (_, expected), (_, image) in zip(folder, bag):
        assert np.array_equal(image, expected)
    assert np.array_equal(bag.read(3), folder.read(3))


def test_raw_messages_are_the_recorded_bytes(tmp_path: Path, folder):
    bag = BagSequence(write_bag(folder, tmp_path / "bag", rate_hz=20.0))
    raw = list(bag.raw_messages())
    assert [timestamp - raw[0][0] for timestamp, _ in raw] == [index * 50_000_000 for index in range(len(folder))]
    typestore = get_typestore(Stores.ROS2_KILTED)
    with Reader(tmp_path / "bag") as reader:
        images = [c for c in reader.connections if c.topic == bag.topic]
        assert [bytes(data) for _, _, data in reader.messages(images)] == [data for _, data in raw]
    message = typestore.deserialize_cdr(raw[2][1], "sensor_msgs/msg/Image")
    assert np.array_equal(message.data.reshape(message.height, message.width, 3), folder.read(2))
    db3 = next((tmp_path / "bag").glob("*.db3"))
    db3.write_bytes(db3.read_bytes()[:4096])  # broken after opening: still one InputError
    with pytest.raises(InputError, match="cannot open or read"):
        list(bag.raw_messages())


def test_single_storage_file_opens_as_bag(tmp_path: Path, folder):
    write_bag(folder, tmp_path / "bag", storage="mcap")
    bag = open_sequence(tmp_path / "bag" / "bag.mcap")
    assert isinstance(bag, BagSequence) and bag.frames[4].frame == 250


def test_jpeg_bag_is_close_and_keeps_frame_id(tmp_path: Path, folder):
    bag = BagSequence(write_bag(folder, tmp_path / "bag", compressed=True, compression="jpeg",
                                frame_id="front_camera"))
    for (_, expected), (_, image) in zip(folder, bag):
        assert np.abs(image.astype(int) - expected).mean() < 8
    typestore = get_typestore(Stores.ROS2_KILTED)
    with Reader(tmp_path / "bag") as reader:
        connection = next(c for c in reader.connections if c.topic == bag.topic)
        _, _, rawdata = next(reader.messages([connection]))
        message = typestore.deserialize_cdr(rawdata, connection.msgtype)
    assert message.header.frame_id == "front_camera"
    assert message.format == "rgb8; jpeg compressed bgr8"


def test_bad_write_requests_are_refused(tmp_path: Path, folder):
    (tmp_path / "taken").mkdir()
    with pytest.raises(InputError, match="taken: already exists"):
        write_bag(folder, tmp_path / "taken")
    with pytest.raises(InputError, match="'rosbag1'.*sqlite3, mcap"):
        write_bag(folder, tmp_path / "a", storage="rosbag1")
    with pytest.raises(InputError, match="'webp'.*png, jpeg"):
        write_bag(folder, tmp_path / "b", compressed=True, compression="webp")
    with pytest.raises(InputError, match="rate 0"):
        write_bag(folder, tmp_path / "c", rate_hz=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


def write_humble_bag(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A bag as Humble writes it: two image topics (mono8, bayer), no frame sources."""
    typestore = get_typestore(Stores.ROS2_HUMBLE)
    types = typestore.types
    gray = skimage.data.camera()[:32, :64].copy()
    bayer = skimage.data.astronaut()[:32, :64, 1].copy()

    def image(pixels: np.ndarray, encoding: str, sec: int):
        header = types["std_msgs/msg/Header"](
            stamp=types["builtin_interfaces/msg/Time"](sec=sec, nanosec=0), frame_id="camera")
        return types["sensor_msgs/msg/Image"](
            header=header, height=32, width=64, encoding=encoding, is_bigendian=0, step=64,
            data=pixels.reshape(-1))

    with Writer(path, version=8) as writer:
        left = writer.add_connection("/left/image_raw", "sensor_msgs/msg/Image", typestore=typestore)
        right = writer.add_connection("/right/image_raw", "sensor_msgs/msg/Image", typestore=typestore)
        for sec in (100, 101, 102):
            writer.write(left, sec * 10**9, typestore.serialize_cdr(
                image(gray, "mono8", sec), "sensor_msgs/msg/Image"))
            writer.write(right, sec * 10**9, typestore.serialize_cdr(
                image(bayer, "bayer_rggb8", sec), "sensor_msgs/msg/Image"))
    return gray, bayer


def test_humble_bag_with_two_topics(tmp_path: Path):
    gray, bayer = write_humble_bag(tmp_path / "humble")
    with pytest.raises(InputError, match=r"cannot choose an image topic.*/left/image_raw, /right/image_raw"):
        BagSequence(tmp_path / "humble")
    with pytest.raises(InputError, match=r"cannot choose topic '/cam'.*/left/image_raw"):
        BagSequence(tmp_path / "humble", topic="/cam")
    left = BagSequence(tmp_path / "humble", topic="/left/image_raw")
    assert [(f.source, f.frame, f.stamp) for f in left.frames] == [
        ("/left/image_raw#0", 0, 100.0), ("/left/image_raw#1", 1, 101.0), ("/left/image_raw#2", 2, 102.0)]
    assert np.array_equal(left.read(2), np.repeat(gray[:, :, None], 3, axis=2))
    right = BagSequence(tmp_path / "humble", topic="/right/image_raw")
    assert np.array_equal(right.read(0), cv2.cvtColor(bayer, cv2.COLOR_BAYER_BG2RGB))


def test_sources_ignored_unless_every_image_has_one(tmp_path: Path, folder):
    typestore = get_typestore(Stores.ROS2_KILTED)
    image_bytes = typestore.serialize_cdr(typestore.types["sensor_msgs/msg/CompressedImage"](
        header=typestore.types["std_msgs/msg/Header"](
            stamp=typestore.types["builtin_interfaces/msg/Time"](sec=1, nanosec=0), frame_id="camera"),
        format="png", data=cv2.imencode(".png", skimage.data.camera())[1].reshape(-1)),
        "sensor_msgs/msg/CompressedImage")
    source = json.dumps({"index": 0, "source": "images-00210.png", "frame": 210})
    with Writer(tmp_path / "partial", version=9) as writer:
        images = writer.add_connection("/image/compressed", "sensor_msgs/msg/CompressedImage",
                                       typestore=typestore)
        sources = writer.add_connection(FRAME_SOURCE_TOPIC, "std_msgs/msg/String", typestore=typestore)
        writer.write(images, 10, image_bytes)
        writer.write(sources, 10, typestore.serialize_cdr(
            typestore.types["std_msgs/msg/String"](data=source), "std_msgs/msg/String"))
        writer.write(images, 20, image_bytes)
    bag = BagSequence(tmp_path / "partial")
    assert [(f.source, f.frame) for f in bag.frames] == [
        ("/image/compressed#0", 0), ("/image/compressed#1", 1)]


def test_corrupt_compressed_image_and_missing_bag(tmp_path: Path):
    typestore = get_typestore(Stores.ROS2_KILTED)
    broken = typestore.types["sensor_msgs/msg/CompressedImage"](
        header=typestore.types["std_msgs/msg/Header"](
            stamp=typestore.types["builtin_interfaces/msg/Time"](sec=1, nanosec=0), frame_id="camera"),
        format="jpeg", data=np.frombuffer(b"\xff\xd8 truncated", np.uint8))
    with Writer(tmp_path / "broken", version=9) as writer:
        connection = writer.add_connection("/image/compressed", "sensor_msgs/msg/CompressedImage",
                                           typestore=typestore)
        writer.write(connection, 10, typestore.serialize_cdr(broken, "sensor_msgs/msg/CompressedImage"))
    with pytest.raises(InputError, match="format 'jpeg'.*cannot decode"):
        BagSequence(tmp_path / "broken").read(0)
    with pytest.raises(InputError, match="nothing.db3: cannot open or read"):
        BagSequence(tmp_path / "nothing.db3")


def test_malformed_frame_source_is_refused(tmp_path: Path, folder):
    typestore = get_typestore(Stores.ROS2_KILTED)
    write_bag(folder, tmp_path / "good")
    with Writer(tmp_path / "bad", version=9) as writer, Reader(tmp_path / "good") as reader:
        copies = {c.id: writer.add_connection(c.topic, c.msgtype, typestore=typestore)
                  for c in reader.connections}
        for connection, timestamp, rawdata in reader.messages():
            if connection.topic == FRAME_SOURCE_TOPIC:
                rawdata = typestore.serialize_cdr(
                    typestore.types["std_msgs/msg/String"](data="{not json"), "std_msgs/msg/String")
            writer.write(copies[connection.id], timestamp, rawdata)
    with pytest.raises(InputError, match="frame_source message '{not json': expected JSON"):
        BagSequence(tmp_path / "bad")
