"""Start vpr_node (vl2spike_ros): `ros2 launch vl2spike_ros vpr.launch.py map_path:=/path/to/map`.

Arguments: model_path, map_path, image_topic, transport (raw | compressed), namespace, params_file
(default: the installed config/vpr.yaml), use_sim_time. Empty model_path / map_path keep the values
of the parameter file. Only the standard launch / launch_ros API (Humble, Jazzy, Kilted).
"""
import os

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

PACKAGE = "vl2spike_ros"


def _default_params_file():
    try:
        from ament_index_python.packages import get_package_share_directory

        return os.path.join(get_package_share_directory(PACKAGE), "config", "vpr.yaml")
    except (ImportError, LookupError):  # PackageNotFoundError is a KeyError
        # Not installed (a source checkout): the file beside this launch file's folder.
        return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "config", "vpr.yaml")


def _node(context, *args, **kwargs):
    def value(name):
        return LaunchConfiguration(name).perform(context)

    params_file = value("params_file") or _default_params_file()
    overrides = {"use_sim_time": value("use_sim_time").lower() in ("true", "1", "yes")}
    for name in ("model_path", "map_path", "transport"):
        if value(name):
            overrides[name] = value(name)
    image_topic = value("image_topic")
    return [Node(
        package=PACKAGE,
        executable="vpr_node",
        name="vpr_node",
        namespace=value("namespace"),
        parameters=[params_file, overrides],
        remappings=[("image", image_topic), ("image/compressed", image_topic + "/compressed")],
        output="screen",
        emulate_tty=True,
    )]


def generate_launch_description():
    return LaunchDescription([
        DeclareLaunchArgument("model_path", default_value="",
                              description="student checkpoint (.safetensors); empty: parameter file / shipped model"),
        DeclareLaunchArgument("map_path", default_value="",
                              description="place map directory (vl2spike build-map); empty: parameter file"),
        DeclareLaunchArgument("image_topic", default_value="/camera/image_raw",
                              description="camera topic; with transport compressed, <image_topic>/compressed"),
        DeclareLaunchArgument("transport", default_value="",
                              description="raw | compressed; empty: parameter file (raw)"),
        DeclareLaunchArgument("namespace", default_value="", description="namespace of the node"),
        DeclareLaunchArgument("params_file", default_value="",
                              description="parameter file; empty: the installed config/vpr.yaml"),
        DeclareLaunchArgument("use_sim_time", default_value="false", description="use /clock"),
        OpaqueFunction(function=_node),
    ])
