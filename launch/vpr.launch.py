"""Start vpr_node (vl2spike_ros) as a lifecycle node:
`ros2 launch vl2spike_ros vpr.launch.py map_path:=/path/to/map`.

Arguments (`ros2 launch vl2spike_ros vpr.launch.py --show-args`): model_path, map_path, transport,
autostart, top_k, sequence_length, match_threshold, use_sim_time, image_topic, namespace,
params_file. The table lives in vl2spike_ros/ros/launch_arguments.py (checked by the tests without
launch). If vpr_node exits with an error that launch did not cause (configure failed: no map, a map
of another model), the launch fails too, so `ros2 launch` exits non-zero.
Only the standard launch / launch_ros API of Humble, Jazzy and Kilted.
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, RegisterEventHandler
from launch.event_handlers import OnProcessExit
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import LifecycleNode
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare

from vl2spike_ros.ros.launch_arguments import (EXECUTABLE, NODE_NAME, NODE_PARAMETER_ARGUMENTS, PACKAGE,
                                               PARAMS_FILE_DESCRIPTION, TOPIC_ARGUMENTS, exit_failure,
                                               image_remappings)


def _declare(argument):
    return DeclareLaunchArgument(argument.name, default_value=argument.default,
                                 description=argument.description, choices=list(argument.choices) or None)


def _fail_on_error_exit(event, context):
    # An exception raised in an event handler ends the launch with return code 1 (what `ros2 launch`
    # exits with); a Shutdown action would end it with 0.
    reason = exit_failure(event.returncode, context.is_shutdown)
    if reason is not None:
        raise RuntimeError(reason)


def generate_launch_description():
    node = LifecycleNode(
        package=PACKAGE,
        executable=EXECUTABLE,
        name=NODE_NAME,
        namespace=LaunchConfiguration("namespace"),  # required by Humble's LifecycleNode
        parameters=[
            LaunchConfiguration("params_file"),
            # Typed, so that "5" stays an integer parameter and "0.0" a double.
            {argument.name: ParameterValue(LaunchConfiguration(argument.name), value_type=argument.value_type)
             for argument in NODE_PARAMETER_ARGUMENTS},
        ],
        remappings=image_remappings(LaunchConfiguration("image_topic")),
        output="screen",
        emulate_tty=True,
    )
    return LaunchDescription([
        *(_declare(argument) for argument in (*NODE_PARAMETER_ARGUMENTS, *TOPIC_ARGUMENTS)),
        DeclareLaunchArgument("params_file", description=PARAMS_FILE_DESCRIPTION,
                              default_value=PathJoinSubstitution([FindPackageShare(PACKAGE), "config", "vpr.yaml"])),
        node,
        RegisterEventHandler(OnProcessExit(target_action=node, on_exit=_fail_on_error_exit)),
    ])
