"""Start vpr_node (vl2spike_ros) as a lifecycle node:
`ros2 launch vl2spike_ros vpr.launch.py map_path:=/path/to/map`.

Arguments (`ros2 launch vl2spike_ros vpr.launch.py --show-args`): model_path, map_path, transport,
autostart, top_k, sequence_length, match_threshold, use_sim_time, image_topic, namespace,
params_file. The table and the rules live in vl2spike_ros/ros/launch_arguments.py (checked by the
tests without launch): node parameters come from params_file, then from a file of only the arguments
given on the command line, so a given value wins and one not given leaves params_file's in force.
If vpr_node exits with an error that launch did not cause (configure failed: no map, a map of
another model), the launch fails too, so `ros2 launch` exits non-zero.
Only the standard launch / launch_ros API of Humble, Jazzy and Kilted.
"""
from launch import LaunchDescription, Substitution
from launch.actions import DeclareLaunchArgument, RegisterEventHandler
from launch.event_handlers import OnProcessExit
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import LifecycleNode
from launch_ros.substitutions import FindPackageShare

from vl2spike_ros.ros.launch_arguments import (EXECUTABLE, NODE_NAME, NODE_PARAMETER_ARGUMENTS, PACKAGE,
                                               PARAMS_FILE_DESCRIPTION, TOPIC_ARGUMENTS, exit_failure,
                                               given_parameters_file, image_remappings)


class GivenParametersFile(Substitution):
    """The path of a parameter file with the node-parameter arguments given on the command line,
    written when the node starts (like nav2's RewrittenYaml; a dict of launch configurations cannot
    leave out an argument that was not given). With none given: params_file again, which changes
    nothing."""

    def describe(self) -> str:
        return f"GivenParametersFile({', '.join(argument.name for argument in NODE_PARAMETER_ARGUMENTS)})"

    def perform(self, context) -> str:
        values = {argument.name: LaunchConfiguration(argument.name).perform(context)
                  for argument in NODE_PARAMETER_ARGUMENTS}
        path = given_parameters_file(values)
        return str(path) if path is not None else LaunchConfiguration("params_file").perform(context)


class ArgumentDefault(Substitution):
    """An argument's default. A node-parameter argument's is NOT_GIVEN, so that params_file's value
    stays in force; `--show-args` shows the value that applies instead of that empty text."""

    def __init__(self, argument) -> None:
        super().__init__()
        self._argument = argument

    def describe(self) -> str:
        return self._argument.shown_default

    def perform(self, context) -> str:
        return self._argument.launch_default


def _declare(argument):
    return DeclareLaunchArgument(argument.name, default_value=ArgumentDefault(argument),
                                 description=argument.description)


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
        # Later files override earlier ones.
        parameters=[LaunchConfiguration("params_file"), GivenParametersFile()],
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
