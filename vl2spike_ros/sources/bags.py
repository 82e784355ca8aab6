"""rosbag2 image sequences (sqlite3 and mcap) through rosbags: no ROS install needed."""
import json
import shutil
import sqlite3
import tempfile
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from rosbags.interfaces import Connection
from rosbags.rosbag2 import Reader, StoragePlugin, Writer, WriterError
from rosbags.typesys import Stores, get_typestore
from tqdm import tqdm

from vl2spike_ros.sources.frames import Frame, ImageSequence
from vl2spike_ros.errors import InputError
from vl2spike_ros.core.images import DEFAULT_MAX_IMAGE_PIXELS
from vl2spike_ros.sources.image_messages import message_to_rgb

IMAGE = "sensor_msgs/msg/Image"
COMPRESSED_IMAGE = "sensor_msgs/msg/CompressedImage"
STRING = "std_msgs/msg/String"
IMAGE_TYPES = (IMAGE, COMPRESSED_IMAGE)
# Each image's origin (file name, frame number) travels on its own topic, stamped like the image,
# so header.frame_id stays a real TF frame.
FRAME_SOURCE_TOPIC = "/vl2spike/frame_source"
STORAGES = {"sqlite3": StoragePlugin.SQLITE3, "mcap": StoragePlugin.MCAP}
COMPRESSIONS = ("png", "jpeg")
# Fixed, so that writing the same sequence twice gives the same stamps (2026-01-01T00:00:00Z).
START_STAMP_NS = 1_767_225_600 * 10**9

# Image, CompressedImage and String are the same from Humble to Kilted, so one typestore reads
# bags written by any of them.
TYPESTORE = get_typestore(Stores.ROS2_KILTED)


@contextmanager
def _open_reader(path: Path) -> Iterator[Reader]:
    """An open Reader of the bag at `path`; whatever rosbags, sqlite or the bag's YAML raise about a
    corrupt or incomplete bag, while opening or reading, becomes one InputError naming the bag."""
    try:
        with Reader(path) as reader:
            yield reader
    except InputError:
        raise
    # A broken bag surfaces as many exception types (ReaderError, sqlite3 and YAML errors, struct and
    # Unicode errors from a corrupt mcap); all mean the same to the user.
    except Exception as error:  # noqa: BLE001
        detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise InputError(
            f"rosbag2 {path}: cannot open or read it ({detail}); expected a bag directory with metadata.yaml "
            "or a .db3 / .mcap file"
        ) from None


class BagSequence:
    """The images of one topic of a rosbag2, in recording order."""

    def __init__(self, path: str | Path, topic: str | None = None,
                 max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> None:
        self.path = Path(path)
        self.max_image_pixels = max_image_pixels
        with _open_reader(self.path) as reader:
            self.connection = self._image_connection(reader.connections, topic)
            self.topic = self.connection.topic
            sources = [c for c in reader.connections
                       if c.topic == FRAME_SOURCE_TOPIC and c.msgtype == STRING]
            # A message is found again by its timestamp and its rank among messages sharing it.
            self._keys: list[tuple[int, int]] = []
            rank_at: dict[int, int] = defaultdict(int)
            recorded: dict[tuple[int, int], tuple[str, int]] = {}
            source_rank_at: dict[int, int] = defaultdict(int)
            for connection, timestamp, rawdata in reader.messages([self.connection, *sources]):
                if connection.topic == self.topic:
                    self._keys.append((timestamp, rank_at[timestamp]))
                    rank_at[timestamp] += 1
                else:
                    text = TYPESTORE.deserialize_cdr(rawdata, STRING).data
                    recorded[(timestamp, source_rank_at[timestamp])] = self._parse_source(text)
                    source_rank_at[timestamp] += 1
        if not self._keys:
            raise InputError(f"rosbag2 {self.path}: topic {self.topic} has no messages (expected images)")
        self._frames = self._make_frames(recorded)

    def _image_connection(self, connections: list[Connection], topic: str | None) -> Connection:
        image_connections = [c for c in connections if c.msgtype in IMAGE_TYPES]
        candidates = sorted({c.topic for c in image_connections})
        if topic is None and len(candidates) == 1:
            topic = candidates[0]
        matching = [c for c in image_connections if c.topic == topic]
        if len(matching) != 1:
            wanted = f"topic {topic!r}" if topic is not None else "an image topic"
            raise InputError(
                f"rosbag2 {self.path}: cannot choose {wanted}; expected one of the image topics "
                f"({', '.join(candidates) or 'none: no sensor_msgs Image or CompressedImage'})"
            )
        return matching[0]

    def _parse_source(self, text: str) -> tuple[str, int]:
        try:
            entry = json.loads(text)
            return str(entry["source"]), int(entry["frame"])
        except (ValueError, KeyError, TypeError):
            raise InputError(
                f"rosbag2 {self.path}: {FRAME_SOURCE_TOPIC} message {text[:80]!r}: expected JSON "
                'such as {"index": 0, "source": "images-00210.png", "frame": 210}'
            ) from None

    def _make_frames(self, recorded: dict[tuple[int, int], tuple[str, int]]) -> list[Frame]:
        # Recorded sources count only when every image has one, like frame numbers of a folder.
        use_recorded = all(key in recorded for key in self._keys)
        frames = []
        for index, key in enumerate(self._keys):
            stamp = key[0] / 1e9
            if use_recorded:
                source, number = recorded[key]
                frames.append(Frame(index, source, number, stamp))
            else:
                frames.append(Frame(index, f"{self.topic}#{index}", index, stamp))
        return frames

    @property
    def frames(self) -> list[Frame]:
        return self._frames

    def __len__(self) -> int:
        return len(self._keys)

    def _decode(self, rawdata: bytes) -> np.ndarray:
        try:
            message = TYPESTORE.deserialize_cdr(rawdata, self.connection.msgtype)
        except Exception as error:  # noqa: BLE001 - corrupt CDR bytes raise struct, index or value errors
            raise InputError(f"rosbag2 {self.path}: a {self.connection.msgtype} message on {self.topic} is "
                             f"corrupt ({type(error).__name__}: {error})") from None
        return message_to_rgb(message, self.max_image_pixels)

    def read(self, index: int) -> np.ndarray:
        timestamp, rank = self._keys[index]
        with _open_reader(self.path) as reader:
            connection = next(c for c in reader.connections if c.id == self.connection.id)
            at_stamp = reader.messages([connection], start=timestamp, stop=timestamp + 1)
            for position, (_, _, rawdata) in enumerate(at_stamp):
                if position == rank:
                    return self._decode(rawdata)
        raise InputError(f"rosbag2 {self.path}: image {index} of {self.topic} vanished while reading")

    def __iter__(self) -> Iterator[tuple[Frame, np.ndarray]]:
        for frame, (_, rawdata) in zip(self._frames, self.raw_messages()):
            yield frame, self._decode(rawdata)

    def raw_messages(self) -> Iterator[tuple[int, bytes]]:
        """(bag receive time in ns, serialised CDR bytes) of each image message of `topic`, in
        recording order, undecoded (`vl2spike play` publishes them as recorded). A bag that breaks
        while being read raises InputError naming it."""
        with _open_reader(self.path) as reader:
            connection = next(c for c in reader.connections if c.id == self.connection.id)
            for _, timestamp, rawdata in reader.messages([connection]):
                yield timestamp, bytes(rawdata)


def _image_message(rgb: np.ndarray, header: Any, compression: str | None) -> Any:
    types = TYPESTORE.types
    if compression is None:
        height, width = rgb.shape[:2]
        return types[IMAGE](
            header=header, height=height, width=width, encoding="rgb8", is_bigendian=0,
            step=width * 3, data=np.ascontiguousarray(rgb).reshape(-1),
        )
    ok, encoded = cv2.imencode(f".{compression}", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise InputError(f"image of shape {rgb.shape}: OpenCV cannot encode it as {compression}")
    # The format string compressed_image_transport writes, so ROS tools decode it as usual.
    return types[COMPRESSED_IMAGE](
        header=header, format=f"rgb8; {compression} compressed bgr8", data=encoded.reshape(-1),
    )


def write_bag(
    sequence: ImageSequence,
    out_path: str | Path,
    topic: str | None = None,
    storage: str = "sqlite3",
    compressed: bool = False,
    compression: str = "png",
    rate_hz: float = 10.0,
    frame_id: str = "camera",
    progress: bool = False,
) -> Path:
    """Write `sequence` as a rosbag2 of sensor_msgs Image (rgb8) or CompressedImage messages.

    Stamps start at a fixed time and are 1/rate_hz apart; every image is paired with a
    std_msgs/String on FRAME_SOURCE_TOPIC carrying {"index", "source", "frame"} as JSON.
    The topic defaults to /camera/image_raw, with /compressed appended for compressed images.
    The bag appears at `out_path` only once complete; an existing `out_path` is refused.
    """
    out_path = Path(out_path)
    if out_path.exists():
        raise InputError(f"bag output {out_path}: already exists (expected a new path; not overwriting)")
    if storage not in STORAGES:
        raise InputError(f"bag storage {storage!r}: expected one of {', '.join(STORAGES)}")
    if compressed and compression not in COMPRESSIONS:
        raise InputError(f"bag compression {compression!r}: expected one of {', '.join(COMPRESSIONS)}")
    if not rate_hz > 0:
        raise InputError(f"bag rate {rate_hz} Hz: expected a positive rate")
    if topic is None:
        topic = "/camera/image_raw/compressed" if compressed else "/camera/image_raw"
    msgtype = COMPRESSED_IMAGE if compressed else IMAGE

    out_path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_path.name}.", suffix=".partial", dir=out_path.parent))
    try:
        # Written under its final name inside the staging folder: metadata.yaml names its files.
        staged_bag = staging / out_path.name
        with Writer(staged_bag, version=9, storage_plugin=STORAGES[storage]) as writer:
            image_connection = writer.add_connection(topic, msgtype, typestore=TYPESTORE)
            source_connection = writer.add_connection(FRAME_SOURCE_TOPIC, STRING, typestore=TYPESTORE)
            frames = tqdm(sequence, total=len(sequence), disable=not progress, unit="frame",
                          desc=f"writing {out_path.name}")
            for frame, rgb in frames:
                timestamp = START_STAMP_NS + round(frame.index * 1e9 / rate_hz)
                stamp = TYPESTORE.types["builtin_interfaces/msg/Time"](
                    sec=timestamp // 10**9, nanosec=timestamp % 10**9)
                header = TYPESTORE.types["std_msgs/msg/Header"](stamp=stamp, frame_id=frame_id)
                message = _image_message(rgb, header, compression if compressed else None)
                writer.write(image_connection, timestamp, TYPESTORE.serialize_cdr(message, msgtype))
                source = json.dumps({"index": frame.index, "source": frame.source, "frame": frame.frame})
                writer.write(source_connection, timestamp,
                             TYPESTORE.serialize_cdr(TYPESTORE.types[STRING](data=source), STRING))
        staged_bag.rename(out_path)
    # A full disk or read-only folder reaches us as sqlite's or rosbags' own errors, not only OSError.
    except (OSError, sqlite3.Error, WriterError) as error:
        raise InputError(f"bag output {out_path}: cannot write it ({error}); is the disk full or the "
                         "folder read-only?") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_path
