"""launch/vpr.launch.py without launching it: its argument table against the node's parameters and
config/vpr.yaml, which arguments count as given and the parameter file they make (read by a real
vpr_node after a params file, as the launch file passes them), the transport remapping, the exit
decision and a static check of the file. Where `ros2 launch` is installed it also checks the declared
arguments and their defaults (`--show-args`) and that the node is visible to `--print`.
test_launch.py launches it."""
import ast
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import node_fixtures as support  # loopback ROS environment before rclpy starts
from vl2spike_ros.ros.launch_arguments import (EXECUTABLE, NODE_NAME, NODE_PARAMETER_ARGUMENTS, NOT_GIVEN, PACKAGE,
                                               TOPIC_ARGUMENTS, exit_failure, given_parameters,
                                               given_parameters_file, image_remappings, launch_text)
from vl2spike_ros.ros.parameters import PARAMETER_SPECS

REPO = Path(__file__).resolve().parents[1]
LAUNCH_FILE = REPO / "launch" / "vpr.launch.py"
DECLARED = {argument.name for argument in (*NODE_PARAMETER_ARGUMENTS, *TOPIC_ARGUMENTS)} | {"params_file"}


def test_node_parameter_arguments_match_the_node_and_the_parameter_file():
    shipped = yaml.safe_load((REPO / "config" / "vpr.yaml").read_text())["/**"]["ros__parameters"]
    for argument in NODE_PARAMETER_ARGUMENTS:
        if argument.name == "use_sim_time":  # rclpy's own parameter, not in the node's table
            assert argument.value_type is bool and argument.default == "false"
            continue
        spec = PARAMETER_SPECS[argument.name]
        assert argument.value_type is type(spec.default), argument.name
        assert argument.default == launch_text(spec.default) == launch_text(shipped[argument.name]), argument.name
        assert argument.description.startswith(spec.description), argument.name
    # Launch declares node parameters as not given, so that they leave params_file's values alone.
    assert all(argument.launch_default == NOT_GIVEN for argument in NODE_PARAMETER_ARGUMENTS)
    assert all(argument.launch_default == argument.default for argument in TOPIC_ARGUMENTS)
    # The list: these must be settable from the launch command line.
    assert {"autostart", "top_k", "sequence_length", "match_threshold", "model_path", "map_path",
            "transport", "image_topic", "namespace", "params_file"} <= DECLARED


def test_float_arguments_keep_a_decimal_point():
    # ROS parameters are typed: "0" would be an integer and the node would refuse it as a double.
    for argument in NODE_PARAMETER_ARGUMENTS:
        if argument.value_type is float:
            assert "." in argument.default, argument.name


def test_only_arguments_given_on_the_command_line_are_passed_typed():
    assert given_parameters({argument.name: argument.launch_default for argument in NODE_PARAMETER_ARGUMENTS}) == {}
    assert given_parameters_file({"map_path": NOT_GIVEN, "top_k": NOT_GIVEN}) is None
    given = given_parameters({"top_k": "3", "map_path": NOT_GIVEN, "match_threshold": "1", "autostart": "false",
                              "model_path": "2024", "transport": "compressed", "use_sim_time": "true"})
    assert given == {"top_k": 3, "match_threshold": 1.0, "autostart": False, "model_path": "2024",
                     "transport": "compressed", "use_sim_time": True}
    assert type(given["match_threshold"]) is float  # ROS parameters are typed: 1 would be refused
    path = given_parameters_file({"top_k": "3", "match_threshold": "0.25"})
    assert yaml.safe_load(path.read_text()) == {"/**": {"ros__parameters": {"top_k": 3, "match_threshold": 0.25}}}


@pytest.mark.parametrize("name, text, expected", [
    ("top_k", "abc", "expected an integer"), ("top_k", "true", "expected an integer"),
    ("top_k", "2.5", "expected an integer"), ("autostart", "maybe", "expected true or false"),
    ("match_threshold", "[", "expected a number"), ("use_sim_time", "3", "expected true or false"),
])
def test_bad_argument_types_are_refused_before_the_node_starts(name, text, expected):
    # Ranges and choices (top_k:=0, transport:=udp) are the node's to refuse, naming the parameter.
    with pytest.raises(ValueError, match=re.escape(f"launch argument {name}:={text}: ") + ".*" + re.escape(expected)):
        given_parameters({name: text})


def test_the_table_loads_no_model_code_into_the_launch_process():
    loaded = subprocess.run([sys.executable, "-c", "import sys, vl2spike_ros.ros.launch_arguments; "
                             "print(sorted(name for name in ('torch', 'faiss', 'cv2') if name in sys.modules))"],
                            capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "[]", loaded


def test_node_reads_the_params_file_then_the_given_arguments(tmp_path):
    """What the launch file passes (params_file, then the given-arguments file) read by a real
    vpr_node: the given top_k wins, everything not given keeps the params file's value."""
    pytest.importorskip("rclpy", reason="rclpy (ROS 2) is not installed")
    from rcl_interfaces.srv import GetParameters

    params_file = tmp_path / "my_vpr.yaml"
    params_file.write_text(yaml.safe_dump({"/**": {"ros__parameters": {
        "autostart": False, "map_path": str(tmp_path / "my_map"), "top_k": 7, "match_threshold": 0.3,
        "sequence_length": 3}}}))
    launch_values = {argument.name: argument.launch_default for argument in NODE_PARAMETER_ARGUMENTS}
    given_file = given_parameters_file({**launch_values, "top_k": "2"})
    namespace = f"/vpr_launch_layers_{os.getpid()}"
    node = support.NodeProcess(tmp_path / "node.log", {}, namespace,
                               ["--params-file", str(params_file), "--params-file", str(given_file)])
    probe = support.Probe("launch_layers_probe")
    try:
        request = GetParameters.Request(names=["top_k", "map_path", "match_threshold", "sequence_length", "transport"])
        values = probe.call(GetParameters, f"{namespace}/{NODE_NAME}/get_parameters", request, timeout_s=90.0).values
    finally:
        probe.close()
        node.stop()
    assert [values[0].integer_value, values[1].string_value, values[2].double_value, values[3].integer_value,
            values[4].string_value] == [2, str(tmp_path / "my_map"), 0.3, 3, "raw"], node.log()


def test_transport_remapping_follows_image_transport_names():
    remapped = dict(image_remappings("/foo"))
    assert remapped["image"] == "/foo"
    assert "".join(remapped["image/compressed"]) == "/foo/compressed"


def test_launch_fails_only_for_an_unrequested_error_exit():
    assert "code 1" in exit_failure(1, launch_shutting_down=False)
    assert exit_failure(-9, launch_shutting_down=False) is not None
    assert exit_failure(0, launch_shutting_down=False) is None
    # Ctrl-C: launch stops the node itself, whatever its exit code.
    assert exit_failure(1, launch_shutting_down=True) is None
    assert exit_failure(-2, launch_shutting_down=True) is None


def test_launch_file_declares_a_visible_lifecycle_node_from_the_table():
    tree = ast.parse(LAUNCH_FILE.read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module.split(".")[0])
    # Everything the file imports is declared in package.xml (launch, launch_ros) or is this package.
    assert imported == {"launch", "launch_ros", PACKAGE}, imported
    package_xml = (REPO / "package.xml").read_text()
    for dependency in ("launch", "launch_ros", "ament_index_python"):
        assert f"<exec_depend>{dependency}</exec_depend>" in package_xml, dependency
    called = {node.func.id for node in ast.walk(tree) if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)}
    # A LifecycleNode in the description itself (not built inside an OpaqueFunction) is what
    # `ros2 launch --print` and lifecycle tooling see; the exit handler makes a failed start fail the launch.
    assert {"LifecycleNode", "RegisterEventHandler", "OnProcessExit"} <= called
    assert "OpaqueFunction" not in LAUNCH_FILE.read_text()
    # Its parameters: params_file first, then the file of the arguments given (later files win).
    node_call = next(node for node in ast.walk(tree) if isinstance(node, ast.Call)
                     and isinstance(node.func, ast.Name) and node.func.id == "LifecycleNode")
    parameters = next(keyword.value for keyword in node_call.keywords if keyword.arg == "parameters")
    assert [ast.unparse(element) for element in parameters.elts] == [
        "LaunchConfiguration('params_file')", "GivenParametersFile()"]
    # Arguments are declared with the table's launch default (NOT_GIVEN for node parameters).
    assert "default_value=ArgumentDefault(argument)" in LAUNCH_FILE.read_text()
    assert "return self._argument.launch_default" in LAUNCH_FILE.read_text()


def _ros2_launch_file() -> list[str]:
    """`ros2 launch` on the source launch file, where ros2cli with ros2launch is installed (beside this
    Python, or on PATH); else skip with the reason. `--show-args` and `--print` only describe the
    launch, so the package need not be in the ament index."""
    beside = Path(sys.executable).parent / "ros2"
    ros2 = str(beside) if beside.is_file() else shutil.which("ros2")
    if ros2 is None:
        pytest.skip("ros2 (ros2cli with ros2launch) is not installed here; these checks run on a ROS 2 install")
    return [ros2, "launch", str(LAUNCH_FILE)]


def test_ros2_launch_shows_the_arguments_with_their_defaults_and_the_node():
    command = _ros2_launch_file()
    shown = subprocess.run([*command, "--show-args"], capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    for name in DECLARED:
        assert f"'{name}'" in shown.stdout, name
    # The value that applies when an argument is not given, not the empty text launch declares.
    assert "(default: '5' unless params_file sets top_k)" in shown.stdout, shown.stdout
    for argument in (*NODE_PARAMETER_ARGUMENTS, *TOPIC_ARGUMENTS):
        assert f"(default: {argument.shown_default})" in shown.stdout, argument.name
    printed = subprocess.run([*command, "--print"], capture_output=True, text=True, timeout=120)
    assert printed.returncode == 0, printed.stdout + printed.stderr
    # launch prints the node as its process (ExecInPkg ... vpr_node) with the exit handler; behind an
    # OpaqueFunction it would print an opaque Action(...) instead.
    assert EXECUTABLE in printed.stdout and "OnProcessExit" in printed.stdout, printed.stdout
