"""Shared pieces of the ROS tests (no tests here): loopback-only ROS environment, a tiny checkpoint,
vpr_node as a child process, and an rclpy probe node spinning in a thread.

Importing this module sets the ROS environment of the test process BEFORE rclpy starts:
DDS stays on loopback (ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST for Kilted, ROS_LOCALHOST_ONLY=1 for
Humble), the caller's ROS_DOMAIN_ID (else one derived from the pid) and a per-run ROS_HOME.
"""
from __future__ import annotations

import os
import subprocess
import tempfile
import threading
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
_RUN_HOME = Path(tempfile.mkdtemp(prefix="vl2spike_ros_home_"))
ROS_ENV = {
    "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
    "ROS_LOCALHOST_ONLY": "1",
    "ROS_DOMAIN_ID": os.environ.get("ROS_DOMAIN_ID") or str(1 + os.getpid() % 100),
    "ROS_HOME": str(_RUN_HOME),
}
os.environ.update(ROS_ENV)


def tiny_checkpoint(path: Path, seed: int = 0) -> Path:
    """A small random student whose descriptors differ between images: weights are scaled up so
    that its neurons spike (with the default init an untrained student is silent)."""
    import torch

    from vl2spike_ros.core.checkpoint import save_checkpoint
    from vl2spike_ros.model import SpikformerStudent, StudentConfig

    torch.manual_seed(seed)
    model = SpikformerStudent(StudentConfig(embed_dims=64, num_heads=2, depths=1, descriptor_dim=64)).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Linear)):
                module.weight.mul_(40.0)
    save_checkpoint(path, model, {"kind": "test", "seed": seed})
    return path


def write_random_images(folder: Path, count: int) -> Path:
    """`count` random 64x32 frames in the Nordland layout (a tiny traverse for node start-up tests)."""
    import cv2
    import numpy as np

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for index in range(count):
        cv2.imwrite(str(folder / f"images-{index:05d}.png"), rng.integers(0, 256, (32, 64, 3), dtype=np.uint8))
    return folder


def build_test_map(checkpoint: Path, images: Path, out: Path) -> Path:
    from vl2spike_ros.sources.traverses import open_sequence
    from vl2spike_ros.core.encoder import DescriptorEncoder
    from vl2spike_ros.evaluation.runner import build_map

    build_map(DescriptorEncoder(checkpoint), open_sequence(images), progress=False).save(out)
    return out


class NodeProcess:
    """vpr_node started from its console script with `--ros-args`, output in a log file; `launcher`
    replaces the console script (the command before `--ros-args`)."""

    def __init__(self, log_path: Path, params: dict, namespace: str, extra_args: list[str] = (),
                 launcher: list[str] | None = None) -> None:
        ros_args = ["-r", f"__ns:={namespace}"]
        for name, value in params.items():
            text = ("true" if value else "false") if isinstance(value, bool) else str(value)
            ros_args += ["-p", f"{name}:={text}"]
        self.namespace = namespace
        self.log_path = log_path
        self._log = open(log_path, "w")
        from vl2spike_ros.demo.node_process import node_command

        # The console script beside the venv's Python (pip install -e . / make), as users start it.
        command = node_command([*ros_args, *extra_args])
        if launcher is not None:
            command = [*launcher, *command[command.index("--ros-args"):]]
        self.process = subprocess.Popen(command,
                                        stdout=self._log, stderr=subprocess.STDOUT,
                                        env={**os.environ, **ROS_ENV})

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, text: str, timeout_s: float = 90.0) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if text in self.log():
                return True
            if self.process.poll() is not None:
                return text in self.log()
            time.sleep(0.1)
        return False

    def stop(self, timeout_s: float = 15.0) -> int:
        from vl2spike_ros.demo.node_process import stop_process

        code = stop_process(self.process, timeout_s)
        self._log.close()
        return code


class Probe:
    """An rclpy node in its own context, spun by a background thread; collects messages."""

    def __init__(self, name: str = "vl2spike_test_probe") -> None:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor

        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node(name, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.lock = threading.Lock()
        self._thread = threading.Thread(target=self.executor.spin, daemon=True)
        self._thread.start()

    def collect(self, msg_type, topic: str, convert=lambda m: m, depth: int = 1000) -> list:
        """Subscribe `topic` (reliable) and return the list it appends `convert(msg)` to."""
        received: list = []

        def callback(message) -> None:
            with self.lock:
                received.append(convert(message))

        self.node.create_subscription(msg_type, topic, callback, depth)
        return received

    def wait_until(self, predicate, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self.lock:
                if predicate():
                    return True
            time.sleep(0.02)
        with self.lock:
            return predicate()

    def call(self, srv_type, name: str, request, timeout_s: float = 20.0):
        client = self.node.create_client(srv_type, name)
        try:
            assert client.wait_for_service(timeout_sec=timeout_s), f"service {name} not available"
            future = client.call_async(request)
            deadline = time.monotonic() + timeout_s
            while not future.done() and time.monotonic() < deadline:
                time.sleep(0.02)
            assert future.done(), f"service {name}: no answer in {timeout_s} s"
            return future.result()
        finally:
            self.node.destroy_client(client)

    def close(self) -> None:
        import rclpy

        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)
        self._thread.join(timeout=5.0)


def diagnostics_values(message, node_prefix: str) -> dict[str, str] | None:
    for status in message.status:
        if status.name.startswith(node_prefix):
            return {kv.key: kv.value for kv in status.values}
    return None
