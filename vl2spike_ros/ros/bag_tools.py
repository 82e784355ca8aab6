"""`vl2spike make-bag` and `vl2spike play`: rosbag2 files through rosbags (no ROS install needed) and
publishing a bag's images to a live topic with rclpy, for machines without `ros2 bag play`.

`add_replay_commands(subparsers)` registers both sub-commands on the `vl2spike` parser.
rclpy is imported only when `play` runs, so `make-bag` and `--help` work without ROS.
"""
from __future__ import annotations

import argparse
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vl2spike_ros.cli_arguments import bounded_float, bounded_int, require_writable_folder
from vl2spike_ros.errors import InputError

DEFAULT_PLAY_TOPIC = "image"
ACK_TIMEOUT_S = 5.0  # how long `play` waits for subscribers to acknowledge its last messages


MAX_RATE_HZ = 10_000.0
MAX_WAIT_S = 86_400.0
MAX_SUBSCRIBERS = 10_000
# ROS 2 topic names: tokens of letters, digits and underscores (not starting with a digit) joined by
# '/', optionally absolute ('/') or private ('~/'); no empty token, no trailing '/'.
_TOPIC_NAME = re.compile(r"(~/|/)?[A-Za-z_][A-Za-z0-9_]*(/[A-Za-z_][A-Za-z0-9_]*)*")


def check_topic_name(name: str, option: str) -> str:
    """`name` when it is a valid ROS 2 topic name; InputError naming `option` otherwise."""
    if not _TOPIC_NAME.fullmatch(name) or "__" in name:
        raise InputError(f"{option} {name[:80]!r}: not a valid ROS 2 topic name (expected letters, digits "
                         "and underscores in '/'-separated tokens not starting with a digit, "
                         "e.g. /camera/image_raw)")
    return name


# --- make-bag ---------------------------------------------------------------------------------------
def make_bag(images: str | Path, out: str | Path, topic: str | None = None, storage: str = "sqlite3",
             compressed: bool = False, compression: str = "png", rate_hz: float = 10.0,
             frame_id: str = "camera", input_topic: str | None = None, progress: bool = False) -> Path:
    """An image folder (Nordland layout) or another bag -> a new rosbag2 keeping each frame's source."""
    from vl2spike_ros.sources.bags import write_bag
    from vl2spike_ros.sources.traverses import open_sequence

    if not Path(images).exists():
        raise InputError(f"images {images}: no such folder or bag")
    sequence = open_sequence(images, input_topic)
    return write_bag(sequence, out, topic=topic, storage=storage, compressed=compressed,
                     compression=compression, rate_hz=rate_hz, frame_id=frame_id, progress=progress)


def cmd_make_bag(args: argparse.Namespace) -> int:
    if args.topic is not None:
        check_topic_name(args.topic, "--topic")
    require_writable_folder(Path(args.out), "bag output")
    out = make_bag(args.images, args.out, topic=args.topic, storage=args.storage,
                   compressed=args.compressed, compression=args.compression, rate_hz=args.rate,
                   frame_id=args.frame_id, input_topic=args.input_topic, progress=True)
    kind = f"CompressedImage ({args.compression})" if args.compressed else "Image (rgb8)"
    print(f"wrote {out} ({args.storage}, {kind})")
    return 0


# --- play -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BagMessage:
    """One image message of a bag, serialised (CDR) as recorded, with its header stamp."""

    index: int
    timestamp_ns: int   # bag receive time
    stamp_ns: int       # header.stamp
    msgtype: str        # sensor_msgs/msg/Image or sensor_msgs/msg/CompressedImage
    rawdata: bytes


def bag_messages(bag: str | Path, topic: str | None = None) -> tuple[str, str, Iterator[BagMessage]]:
    """(topic, msgtype, iterator over the image messages) of a bag's image topic, in recording order."""
    from vl2spike_ros.sources.bags import TYPESTORE, BagSequence

    sequence = BagSequence(bag, topic)  # validates the bag and chooses the image topic
    msgtype = sequence.connection.msgtype

    def iterate() -> Iterator[BagMessage]:
        for index, (timestamp, rawdata) in enumerate(sequence.raw_messages()):
            header = TYPESTORE.deserialize_cdr(rawdata, msgtype).header
            stamp = header.stamp.sec * 10**9 + header.stamp.nanosec
            yield BagMessage(index, timestamp, stamp, msgtype, rawdata)

    return sequence.topic, msgtype, iterate()


def restamped(message: BagMessage, stamp_ns: int) -> bytes:
    """The message's CDR bytes with header.stamp replaced."""
    from vl2spike_ros.sources.bags import TYPESTORE

    decoded = TYPESTORE.deserialize_cdr(message.rawdata, message.msgtype)
    decoded.header.stamp.sec, decoded.header.stamp.nanosec = divmod(stamp_ns, 10**9)
    return bytes(TYPESTORE.serialize_cdr(decoded, message.msgtype))


def ros_message_class(msgtype: str) -> Any:
    from sensor_msgs.msg import CompressedImage, Image

    return {"sensor_msgs/msg/Image": Image, "sensor_msgs/msg/CompressedImage": CompressedImage}[msgtype]


def wait_for_subscribers(node: Any, publisher: Any, count: int, timeout_s: float,
                         alive: Callable[[], bool] = lambda: True) -> bool:
    """Wait (without spinning `node`) until `publisher` has `count` subscribers; False on timeout."""
    deadline = time.monotonic() + timeout_s
    while publisher.get_subscription_count() < count:
        if time.monotonic() > deadline or not alive():
            return False
        time.sleep(0.05)
    return True


def play_bag(node: Any, bag: str | Path, out_topic: str = DEFAULT_PLAY_TOPIC, topic: str | None = None,
             rate_hz: float = 0.0, restamp: bool = False, loop: bool = False,
             wait_subscribers: int = 0, wait_timeout_s: float = 30.0, qos_depth: int = 10,
             on_publish: Callable[[BagMessage, float], None] | None = None,
             stop: threading.Event | None = None, progress: bool = False,
             publisher: Any = None) -> int:
    """Publish a bag's images on `out_topic` through `node` (an rclpy Node); returns how many.

    rate_hz > 0: a fixed rate; 0: the recorded timing. Messages go out as recorded (serialised
    bytes, original header stamps) unless `restamp`, which stamps them with the node's clock.
    `on_publish(message, monotonic_time)` is called after each publish (the live demo uses it).
    `publisher`: an existing publisher of the bag's message type to use (kept), instead of a new one.
    """
    from rclpy.duration import Duration
    from rclpy.qos import QoSProfile, ReliabilityPolicy

    if rate_hz < 0:
        raise InputError(f"play rate {rate_hz} Hz: expected a rate > 0, or 0 for the recorded timing")
    bag_topic, msgtype, _ = bag_messages(bag, topic)
    # Reliable publishers match both reliable and best-effort (sensor QoS) subscribers.
    qos = QoSProfile(depth=qos_depth, reliability=ReliabilityPolicy.RELIABLE)
    own_publisher = publisher is None
    if own_publisher:
        publisher = node.create_publisher(ros_message_class(msgtype), out_topic, qos)
    try:
        if wait_subscribers and not wait_for_subscribers(node, publisher, wait_subscribers, wait_timeout_s):
            raise InputError(f"play: no subscriber on {publisher.topic_name} after {wait_timeout_s:g} s")
        published = 0
        stop = stop or threading.Event()
        while not stop.is_set():
            _, _, messages = bag_messages(bag, topic)
            start_wall = time.monotonic()
            first_timestamp = None
            for message in messages:
                if stop.is_set():
                    break
                if first_timestamp is None:
                    first_timestamp = message.timestamp_ns
                offset = (message.index / rate_hz if rate_hz > 0
                          else (message.timestamp_ns - first_timestamp) / 1e9)
                delay = start_wall + offset - time.monotonic()
                if delay > 0:
                    stop.wait(delay)
                data = message.rawdata
                if restamp:
                    data = restamped(message, node.get_clock().now().nanoseconds)
                publisher.publish(data)
                published += 1
                if on_publish is not None:
                    on_publish(message, time.monotonic())
                if progress and published % 100 == 0:
                    print(f"play: {published} images published on {publisher.topic_name}", flush=True)
            if not loop:
                break
        if own_publisher:
            # Reliable delivery of the last messages before the publisher goes away.
            publisher.wait_for_all_acked(Duration(seconds=ACK_TIMEOUT_S))
        return published
    finally:
        if own_publisher:
            node.destroy_publisher(publisher)


def cmd_play(args: argparse.Namespace) -> int:
    import rclpy
    from rclpy.executors import ExternalShutdownException

    check_topic_name(args.to, "--to")
    if not Path(args.bag).exists():
        raise InputError(f"bag {args.bag}: no such file or directory")
    bag_messages(args.bag, args.topic)  # refuse a bad bag before starting ROS
    rclpy.init(args=None)
    node = rclpy.create_node("vl2spike_play")
    try:
        count = play_bag(node, args.bag, out_topic=args.to, topic=args.topic, rate_hz=args.rate,
                         restamp=args.restamp, loop=args.loop, wait_subscribers=args.wait_subscribers,
                         wait_timeout_s=args.wait_timeout, progress=True)
    except (KeyboardInterrupt, ExternalShutdownException):
        print("play: interrupted")
        return 130
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    print(f"play: published {count} images from {args.bag} on {args.to}")
    return 0


def add_replay_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register `make-bag` and `play` on the `vl2spike` sub-command parsers."""
    make = subparsers.add_parser(
        "make-bag", help="write an image folder (or Nordland traverse) as a rosbag2",
        description="Write an image folder (Nordland layout) or another bag as a rosbag2 of "
                    "sensor_msgs Image (rgb8) or CompressedImage, sqlite3 or mcap. Each image's "
                    "source file and frame number travel on /vl2spike/frame_source, so build-map "
                    "and evaluate on the bag give the same results as on the folder.")
    make.add_argument("--images", required=True, help="image folder (Nordland layout) or rosbag2")
    make.add_argument("--input-topic", default=None, help="image topic when --images is a bag with several")
    make.add_argument("--out", required=True, help="bag to write (a new directory; refused if it exists)")
    make.add_argument("--storage", choices=("sqlite3", "mcap"), default="sqlite3",
                      help="rosbag2 storage (default sqlite3)")
    make.add_argument("--compressed", action="store_true", help="write sensor_msgs/CompressedImage")
    make.add_argument("--compression", choices=("png", "jpeg"), default="png",
                      help="codec with --compressed (default png, lossless)")
    make.add_argument("--topic", default=None,
                      help="image topic (default /camera/image_raw, or /camera/image_raw/compressed)")
    make.add_argument("--rate", type=bounded_float(0.0, MAX_RATE_HZ, low_inclusive=False), default=10.0,
                      help="frames per second for the stamps (default 10)")
    make.add_argument("--frame-id", default="camera", help="header.frame_id (default camera)")
    make.set_defaults(func=cmd_make_bag)

    play = subparsers.add_parser(
        "play", help="publish a bag's images on a live ROS 2 topic",
        description="Publish the images of a rosbag2 on a live topic with rclpy, at a fixed rate or "
                    "as recorded: `ros2 bag play` for machines without ROS 2 installed (pip rclpy).")
    play.add_argument("bag", help="rosbag2 directory or .db3 / .mcap file")
    play.add_argument("--topic", default=None, help="image topic in the bag (needed when it has several)")
    play.add_argument("--to", default=DEFAULT_PLAY_TOPIC,
                      help="topic to publish on (default 'image', vpr_node's input; use "
                           "image/compressed for CompressedImage bags)")
    play.add_argument("--rate", type=bounded_float(0.0, MAX_RATE_HZ), default=0.0,
                      help="frames per second; 0 replays the recorded timing (default 0)")
    play.add_argument("--restamp", action="store_true", help="stamp messages with the current time")
    play.add_argument("--loop", action="store_true", help="start over at the end until interrupted")
    play.add_argument("--wait-subscribers", type=bounded_int(0, MAX_SUBSCRIBERS), default=0, metavar="N",
                      help="wait for N subscribers before publishing (default 0)")
    play.add_argument("--wait-timeout", type=bounded_float(0.0, MAX_WAIT_S, low_inclusive=False), default=30.0,
                      help="seconds to wait for --wait-subscribers (default 30)")
    play.set_defaults(func=cmd_play)
