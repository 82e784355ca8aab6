"""What `launch/vpr.launch.py` declares and hands to vpr_node, kept free of `launch` imports so the
tests check these decisions on installs without launch (pip) as well as on a ROS 2 install.

Node parameters come from two parameter files, applied in this order: `params_file` (the user's
settings, default the installed config/vpr.yaml), then a file holding only the node-parameter
arguments given on the command line (`given_parameters_file`). So a value on the command line wins,
and an argument not given leaves the params file's value in force: each such argument is declared
with the empty default NOT_GIVEN rather than the node's default, which would override the file.
"""
from __future__ import annotations

import atexit
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from vl2spike_ros.core.atomic_files import atomic_write_bytes
from vl2spike_ros.ros.parameters import PARAMETER_SPECS

PACKAGE = "vl2spike_ros"
EXECUTABLE = "vpr_node"
NODE_NAME = "vpr_node"


NOT_GIVEN = ""
_TYPE_WORDS = {bool: "true or false", int: "an integer", float: "a number"}


@dataclass(frozen=True)
class LaunchArgument:
    """A launch argument; `value_type` is the node parameter's type it sets (None: launch-only).
    `default` is what applies when nothing sets it: for a node parameter the node's default (the
    launch itself declares NOT_GIVEN, see `launch_default`)."""

    name: str
    default: str
    description: str
    value_type: type | None = None

    @property
    def launch_default(self) -> str:
        return self.default if self.value_type is None else NOT_GIVEN

    @property
    def shown_default(self) -> str:
        """What `ros2 launch --show-args` shows as the default: the value that applies when the
        argument is not given."""
        if self.value_type is None:
            return repr(self.default)
        return f"{self.default!r} unless params_file sets {self.name}"


def launch_text(value: Any) -> str:
    """A parameter value as written on the launch command line (`true`, `5`, `0.0`, `raw`)."""
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def _parameter_argument(name: str) -> LaunchArgument:
    spec = PARAMETER_SPECS[name]
    description = spec.description
    if spec.choices:
        description += f" (one of: {', '.join(spec.choices)})"
    elif spec.low is not None:
        description += f" ({launch_text(spec.low)} to {launch_text(spec.high)})"
    return LaunchArgument(name, launch_text(spec.default), description, type(spec.default))


# The node parameters a launch argument sets: defaults and descriptions are the node's table.
NODE_PARAMETER_ARGUMENTS: tuple[LaunchArgument, ...] = (
    *(_parameter_argument(name) for name in ("model_path", "map_path", "transport", "autostart", "top_k",
                                             "sequence_length", "match_threshold")),
    LaunchArgument("use_sim_time", "false", "use /clock (rclpy's own parameter)", bool),
)
TOPIC_ARGUMENTS: tuple[LaunchArgument, ...] = (
    LaunchArgument("image_topic", "/camera/image_raw", "camera topic (a relative name resolves in namespace)"),
    LaunchArgument("namespace", "", "namespace of the node"),
)
PARAMS_FILE_DESCRIPTION = ("parameter file (default: the installed config/vpr.yaml); the node-parameter "
                           "arguments above that are given on the command line override its values")


def given_parameters(values: Mapping[str, str]) -> dict[str, Any]:
    """The node parameters given on the launch command line (`values`: launch configuration text by
    argument name), typed as the node declares them; arguments left at NOT_GIVEN are left out.
    A value of the wrong type raises ValueError naming the argument, before the node starts; ranges
    and choices are the node's to check (it exits 2 naming the parameter, and the launch fails).
    The types are the parameter table's, which loads nothing heavy into the launch process."""
    given = {}
    for argument in NODE_PARAMETER_ARGUMENTS:
        text = values.get(argument.name, NOT_GIVEN)
        if text == NOT_GIVEN:
            continue
        # Text as launch_ros reads a parameter value (YAML), except that a string parameter keeps
        # the text as written (a map_path "2024" or "true" stays a path).
        value = text if argument.value_type is str else _yaml_value(text)
        if argument.value_type is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, argument.value_type) or (argument.value_type is int and isinstance(value, bool)):
            raise ValueError(f"launch argument {argument.name}:={text}: expected "
                             f"{_TYPE_WORDS[argument.value_type]}, got {value!r}")
        given[argument.name] = value
    return given


def _yaml_value(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text  # not YAML: refused as text of the wrong type


def given_parameters_file(values: Mapping[str, str]) -> Path | None:
    """A parameter file (for any node name) holding `given_parameters(values)`, or None when no
    argument was given. It lives in a temporary folder removed when the launch process exits (the
    node reads it at start-up)."""
    given = given_parameters(values)
    if not given:
        return None
    folder = Path(tempfile.mkdtemp(prefix="vl2spike_launch_"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    path = folder / "given_parameters.yaml"
    atomic_write_bytes(path, yaml.safe_dump({"/**": {"ros__parameters": given}}).encode("utf-8"))
    return path


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
