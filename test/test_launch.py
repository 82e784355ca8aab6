"""launch/vpr.launch.py under launch_testing, on a ROS 2 install with the package built by colcon:
for transport raw and compressed, the launched vpr_node becomes active on the remapped topic, answers
a published photograph on ~/match with the map place it came from (with the top_k and
match_threshold given as launch arguments), and exits cleanly at shutdown.

Run it with pytest (launch_testing's plugin collects it; pytest 8, see docs/ros_interface.md) or with
`launch_test test/test_launch.py`. Self-contained: it imports no sibling test module, so it runs
without PYTHONPATH=test. DDS stays on loopback; a ROS_DOMAIN_ID given by the caller is kept. Where
launch_testing does not import (pip installs) it skips with the reason; a failing map path and the
argument table are checked in test_launch_file.py (pytest collects only the launch test here).
"""
import atexit
import json
import os
import shutil
import tempfile
import time
import unittest
from functools import cache
from pathlib import Path

import pytest

os.environ.update(ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST", ROS_LOCALHOST_ONLY="1")
os.environ.setdefault("ROS_DOMAIN_ID", str(1 + os.getpid() % 100))

LAUNCH_FILE = Path(__file__).resolve().parents[1] / "launch" / "vpr.launch.py"
NAMESPACE = f"/vpr_launch_test_{os.getpid()}"
IMAGE_TOPIC = "camera/image_raw"  # relative: resolves inside NAMESPACE
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")  # real photographs shipped with scikit-image
QUERY = 2  # the photo published as the query; its place id in the map
TOP_K = 3  # below the map size and the default 5: shows that the typed launch argument reached the node

try:
    import launch
    import launch_testing
    import launch_testing.actions
    import launch_testing.asserts
    from launch.actions import IncludeLaunchDescription
    from launch.launch_description_sources import PythonLaunchDescriptionSource

    LAUNCH_TESTING_ERROR = None
except ImportError as error:  # pip installs: no launch or launch_testing wheels
    LAUNCH_TESTING_ERROR = f"launch_testing is not importable here ({error}); it runs on a ROS 2 install"


def _photo(name: str):
    import cv2
    import numpy as np
    import skimage.data

    image = getattr(skimage.data, name)()
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    return cv2.resize(np.ascontiguousarray(image[:, :, :3]), (160, 120), interpolation=cv2.INTER_AREA)


@cache
def _reference_map() -> Path:
    """A map of the photos built with the shipped model (the node's default model), in a temporary
    folder removed when the test process exits, whichever way the launch ended."""
    import cv2

    from vl2spike_ros.core.encoder import DescriptorEncoder
    from vl2spike_ros.evaluation.runner import build_map
    from vl2spike_ros.sources.traverses import open_sequence

    work = Path(tempfile.mkdtemp(prefix="vl2spike_launch_test_"))
    atexit.register(shutil.rmtree, work, ignore_errors=True)
    images = work / "images"
    images.mkdir()
    for index, name in enumerate(PHOTOS):
        cv2.imwrite(str(images / f"images-{index:05d}.png"), cv2.cvtColor(_photo(name), cv2.COLOR_RGB2BGR))
    build_map(DescriptorEncoder(), open_sequence(images), progress=False).save(work / "map")
    return work / "map"


def _first_match(transport: str, timeout_s: float) -> dict | None:
    """Publish the query photo on the node's input (re-sent until an answer: discovery takes a
    moment and the input is best effort) and return the first ~/match JSON."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import CompressedImage, Image
    from std_msgs.msg import String

    from vl2spike_ros.ros.image_messages import rgb_to_compressed, rgb_to_image

    context = rclpy.Context()
    rclpy.init(context=context)
    node = rclpy.create_node("vl2spike_launch_test_probe", context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    try:
        matches = []
        node.create_subscription(String, f"{NAMESPACE}/vpr_node/match", lambda m: matches.append(m.data), 10)
        topic = f"{NAMESPACE}/{IMAGE_TOPIC}"
        if transport == "compressed":
            publisher = node.create_publisher(CompressedImage, f"{topic}/compressed", qos_profile_sensor_data)
            message = rgb_to_compressed(_photo(PHOTOS[QUERY]))
        else:
            publisher = node.create_publisher(Image, topic, qos_profile_sensor_data)
            message = rgb_to_image(_photo(PHOTOS[QUERY]))
        deadline = time.monotonic() + timeout_s
        next_publish = 0.0
        while not matches and time.monotonic() < deadline:
            if time.monotonic() >= next_publish:
                publisher.publish(message)
                next_publish = time.monotonic() + 0.5
            executor.spin_once(timeout_sec=0.05)
        return json.loads(matches[0]) if matches else None
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown(context=context)


if LAUNCH_TESTING_ERROR is None:

    @pytest.mark.launch_test
    @launch_testing.parametrize("transport", ("raw", "compressed"))
    def generate_test_description(transport):
        from ament_index_python.packages import PackageNotFoundError, get_package_prefix

        try:
            get_package_prefix("vl2spike_ros")
        except PackageNotFoundError:
            raise unittest.SkipTest("vl2spike_ros is not in the ament index: build it with colcon and "
                                    "source install/setup.bash") from None
        include = IncludeLaunchDescription(
            PythonLaunchDescriptionSource(str(LAUNCH_FILE)),
            launch_arguments={"map_path": str(_reference_map()), "namespace": NAMESPACE,
                              "image_topic": IMAGE_TOPIC, "transport": transport, "top_k": str(TOP_K),
                              "match_threshold": "0.5"}.items())
        return launch.LaunchDescription([include, launch_testing.actions.ReadyToTest()])

    class TestVprLaunch(unittest.TestCase):
        def test_a_published_frame_is_matched_to_its_place(self, proc_output, transport):
            listening = f"{NAMESPACE}/{IMAGE_TOPIC}" + ("/compressed" if transport == "compressed" else "")
            proc_output.assertWaitFor(f"active: listening on {listening} ({transport})", timeout=180)
            match = _first_match(transport, timeout_s=60)
            self.assertIsNotNone(match, "no ~/match within 60 s of publishing")
            self.assertEqual(match["map_size"], len(PHOTOS))
            self.assertEqual(match["place_ids"][0], QUERY, match)
            self.assertEqual(len(match["place_ids"]), TOP_K, match)
            self.assertTrue(match["accepted"], match)  # its own photo scores above match_threshold 0.5
            self.assertEqual(match["best_place"]["source"], f"images-{QUERY:05d}.png", match)

    @launch_testing.post_shutdown_test()
    class TestVprLaunchShutdown(unittest.TestCase):
        def test_exit_code(self, proc_info):
            launch_testing.asserts.assertExitCodes(proc_info)
else:
    def test_launch_testing():
        pytest.skip(LAUNCH_TESTING_ERROR)
