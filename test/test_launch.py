"""launch/vpr.launch.py end to end under launch_testing, as a ROS user runs it.

One launch serves the module: two vpr_node instances from the launch file, each in its own namespace
with a map of four photographs. The first starts itself (`transport:=raw`); the second is launched
with `autostart:=false transport:=compressed` and is brought up through its lifecycle services
(configure, activate). Each must answer a published photograph on ~/match with the map place it
came from, with the top_k and match_threshold given as launch arguments. The same test class runs
`ros2 launch` itself: a map that is unset or missing (set in a params_file) makes it exit non-zero
with the reason, and Ctrl-C (SIGINT to its process group, twice) ends it with exit code 0 and the
node `finalized`. After the launch, both nodes must have ended cleanly.

Run it with pytest (launch_testing's plugin collects it; pytest 8) or `launch_test test/test_launch.py`.
The package comes from the ament index when a colcon install of it is sourced; otherwise (a venv with
`pip install -e .`, as `make test` makes) this source tree is indexed through a temporary prefix.
Where launch_testing does not import (no ROS 2 launch stack) it skips with the reason. DDS stays on
loopback; a ROS_DOMAIN_ID given by the caller is kept.
"""
import atexit
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest
from functools import cache
from pathlib import Path

import pytest
import yaml

# launch_test runs this file alone: its folder holds the shared ROS test helpers.
sys.path.insert(0, str(Path(__file__).resolve().parent))
import node_fixtures as support  # noqa: E402  (loopback ROS environment before rclpy starts)

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "vl2spike_ros"
RAW_NS = f"/vpr_launch_raw_{os.getpid()}"
LIFECYCLE_NS = f"/vpr_launch_lifecycle_{os.getpid()}"
IMAGE_TOPIC = "camera/image_raw"  # relative: resolves inside the namespace
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")  # real photographs shipped with scikit-image
QUERY = 2  # the photo published as the query; its place id in the map
TOP_K = 3  # below the map size and the default 5: shows that the typed launch argument reached the node
# A process started in the background from a script inherits SIGINT as ignored, and launch would then
# ignore Ctrl-C: `ros2 launch` starts with SIGINT at its default, as from a terminal.
SIGINT_DEFAULT_EXEC = ("import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
                       "os.execv(sys.argv[1], sys.argv[1:])")

try:
    import launch
    import launch_testing
    import launch_testing.actions
    import launch_testing.asserts
    from launch.actions import GroupAction, IncludeLaunchDescription
    from launch.launch_description_sources import PythonLaunchDescriptionSource
    from launch_ros.substitutions import FindPackageShare

    LAUNCH_TESTING_ERROR = None
except ImportError as error:  # no ROS 2 launch stack here
    LAUNCH_TESTING_ERROR = (f"launch_testing is not importable here ({error}); it runs on a ROS 2 install, or in "
                            "a venv from `make venv` where ../shared/ros2-launch exists")


def _photo(name: str):
    import cv2
    import numpy as np
    import skimage.data

    image = getattr(skimage.data, name)()
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    return cv2.resize(np.ascontiguousarray(image[:, :, :3]), (160, 120), interpolation=cv2.INTER_AREA)


@cache
def _work_dir() -> Path:
    work = Path(tempfile.mkdtemp(prefix="vl2spike_launch_test_"))
    atexit.register(shutil.rmtree, work, ignore_errors=True)
    return work


@cache
def _reference_map() -> Path:
    """A map of the photos built with the shipped model (the node's default model)."""
    import cv2

    from vl2spike_ros.core.encoder import DescriptorEncoder
    from vl2spike_ros.evaluation.runner import build_map
    from vl2spike_ros.sources.traverses import open_sequence

    images = _work_dir() / "images"
    images.mkdir()
    for index, name in enumerate(PHOTOS):
        cv2.imwrite(str(images / f"images-{index:05d}.png"), cv2.cvtColor(_photo(name), cv2.COLOR_RGB2BGR))
    build_map(DescriptorEncoder(), open_sequence(images), progress=False).save(_work_dir() / "map")
    return _work_dir() / "map"


@cache
def _index_package() -> None:
    """Makes `vl2spike_ros` resolvable as `ros2 launch` resolves it: the launch file and config under
    share/, the executable at lib/vl2spike_ros/vpr_node. A sourced colcon install is used as it is.
    Otherwise this source tree is indexed in a temporary prefix of links put first on
    AMENT_PREFIX_PATH (what `colcon build --symlink-install` gives), with the vpr_node console script
    beside this Python; the launched processes inherit it."""
    from ament_index_python.packages import PackageNotFoundError, get_package_prefix

    try:
        if (Path(get_package_prefix(PACKAGE)) / "lib" / PACKAGE / "vpr_node").is_file():
            return
    except PackageNotFoundError:
        pass
    script = Path(sys.executable).parent / "vpr_node"
    if not script.is_file():
        raise unittest.SkipTest(f"{PACKAGE} is not in the ament index and no vpr_node is beside {sys.executable}: "
                                "build it with colcon and source install/setup.bash, or pip install -e .")
    prefix = _work_dir() / "ament_prefix"
    marker = prefix / "share" / "ament_index" / "resource_index" / "packages" / PACKAGE
    marker.parent.mkdir(parents=True)
    marker.touch()
    # Links to files, not folders: `ros2 launch` looks for the launch file without following links.
    for source in (REPO / "package.xml", *REPO.glob("launch/*.py"), *REPO.glob("config/*.yaml")):
        target = prefix / "share" / PACKAGE / source.relative_to(REPO)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(source)
    (prefix / "lib" / PACKAGE).mkdir(parents=True)
    (prefix / "lib" / PACKAGE / "vpr_node").symlink_to(script)
    os.environ["AMENT_PREFIX_PATH"] = os.pathsep.join([str(prefix), os.environ.get("AMENT_PREFIX_PATH", "")])


def _ros2() -> str:
    beside = Path(sys.executable).parent / "ros2"
    return str(beside) if beside.is_file() else shutil.which("ros2") or "ros2"


def _ros2_launch(*arguments: str, log_name: str) -> tuple[subprocess.Popen, Path]:
    """`ros2 launch vl2spike_ros vpr.launch.py ARGUMENTS` in a process group of its own, as a
    terminal starts it; output in a log file."""
    log_path = _work_dir() / log_name
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-c", SIGINT_DEFAULT_EXEC, _ros2(), "launch", PACKAGE, "vpr.launch.py", *arguments],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})  # launch's own lines reach the log as they come
    return process, log_path


def _publish_query_until(probe, namespace: str, transport: str, done, timeout_s: float) -> None:
    """Publish the query photo on the node's input until `done()` (re-sent: discovery takes a moment
    and the input is best effort)."""
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import CompressedImage, Image

    from vl2spike_ros.ros.image_messages import rgb_to_compressed, rgb_to_image

    topic = f"{namespace}/{IMAGE_TOPIC}"
    if transport == "compressed":
        publisher = probe.node.create_publisher(CompressedImage, f"{topic}/compressed", qos_profile_sensor_data)
        message = rgb_to_compressed(_photo(PHOTOS[QUERY]))
    else:
        publisher = probe.node.create_publisher(Image, topic, qos_profile_sensor_data)
        message = rgb_to_image(_photo(PHOTOS[QUERY]))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not probe.wait_until(done, 0.5):
        publisher.publish(message)
    probe.node.destroy_publisher(publisher)


def _ros2_topic_echo_field(probe, namespace: str, field: str, timeout_s: float) -> str:
    """`ros2 topic echo --once --field FIELD` of the node's ~/match, as a user runs it, while the query
    photo is published; its output."""
    process = subprocess.Popen([_ros2(), "topic", "echo", "--once", "--field", field, f"{namespace}/vpr_node/match",
                                "vl2spike_ros/msg/PlaceMatch"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    try:
        _publish_query_until(probe, namespace, "raw", lambda: process.poll() is not None, timeout_s)
    finally:
        if process.poll() is None:
            process.kill()
    return process.communicate()[0]


def _first_match(probe, namespace: str, transport: str, timeout_s: float):
    """The first ~/match answer to the query photo: a PlaceMatch where the package's messages are
    built (colcon, `make`), else std_msgs/String JSON."""
    from vl2spike_ros.ros.match_message import MATCH_TYPE

    matches = probe.collect(MATCH_TYPE, f"{namespace}/vpr_node/match")
    _publish_query_until(probe, namespace, transport, lambda: bool(matches), timeout_s)
    with probe.lock:
        return matches[0] if matches else None


if LAUNCH_TESTING_ERROR is None:

    def _vpr_launch(namespace: str, **arguments: str):
        # A scoped group: the two inclusions' launch configurations stay apart.
        return GroupAction([IncludeLaunchDescription(
            PythonLaunchDescriptionSource([FindPackageShare(PACKAGE), "/launch/vpr.launch.py"]),
            launch_arguments={"map_path": str(_reference_map()), "namespace": namespace,
                              "image_topic": IMAGE_TOPIC, "top_k": str(TOP_K), "match_threshold": "0.5",
                              **arguments}.items())])

    @pytest.mark.launch_test
    def generate_test_description():
        _index_package()
        return launch.LaunchDescription([
            _vpr_launch(RAW_NS, transport="raw"),
            _vpr_launch(LIFECYCLE_NS, transport="compressed", autostart="false"),
            launch_testing.actions.ReadyToTest(),
        ])

    class TestVprLaunch(unittest.TestCase):
        @classmethod
        def setUpClass(cls):
            cls.probe = support.Probe("vl2spike_launch_test_probe")

        @classmethod
        def tearDownClass(cls):
            cls.probe.close()

        def assert_matched(self, message) -> None:
            from vl2spike_ros.ros.match_message import TYPED_UNAVAILABLE, match_fields

            self.assertIsNotNone(message, "no ~/match within 60 s of publishing")
            if TYPED_UNAVAILABLE is None:  # built by colcon or `make`: the node must publish the typed message
                from vl2spike_ros.msg import PlaceMatch

                self.assertIsInstance(message, PlaceMatch)
                self.assertEqual(list(message.place_ids)[0], QUERY)
            match = match_fields(message)
            self.assertEqual(match["map_size"], len(PHOTOS))
            self.assertEqual(match["place_ids"][0], QUERY, match)
            self.assertEqual(len(match["place_ids"]), TOP_K, match)
            self.assertTrue(match["accepted"], match)  # its own photo scores above match_threshold 0.5
            self.assertEqual(match["best_place"]["source"], f"images-{QUERY:05d}.png", match)

        def test_autostarted_node_matches_a_raw_frame(self, proc_output):
            proc_output.assertWaitFor(f"active: listening on {RAW_NS}/{IMAGE_TOPIC} (raw)", timeout=180)
            self.assert_matched(_first_match(self.probe, RAW_NS, "raw", timeout_s=60))

        def test_lifecycle_services_activate_the_node_then_it_matches_a_compressed_frame(self, proc_output):
            from lifecycle_msgs.msg import State, Transition
            from lifecycle_msgs.srv import ChangeState, GetState

            node = f"{LIFECYCLE_NS}/vpr_node"
            state = self.probe.call(GetState, f"{node}/get_state", GetState.Request(), timeout_s=180)
            self.assertEqual(state.current_state.id, State.PRIMARY_STATE_UNCONFIGURED)  # autostart:=false
            for transition in (Transition.TRANSITION_CONFIGURE, Transition.TRANSITION_ACTIVATE):
                request = ChangeState.Request(transition=Transition(id=transition))
                self.assertTrue(self.probe.call(ChangeState, f"{node}/change_state", request, timeout_s=120).success)
            state = self.probe.call(GetState, f"{node}/get_state", GetState.Request())
            self.assertEqual(state.current_state.id, State.PRIMARY_STATE_ACTIVE)
            proc_output.assertWaitFor(f"active: listening on {LIFECYCLE_NS}/{IMAGE_TOPIC}/compressed (compressed)",
                                      timeout=30)
            self.assert_matched(_first_match(self.probe, LIFECYCLE_NS, "compressed", timeout_s=60))

        def test_ros2_launch_without_a_map_exits_non_zero_saying_what_to_pass(self):
            process, log_path = _ros2_launch(f"namespace:=/vpr_launch_no_map_{os.getpid()}", log_name="no_map.log")
            self.assertNotEqual(process.wait(180), 0, log_path.read_text())
            output = log_path.read_text()
            self.assertIn("no map given (map_path is empty); set map_path to a map directory", output)
            self.assertIn("vpr_node exited with code 1", output)

        def test_ros2_launch_keeps_a_params_file_map_path_and_fails_on_a_missing_map(self):
            # A map_path set only in the user's params file reaches the node (no launch default over it).
            missing = _work_dir() / "map_from_params_file"
            params_file = _work_dir() / "my_vpr.yaml"
            params_file.write_text(yaml.safe_dump({"/**": {"ros__parameters": {"map_path": str(missing)}}}))
            process, log_path = _ros2_launch(f"params_file:={params_file}", f"namespace:=/vpr_launch_missing_{os.getpid()}",
                                             log_name="missing_map.log")
            self.assertNotEqual(process.wait(180), 0, log_path.read_text())
            output = log_path.read_text()
            self.assertIn(f"map '{missing}': no such map directory", output)
            self.assertIn("vpr_node exited with code 1", output)

        def test_ros2_launch_publishes_what_ros2_topic_echo_shows_and_ends_cleanly_on_ctrl_c(self):
            from vl2spike_ros.ros.match_message import TYPED_UNAVAILABLE

            namespace = f"/vpr_launch_ctrl_c_{os.getpid()}"
            process, log_path = _ros2_launch(f"map_path:={_reference_map()}", f"namespace:={namespace}",
                                             f"image_topic:={IMAGE_TOPIC}", log_name="ctrl_c.log")
            try:
                deadline = time.monotonic() + 180
                while "active: listening on" not in log_path.read_text() and time.monotonic() < deadline:
                    self.assertIsNone(process.poll(), log_path.read_text())
                    time.sleep(0.2)
                if TYPED_UNAVAILABLE is None:  # a PlaceMatch, field by field
                    for field, shown in (("best_place.source", f"images-{QUERY:05d}.png"), ("map_size", "4")):
                        output = _ros2_topic_echo_field(self.probe, namespace, field, timeout_s=60)
                        self.assertEqual(output.splitlines()[0], shown, output)
                # Ctrl-C in a terminal signals the whole process group: launch, which forwards it to the
                # node, and the node itself; then a second Ctrl-C.
                os.killpg(process.pid, signal.SIGINT)
                time.sleep(0.3)
                if process.poll() is None:
                    os.killpg(process.pid, signal.SIGINT)
                code = process.wait(60)
            finally:
                if process.poll() is None:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
            output = log_path.read_text()
            self.assertEqual(code, 0, output)
            self.assertIn("user interrupted with ctrl-c (SIGINT)", output)  # launch itself took the Ctrl-C
            self.assertIn("finalized", output)
            self.assertNotIn("process has died", output)
            self.assertNotIn("Traceback", output)

    @launch_testing.post_shutdown_test()
    class TestVprLaunchShutdown(unittest.TestCase):
        def test_both_nodes_ended_through_the_shutdown_transition(self, proc_info, proc_output):
            launch_testing.asserts.assertExitCodes(proc_info)
            self.assertEqual(len(proc_output.processes()), 2)
            for process in proc_output.processes():
                output = "".join(line.text.decode() for line in proc_output[process])
                self.assertIn("finalized", output)
                self.assertNotIn("Traceback", output)
else:
    def test_launch_testing():
        pytest.skip(LAUNCH_TESTING_ERROR)
