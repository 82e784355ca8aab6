"""`make-bag` and `play`: a folder becomes a rosbag2 that keeps every frame's source, and `play`
publishes it over DDS (loopback) at the chosen rate, as the commands are run by users."""
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest

import node_fixtures as support  # loopback ROS environment before rclpy starts
from vl2spike_ros.sources.bags import BagSequence
from vl2spike_ros.sources.image_folders import ImageFolderSequence
from vl2spike_ros.cli import main as replay_main

FRAMES = (100, 110, 120, 130, 140, 150)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("replay_images")
    rng = np.random.default_rng(1)
    for frame in FRAMES:
        cv2.imwrite(str(path / f"images-{frame:05d}.png"), rng.integers(0, 256, (32, 64, 3), dtype=np.uint8))
    return path


@pytest.mark.parametrize("storage, compressed", [("sqlite3", False), ("mcap", True)])
def test_make_bag_keeps_sources(folder, tmp_path, storage, compressed):
    out = tmp_path / "bag"
    argv = ["make-bag", "--images", str(folder), "--out", str(out), "--storage", storage, "--rate", "5"]
    assert replay_main(argv + (["--compressed"] if compressed else [])) == 0
    bag = BagSequence(out)
    assert bag.topic == ("/camera/image_raw/compressed" if compressed else "/camera/image_raw")
    assert [f.frame for f in bag.frames] == list(FRAMES)
    assert [f.source for f in bag.frames] == [f"images-{n:05d}.png" for n in FRAMES]
    assert np.diff([f.stamp for f in bag.frames]) == pytest.approx([0.2] * 5)
    reference = ImageFolderSequence(folder)
    for index in range(len(FRAMES)):
        np.testing.assert_array_equal(bag.read(index), reference.read(index))  # png: lossless
    # An existing output is refused with one clear line.
    assert replay_main(argv) == 2


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert replay_main(["make-bag", "--images", str(tmp_path / "none"), "--out", str(tmp_path / "b")]) == 2
    assert "no such folder or bag" in capsys.readouterr().err
    assert replay_main(["play", str(tmp_path / "none.mcap")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_play_publishes_the_bag_at_the_chosen_rate(folder, tmp_path):
    pytest.importorskip("rclpy", reason="rclpy (ROS 2) is not installed")
    from sensor_msgs.msg import Image

    from vl2spike_ros.sources.image_messages import image_to_rgb

    bag = tmp_path / "bag"
    assert replay_main(["make-bag", "--images", str(folder), "--out", str(bag)]) == 0
    probe = support.Probe("replay_probe")
    try:
        received = probe.collect(Image, "/replay_test/image", lambda m: (time.monotonic(), m))
        command = [sys.executable, "-m", "vl2spike_ros.cli", "play", str(bag), "--to",
                   "/replay_test/image", "--rate", "20", "--wait-subscribers", "1", "--wait-timeout", "60"]
        result = subprocess.run(command, capture_output=True, text=True, timeout=120,
                                env={**__import__("os").environ, **support.ROS_ENV})
        assert result.returncode == 0, result.stderr
        assert "published 6 images" in result.stdout
        assert probe.wait_until(lambda: len(received) == len(FRAMES), 5.0), len(received)
    finally:
        probe.close()
    expected = BagSequence(bag)
    times = [t for t, _ in received]
    assert times[-1] - times[0] == pytest.approx(5 / 20, abs=0.2)  # 20 Hz
    reference = ImageFolderSequence(folder)
    for index, (_, message) in enumerate(received):
        stamp = message.header.stamp.sec + message.header.stamp.nanosec * 1e-9
        assert stamp == pytest.approx(expected.frames[index].stamp)
        assert message.header.frame_id == "camera"
        np.testing.assert_array_equal(image_to_rgb(message), reference.read(index))
