"""The live part of `make demo`: the query traverse goes through a running `vpr_node` over DDS.

`run_live_demo` writes the query traverse as a rosbag2 (unless it already is one), starts
`vpr_node` as its own process with the map, replays the bag on the node's `image` topic at a fixed
rate over DDS on loopback, collects `~/match` and `/diagnostics`, stops the node and returns
Recall@1/5/10 (percent of ALL queries: a dropped or unanswered frame is a miss), latency percentiles
(inside the node, and publish-to-match end to end) and the node's drop count.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from vl2spike_ros.errors import InputError
from vl2spike_ros.ros.node_diagnostics import percentiles

DEMO_NAMESPACE = "/vl2spike_demo"
RECALL_KS = (1, 5, 10)


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


def _log_tail(path: Path, lines: int = 15) -> str:
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


def run_live_demo(checkpoint: str | Path | None, map_dir: str | Path, query_dir: str | Path,
                  tolerance: int = 10, work_dir: str | Path | None = None, rate_hz: float = 10.0,
                  sequence_length: int = 1, transport: str = "raw", num_threads: int = 1,
                  startup_timeout_s: float = 120.0, max_queries: int | None = None,
                  progress: bool = True) -> dict[str, Any]:
    """Replay `query_dir` (folder or bag) through a live `vpr_node` holding `map_dir`; see the module doc.

    The returned dict (also written to `work_dir/live_metrics.json`) has `recall@1`, `recall@5`,
    `recall@10` (percent), `num_queries`, `answered`, `dropped`, `invalid`,
    `latency_ms` and `end_to_end_ms` (each {p50, p90, p99}), `rate_hz` and the paths used.
    """
    from vl2spike_ros.sources.bags import write_bag
    from vl2spike_ros.sources.image_folders import is_bag, open_sequence
    from vl2spike_ros.evaluation.metrics import frame_tolerance_positives, recall_at_k
    from vl2spike_ros.core.place_map import PlaceMap
    from vl2spike_ros.ros.bag_tools import bag_messages, play_bag

    if transport not in ("raw", "compressed"):
        raise InputError(f"transport {transport!r}: expected raw or compressed")
    if not rate_hz > 0:
        raise InputError(f"rate {rate_hz} Hz: expected a positive rate")
    work_dir = Path(work_dir) if work_dir is not None else Path(tempfile.mkdtemp(prefix="vl2spike_live_"))
    work_dir.mkdir(parents=True, exist_ok=True)
    place_map = PlaceMap.load(map_dir)
    if len(place_map) == 0:
        raise InputError(f"map {map_dir}: holds no places")
    reference_frames = [p.frame if p.frame is not None else p.place_id for p in place_map.places]

    # 1. The query traverse as a bag, written afresh every run: a bag kept from an earlier run could
    #    hold another traverse (writing one costs seconds).
    if is_bag(query_dir):
        bag = Path(query_dir)
    else:
        bag = work_dir / f"query_{transport}.bag"
        if bag.exists():
            shutil.rmtree(bag)
        if progress:
            print(f"live demo: writing the query traverse to {bag}", flush=True)
        write_bag(open_sequence(query_dir), bag, compressed=transport == "compressed",
                  compression="png", rate_hz=rate_hz)
    query_sequence = open_sequence(bag)
    frames = query_sequence.frames[:max_queries] if max_queries else query_sequence.frames
    _, msgtype, messages = bag_messages(bag)
    stamp_to_index: dict[tuple[int, int], int] = {}
    for message in messages:
        if message.index >= len(frames):
            break
        stamp_to_index[divmod(message.stamp_ns, 10**9)] = message.index

    # 2. ROS on loopback, for the node process and for this one (before rclpy starts).
    env_updates = ros_environment(work_dir)
    os.environ.update(env_updates)
    top_k = min(max(RECALL_KS), len(place_map))
    # No model_path at all for the shipped model: rcl refuses an empty `-p name:=` override.
    model_args = ["-p", f"model_path:={Path(checkpoint).resolve()}"] if checkpoint else []
    ros_args = ["-r", f"__ns:={DEMO_NAMESPACE}", *model_args,
                "-p", f"map_path:={Path(map_dir).resolve()}",
                "-p", f"top_k:={top_k}", "-p", f"sequence_length:={sequence_length}",
                "-p", f"transport:={transport}", "-p", f"num_threads:={num_threads}",
                "-p", "publish_match_image:=false"]
    log_path = work_dir / "vpr_node.log"
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.executors import SingleThreadedExecutor
    from std_msgs.msg import String

    matches: dict[int, dict] = {}
    received_at: dict[int, float] = {}
    published_at: dict[int, float] = {}
    warmup_answered = threading.Event()
    diagnostics: list[dict[str, str]] = []
    lock = threading.Lock()
    image_topic = f"{DEMO_NAMESPACE}/image" + ("/compressed" if transport == "compressed" else "")

    def on_match(message: String) -> None:
        body = json.loads(message.data)
        key = (body["stamp"]["sec"], body["stamp"]["nanosec"])
        with lock:
            if key in stamp_to_index:
                index = stamp_to_index[key]
                matches[index] = body
                received_at[index] = time.monotonic()
            else:
                warmup_answered.set()

    def on_diagnostics(message: DiagnosticArray) -> None:
        for status in message.status:
            if status.name.startswith(f"{DEMO_NAMESPACE}/vpr_node"):
                with lock:
                    diagnostics.append({kv.key: kv.value for kv in status.values})

    with open(log_path, "w") as log:
        process = subprocess.Popen(node_command(ros_args), stdout=log, stderr=subprocess.STDOUT,
                                   env={**os.environ, **env_updates})
    context = rclpy.Context()
    rclpy.init(context=context)
    executor = SingleThreadedExecutor(context=context)
    node = rclpy.create_node("vl2spike_live_demo", context=context)
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    node.create_subscription(String, f"{DEMO_NAMESPACE}/vpr_node/match", on_match, 1000)
    node.create_subscription(DiagnosticArray, "/diagnostics", on_diagnostics, 10)
    try:
        # 3. Wait until the node is active (it subscribes only then), then warm it up.
        from vl2spike_ros.ros.bag_tools import ros_message_class, wait_for_subscribers
        from rclpy.qos import QoSProfile, ReliabilityPolicy

        if progress:
            print(f"live demo: starting vpr_node (log: {log_path})", flush=True)
        probe = node.create_publisher(ros_message_class(msgtype), image_topic,
                                      QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))
        if not wait_for_subscribers(node, probe, 1, startup_timeout_s, alive=lambda: process.poll() is None):
            raise InputError(f"vpr_node did not become active (exit code {process.poll()}); "
                             f"last log lines:\n{_log_tail(log_path)}")
        first = next(bag_messages(bag)[2])
        from vl2spike_ros.ros.bag_tools import restamped

        warm_deadline = time.monotonic() + 30.0
        while not warmup_answered.is_set():  # a stamp no query has: its match is not counted
            if time.monotonic() > warm_deadline or process.poll() is not None:
                raise InputError(f"vpr_node did not answer a warm-up frame; last log lines:\n"
                                 f"{_log_tail(log_path)}")
            probe.publish(restamped(first, 1))
            warmup_answered.wait(0.5)
        time.sleep(0.3)  # let the warm-up frame's match go by
        if progress:
            print(f"live demo: replaying {len(frames)} query frames at {rate_hz:g} Hz on {image_topic}",
                  flush=True)

        def on_publish(message, when: float) -> None:
            published_at[message.index] = when

        stop = threading.Event()
        count = [0]

        def limited(message, when: float) -> None:
            on_publish(message, when)
            count[0] += 1
            if count[0] >= len(frames):
                stop.set()

        play_bag(node, bag, out_topic=image_topic, rate_hz=rate_hz, wait_subscribers=1,
                 wait_timeout_s=10.0, on_publish=limited, stop=stop, publisher=probe)
        # 4. Let the last frames come back, then take the node's final diagnostics.
        settle_deadline = time.monotonic() + 10.0
        last_count, last_change = -1, time.monotonic()
        while time.monotonic() < settle_deadline:
            with lock:
                answered = len(matches)
            if answered >= len(frames):
                break
            if answered != last_count:
                last_count, last_change = answered, time.monotonic()
            elif time.monotonic() - last_change > 2.0:
                break
            time.sleep(0.1)
        with lock:
            seen = len(diagnostics)
        diag_deadline = time.monotonic() + 3.0
        while time.monotonic() < diag_deadline:
            with lock:
                if len(diagnostics) > seen:
                    break
            time.sleep(0.05)
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown(context=context)
        spinner.join(timeout=5.0)
        exit_code = stop_process(process)
    final_diagnostics = diagnostics[-1] if diagnostics else {}

    # 5. Metrics: Recall@K over ALL queries (unanswered = miss), latencies, drops.
    query_frames = [frame.frame for frame in frames]
    ranked = np.full((len(frames), top_k), -1, dtype=np.int64)
    for index, body in matches.items():
        ids = body["place_ids"][:top_k]
        ranked[index, : len(ids)] = ids
    positives = frame_tolerance_positives(query_frames, reference_frames, tolerance)
    recalls = recall_at_k(ranked, positives, ks=tuple(k for k in RECALL_KS if k <= top_k) or (top_k,))
    end_to_end = [1000.0 * (received_at[i] - published_at[i]) for i in matches if i in published_at]
    result: dict[str, Any] = {
        **{f"recall@{k}": float(recalls.get(k, recalls[max(recalls)])) for k in RECALL_KS},
        "num_queries": len(frames),
        "num_references": len(place_map),
        "answered": len(matches),
        "dropped": int(final_diagnostics.get("frames_dropped", "0")),
        "invalid": int(final_diagnostics.get("invalid_frames", "0")),
        "frames_received_by_node": int(final_diagnostics.get("frames_received", "0")),
        "latency_ms": percentiles([body["latency_ms"] for body in matches.values()]),
        "end_to_end_ms": percentiles(end_to_end),
        "rate_hz": rate_hz,
        "tolerance": tolerance,
        "sequence_length": sequence_length,
        "transport": transport,
        "bag": str(bag),
        "node_log": str(log_path),
        "node_exit_code": exit_code,
    }
    from vl2spike_ros.core.atomic_files import write_json_atomic

    write_json_atomic(work_dir / "live_metrics.json", result)
    return result


def format_summary(result: dict[str, Any]) -> str:
    def ms(values: dict[str, float | None]) -> str:
        return " / ".join("n/a" if values[k] is None else f"{values[k]:.1f}" for k in ("p50", "p90", "p99"))

    return "\n".join([
        f"live (vpr_node over DDS, {result['transport']}, {result['rate_hz']:g} Hz): "
        f"{result['answered']}/{result['num_queries']} queries answered, "
        f"{result['dropped']} dropped, {result['invalid']} invalid",
        f"  Recall@1 {result['recall@1']:.1f}%  Recall@5 {result['recall@5']:.1f}%  "
        f"Recall@10 {result['recall@10']:.1f}%  (tolerance {result['tolerance']} frames)",
        f"  latency in node p50/p90/p99: {ms(result['latency_ms'])} ms; "
        f"publish-to-match: {ms(result['end_to_end_ms'])} ms",
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vl2spike_ros.demo.live",
                                     description="Replay a query traverse through a live vpr_node.")
    parser.add_argument("--checkpoint", default=None, help="student checkpoint (default: shipped model)")
    parser.add_argument("--map", required=True, help="map directory (vl2spike build-map)")
    parser.add_argument("--query", required=True, help="query image folder or bag")
    parser.add_argument("--tolerance", type=int, default=10)
    parser.add_argument("--rate", type=float, default=10.0, help="frames per second (default 10)")
    parser.add_argument("--transport", choices=("raw", "compressed"), default="raw")
    parser.add_argument("--sequence-length", type=int, default=1)
    parser.add_argument("--work-dir", default=None)
    args = parser.parse_args(argv)
    try:
        result = run_live_demo(args.checkpoint, args.map, args.query, args.tolerance, args.work_dir,
                               rate_hz=args.rate, sequence_length=args.sequence_length,
                               transport=args.transport)
    except InputError as error:
        print(f"live demo: error: {error}", file=sys.stderr)
        return 2
    print(format_summary(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
