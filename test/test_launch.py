"""launch/vpr.launch.py: a launch_testing test where `launch_testing` imports (a ROS 2 install with the
package built by colcon), skipped with the reason elsewhere; plus a static check that runs everywhere."""
import ast
from pathlib import Path

import pytest

LAUNCH_FILE = Path(__file__).resolve().parents[1] / "launch" / "vpr.launch.py"
ARGUMENTS = {"model_path", "map_path", "image_topic", "transport", "namespace", "params_file", "use_sim_time"}

try:
    import launch
    import launch_ros  # noqa: F401
    import launch_testing
    import launch_testing.actions
    import launch_testing.asserts
    from launch.launch_description_sources import PythonLaunchDescriptionSource

    LAUNCH_TESTING_ERROR = None
except ImportError as error:  # pip installs: no launch, launch_ros or launch_testing wheels
    LAUNCH_TESTING_ERROR = f"launch_testing is not importable here ({error}); it runs on a ROS 2 install"


def test_launch_file_uses_only_the_standard_api_and_declares_its_arguments():
    tree = ast.parse(LAUNCH_FILE.read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module.split(".")[0])
    assert imported <= {"os", "launch", "launch_ros", "ament_index_python"}, imported
    declared = {node.args[0].value for node in ast.walk(tree)
                if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "DeclareLaunchArgument"}
    assert declared == ARGUMENTS
    text = LAUNCH_FILE.read_text()
    assert 'executable="vpr_node"' in text and 'package=PACKAGE' in text and 'PACKAGE = "vl2spike_ros"' in text


if LAUNCH_TESTING_ERROR is None:
    import os
    import tempfile
    import unittest

    from launch.actions import IncludeLaunchDescription

    import test_node_support as support

    NAMESPACE = "/vpr_launch_test"

    @pytest.mark.launch_test
    def generate_test_description():
        work = Path(tempfile.mkdtemp(prefix="vl2spike_launch_test_"))
        images = support.write_random_images(work / "images", 4)
        checkpoint = support.tiny_checkpoint(work / "tiny.safetensors")
        map_dir = support.build_test_map(checkpoint, images, work / "map")
        include = IncludeLaunchDescription(
            PythonLaunchDescriptionSource(str(LAUNCH_FILE)),
            launch_arguments={"model_path": str(checkpoint), "map_path": str(map_dir),
                              "namespace": NAMESPACE, "image_topic": "camera/image_raw"}.items())
        return launch.LaunchDescription([include, launch_testing.actions.ReadyToTest()])

    class TestVprLaunch(unittest.TestCase):
        def test_node_becomes_active_on_the_remapped_topic(self, proc_output):
            proc_output.assertWaitFor(f"active: listening on {NAMESPACE}/camera/image_raw", timeout=180)

    @launch_testing.post_shutdown_test()
    class TestVprLaunchShutdown(unittest.TestCase):
        def test_exit_code(self, proc_info):
            launch_testing.asserts.assertExitCodes(proc_info)
else:
    def test_launch_testing():
        pytest.skip(LAUNCH_TESTING_ERROR)
