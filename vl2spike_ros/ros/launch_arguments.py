"""What `launch/vpr.launch.py` declares and hands to vpr_node, kept free of `launch` imports so the
tests check these decisions on installs without launch (pip) as well as on a ROS 2 install.

The launch file turns this table into `DeclareLaunchArgument`s and typed node parameters; launch
arguments are applied after `params_file`, so a value given on the command line wins.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

PACKAGE = "vl2spike_ros"
EXECUTABLE = "vpr_node"
NODE_NAME = "vpr_node"


@dataclass(frozen=True)
class LaunchArgument:
    """A launch argument; `value_type` is the node parameter's type it sets (None: launch-only)."""

    name: str
    default: str
    description: str
    value_type: type | None = None
    choices: tuple[str, ...] = ()


# Defaults equal the node's and config/vpr.yaml's (test/test_launch_file.py checks both).
NODE_PARAMETER_ARGUMENTS: tuple[LaunchArgument, ...] = (
    LaunchArgument("model_path", "", "student checkpoint (.safetensors); empty: the shipped model", str),
    LaunchArgument("map_path", "", "place map directory (vl2spike build-map)", str),
    LaunchArgument("transport", "raw", "raw: sensor_msgs/Image on image_topic; compressed: "
                   "sensor_msgs/CompressedImage on <image_topic>/compressed", str, ("raw", "compressed")),
    LaunchArgument("autostart", "true", "configure and activate at start; false: wait for "
                   "`ros2 lifecycle set` or a lifecycle manager", bool),
    LaunchArgument("top_k", "5", "places reported per frame (1-100)", int),
    LaunchArgument("sequence_length", "1", "sequence matching over the last L frames (1: single frame)", int),
    LaunchArgument("match_threshold", "0.0", "accept a match when its best cosine score is at least this "
                   "(-1.0 to 1.0, with a decimal point)", float),
    LaunchArgument("use_sim_time", "false", "use /clock", bool),
)
TOPIC_ARGUMENTS: tuple[LaunchArgument, ...] = (
    LaunchArgument("image_topic", "/camera/image_raw", "camera topic (a relative name resolves in namespace)"),
    LaunchArgument("namespace", "", "namespace of the node"),
)
PARAMS_FILE_DESCRIPTION = ("parameter file (default: the installed config/vpr.yaml); the launch "
                           "arguments above override its values")


def image_remappings(image_topic: Any) -> list[tuple[str, Any]]:
    """The node's `image` and `image/compressed` onto the camera topic and its compressed sibling
    (image_transport's naming); `image_topic` is a string or a launch substitution."""
    return [("image", image_topic), ("image/compressed", [image_topic, "/compressed"])]


def exit_failure(returncode: int | None, launch_shutting_down: bool) -> str | None:
    """Why the launch must fail when vpr_node exits, or None: a non-zero exit that launch did not
    ask for (by Ctrl-C or a shutdown elsewhere) means start-up failed, e.g. configure without a map."""
    if launch_shutting_down or returncode == 0:
        return None
    return (f"{EXECUTABLE} exited with code {returncode}: it could not start (its log above says why, "
            "e.g. configure failed on a missing map, or a parameter was out of range)")
