"""vpr_node as a child process of the live demo: its command line, a loopback-only ROS environment,
its log, and a clean stop (SIGINT, as Ctrl-C in a terminal, which the node turns into its lifecycle
shutdown)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path


def ros_environment(work_dir: str | Path, domain_id: int | None = None) -> dict[str, str]:
    """ROS variables that keep DDS on loopback and logs in `work_dir`; the domain id is kept when set."""
    if domain_id is None:
        domain_id = int(os.environ.get("ROS_DOMAIN_ID") or 1 + os.getpid() % 100)
    ros_home = Path(work_dir) / "ros_home"
    ros_home.mkdir(parents=True, exist_ok=True)
    return {"ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST", "ROS_LOCALHOST_ONLY": "1",
            "ROS_DOMAIN_ID": str(domain_id), "ROS_HOME": str(ros_home)}


def node_command(ros_args: list[str]) -> list[str]:
    """The installed console script `vpr_node` beside this Python, else `python -m vl2spike_ros.ros.node`."""
    script = Path(sys.executable).parent / "vpr_node"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script), "--ros-args", *ros_args]
    return [sys.executable, "-m", "vl2spike_ros.ros.node", "--ros-args", *ros_args]


def log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def stop_process(process: subprocess.Popen, timeout_s: float = 15.0) -> int:
    """SIGINT (a clean ROS shutdown), then SIGKILL if it does not exit in time; returns the exit code."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
    return process.returncode
