"""The installed layout: colcon (colcon-common-extensions from PyPI) builds the package into a
temporary workspace; `ros2 run` / `ros2 launch` find what they look for, and the installed vpr_node
starts and becomes active with a tiny model and map."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import node_fixtures as support

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "vl2spike_ros"


def _colcon() -> str:
    beside = Path(sys.executable).parent / "colcon"
    found = str(beside) if beside.is_file() else shutil.which("colcon")
    if not found:
        pytest.skip("colcon is not installed (pip install colcon-common-extensions)")
    return found


def _copy_sources(target: Path) -> None:
    """The files git would commit (tracked and not ignored), so build outputs and .venv stay out."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)


@pytest.fixture(scope="module")
def install(tmp_path_factory):
    colcon = _colcon()
    if shutil.which("git") is None:
        pytest.skip("git is needed to list the package's files")
    workspace = tmp_path_factory.mktemp("colcon_ws")
    _copy_sources(workspace / "src" / PACKAGE)
    env = {**os.environ, **support.ROS_ENV, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run([colcon, "--log-base", str(workspace / "log"), "build", "--base-paths", "src",
                             "--build-base", "build", "--install-base", "install"],
                            cwd=workspace, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # colcon warns about setup.py's deprecated tests_require (the `test` extra replaces it).
    assert "tests_require" not in result.stdout + result.stderr, result.stdout[-3000:] + result.stderr[-3000:]
    return workspace / "install" / PACKAGE if (workspace / "install" / PACKAGE).is_dir() else workspace / "install"


def test_installed_layout(install):
    for relative in (f"lib/{PACKAGE}/vpr_node", f"share/{PACKAGE}/package.xml",
                     f"share/{PACKAGE}/launch/vpr.launch.py", f"share/{PACKAGE}/config/vpr.yaml",
                     f"share/ament_index/resource_index/packages/{PACKAGE}"):
        assert (install / relative).is_file(), relative
    assert os.access(install / f"lib/{PACKAGE}/vpr_node", os.X_OK)
    # The shipped model is installed once, as package data (checkpoint.py finds it with importlib.resources).
    site_packages = next((install / "lib").glob("python3*/site-packages"))
    assert (site_packages / PACKAGE / "models" / "default_student.safetensors").is_file()
    assert not (install / f"share/{PACKAGE}/models").exists()
    # The installed launch file imports its argument table from the installed package.
    assert (site_packages / PACKAGE / "ros" / "launch_arguments.py").is_file()
    # Training stays off the robot: `ros2 pkg executables` lists the runtime's tools only.
    assert sorted(path.name for path in (install / f"lib/{PACKAGE}").iterdir()) == ["vl2spike", "vpr_node"]
    assert not (site_packages / "vl2spike_training").exists()


def test_installed_vpr_node_becomes_active(install, tmp_path):
    images = support.write_random_images(tmp_path / "images", 3)
    checkpoint = support.tiny_checkpoint(tmp_path / "tiny.safetensors")
    map_dir = support.build_test_map(checkpoint, images, tmp_path / "map")
    site_packages = next((install / "lib").glob("python3*/site-packages"))
    env = {**os.environ, **support.ROS_ENV, "PYTHONPATH": str(site_packages),
           "AMENT_PREFIX_PATH": str(install)}
    log_path = tmp_path / "node.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [str(install / f"lib/{PACKAGE}/vpr_node"), "--ros-args", "-r", "__ns:=/vpr_colcon_test",
             "-p", f"model_path:={checkpoint}", "-p", f"map_path:={map_dir}", "-p", "num_threads:=1"],
            cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    node = support.NodeProcess.__new__(support.NodeProcess)
    node.process, node.log_path, node._log = process, log_path, open(log_path, "a")
    try:
        assert node.wait_for_log("active: listening on /vpr_colcon_test/image", 120), node.log()
        # The installed copy runs, not the source tree.
        assert f"vpr_node from {site_packages / PACKAGE}" in node.log()
    finally:
        code = node.stop()
    assert code == 0, node.log()
