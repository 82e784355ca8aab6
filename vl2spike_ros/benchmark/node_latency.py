"""Latency of a running `vpr_node` (its own process, DDS on loopback) under a fixed-rate image
stream, and the soak: many frames, the node's resident memory sampled as they go.

Latency is end to end: from publishing an image to receiving its `~/match` (the node's own
`latency_ms`, encode plus search, is reported beside it, and so are the per-stage times the node
publishes on /diagnostics at the end of the stream). A frame the node dropped (newest frame wins) or
never answered counts in `drops`.
"""
from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path

import numpy as np

from vl2spike_ros.benchmark.measure import cpu_seconds, percentile_summary, peak_resident_mb, resident_mb
from vl2spike_ros.demo.live import node_command, ros_environment, stop_process
from vl2spike_ros.errors import InputError
from vl2spike_ros.ros.node_diagnostics import STAGES

NAMESPACE = "/vl2spike_bench"


class RunningNode:
    """`vpr_node` in its own process with `map_dir`, and an rclpy client that streams to it."""

    def __init__(self, work_dir: Path, map_dir: Path, checkpoint: str | None, backend: str,
                 threads: int, device: str, startup_timeout_s: float = 180.0) -> None:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from diagnostic_msgs.msg import DiagnosticArray
        from sensor_msgs.msg import Image

        from vl2spike_ros.ros.bag_tools import wait_for_subscribers
        from vl2spike_ros.ros.match_message import MATCH_TYPE

        env = ros_environment(work_dir)
        os.environ.update(env)  # this process's rclpy too, before it starts
        model = ["-p", f"model_path:={Path(checkpoint).resolve()}"] if checkpoint else []
        ros_args = ["-r", f"__ns:={NAMESPACE}", *model, "-p", f"map_path:={map_dir.resolve()}",
                    "-p", "top_k:=5", "-p", f"num_threads:={threads}", "-p", f"backend:={backend}",
                    "-p", f"device:={device}", "-p", "publish_match_image:=false"]
        self.log_path = work_dir / "vpr_node.log"
        with open(self.log_path, "w") as log:
            self.process = subprocess.Popen(node_command(ros_args), stdout=log, stderr=subprocess.STDOUT,
                                            env={**os.environ, **env})
        self._lock = threading.Lock()
        self._received: dict[int, tuple[float, float]] = {}  # frame -> (arrival, node latency_ms)
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node("vl2spike_benchmark", context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.node.create_subscription(MATCH_TYPE, f"{NAMESPACE}/vpr_node/match", self._on_match, 1000)
        self._diagnostics: dict[str, str] = {}
        self._diagnostics_seen = threading.Event()
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 10)
        self.publisher = self.node.create_publisher(
            Image, f"{NAMESPACE}/image", QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))
        self._spinner = threading.Thread(target=self.executor.spin, daemon=True)
        self._spinner.start()
        if not wait_for_subscribers(self.node, self.publisher, 1, startup_timeout_s,
                                    alive=lambda: self.process.poll() is None):
            self.close()
            raise InputError(f"vpr_node did not become active (exit code {self.process.returncode}); "
                             f"see {self.log_path}")

    def _on_match(self, message) -> None:
        from vl2spike_ros.ros.match_message import match_fields

        body = match_fields(message)
        with self._lock:
            self._received[int(body["stamp"]["sec"])] = (time.perf_counter(), float(body["latency_ms"]))

    def _on_diagnostics(self, message) -> None:
        for status in message.status:
            if status.name.startswith(f"{NAMESPACE}/vpr_node"):
                with self._lock:
                    self._diagnostics = {value.key: value.value for value in status.values}
                self._diagnostics_seen.set()

    def stage_ms(self, timeout_s: float = 10.0) -> dict[str, dict[str, float | None]]:
        """{stage: {"p50", "p95"}} ms from the node's next /diagnostics: its recent frames (10 s window)."""
        self._diagnostics_seen.clear()
        self._diagnostics_seen.wait(timeout_s)
        with self._lock:
            values = dict(self._diagnostics)

        def number(key: str) -> float | None:
            text = values.get(key, "n/a")
            return None if text == "n/a" else float(text)

        return {stage: {q: number(f"stage_{stage}_ms_{q}") for q in ("p50", "p95")} for stage in STAGES}

    def stream(self, frames: list[np.ndarray], count: int, rate_hz: float, first_index: int = 0,
               on_second=None) -> dict:
        """Publishes `count` frames (cycling `frames`) at `rate_hz`; frame i carries stamp.sec = i.
        `on_second(elapsed_s, answered)` is called about once a second (the soak samples memory)."""
        from vl2spike_ros.ros.image_messages import rgb_to_image

        messages = [rgb_to_image(frame) for frame in frames]
        published: dict[int, float] = {}
        cpu_before, wall_before = cpu_seconds(self.process.pid), time.perf_counter()
        period = 1.0 / rate_hz
        next_tick = time.perf_counter()
        next_report = next_tick + 1.0
        for offset in range(count):
            index = first_index + offset
            message = messages[offset % len(messages)]
            message.header.stamp.sec = index
            message.header.stamp.nanosec = 0
            next_tick += period
            published[index] = time.perf_counter()
            self.publisher.publish(message)
            if on_second is not None and time.perf_counter() >= next_report:
                next_report += 1.0
                with self._lock:
                    answered = sum(1 for i in published if i in self._received)
                on_second(time.perf_counter() - wall_before, answered)
            delay = next_tick - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        wall = time.perf_counter() - wall_before
        cpu = cpu_seconds(self.process.pid) - cpu_before
        self._settle(published)
        stages = self.stage_ms()
        with self._lock:
            answers = {i: self._received[i] for i in published if i in self._received}
        end_to_end = [(arrival - published[i]) * 1000.0 for i, (arrival, _) in answers.items()]
        inside = [latency for _, latency in answers.values()]
        return {"frames": count, "rate_hz_target": rate_hz, "rate_hz_achieved": round(count / wall, 2),
                "answered": len(answers), "drops": count - len(answers),
                "latency_ms": percentile_summary(end_to_end), "node_latency_ms": percentile_summary(inside),
                "stage_ms": stages,
                "node_cpu_percent": round(100.0 * cpu / wall, 1),
                "node_rss_mb": round(resident_mb(self.process.pid), 1),
                "node_peak_rss_mb": round(peak_resident_mb(self.process.pid), 1)}

    def _settle(self, published: dict[int, float], quiet_s: float = 2.0, limit_s: float = 15.0) -> None:
        """Waits until every frame is answered or answers stop coming for `quiet_s`."""
        deadline = time.monotonic() + limit_s
        last, last_change = -1, time.monotonic()
        while time.monotonic() < deadline:
            with self._lock:
                answered = sum(1 for i in published if i in self._received)
            if answered == len(published):
                return
            if answered != last:
                last, last_change = answered, time.monotonic()
            elif time.monotonic() - last_change > quiet_s:
                return
            time.sleep(0.05)

    def close(self) -> None:
        import rclpy

        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)
        self._spinner.join(timeout=5.0)
        stop_process(self.process)


def soak(node: RunningNode, frames: list[np.ndarray], count: int, rate_hz: float,
         warmup_fraction: float = 0.1, progress=print) -> dict:
    """`count` frames; resident memory of the node after warm-up vs at the end, and the answer rate
    in the first and last tenth of the run (flat means no slow-down)."""
    samples: list[tuple[float, float, int]] = []  # (elapsed s, node RSS MiB, answered)

    def on_second(elapsed: float, answered: int) -> None:
        samples.append((elapsed, resident_mb(node.process.pid), answered))
        if len(samples) % 60 == 0:
            progress(f"  soak {elapsed:6.0f} s: node RSS {samples[-1][1]:.1f} MiB, {answered} answered")

    result = node.stream(frames, count, rate_hz, first_index=10**6, on_second=on_second)
    if len(samples) < 10:
        raise InputError(f"soak of {count} frames at {rate_hz:g} Hz is too short to sample memory; "
                         "give at least 10 seconds of frames")
    warm = samples[max(1, int(len(samples) * warmup_fraction)) - 1]
    tenth = max(1, len(samples) // 10)

    def rate(window: list[tuple[float, float, int]]) -> float:
        return (window[-1][2] - window[0][2]) / max(window[-1][0] - window[0][0], 1e-9)

    final_rss = resident_mb(node.process.pid)
    return {**result, "rss_after_warmup_mb": round(warm[1], 1), "rss_final_mb": round(final_rss, 1),
            "rss_growth_pct": round(100.0 * (final_rss - warm[1]) / warm[1], 3),
            "answer_rate_first_tenth_hz": round(rate(samples[:tenth + 1]), 2),
            "answer_rate_last_tenth_hz": round(rate(samples[-tenth - 1:]), 2)}
