"""The live part of `make demo`: the query traverse goes through a running `vpr_node` over DDS.

`run_live_demo` writes the query traverse as a rosbag2 (unless it already is one), starts
`vpr_node` as its own process with the map, warms it up on one frame and resets its sequence (so
the warm-up frame neither enters sequence matching nor the query count), replays the bag on the
node's `image` topic over DDS on loopback, collects `~/match` and `/diagnostics`, stops the node and
returns Recall@K (percent of ALL queries: a dropped or unanswered frame is a miss), latency
percentiles (inside the node, and publish-to-match end to end) and the node's drop count.

Replay is at a fixed rate (what a camera does: frames the node cannot keep up with are dropped), or
in lockstep (each frame waits for the previous one's match: no drops, so the live Recall@K equals
the offline evaluation's exactly).
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from vl2spike_ros.demo.node_process import log_tail, node_command, ros_environment, stop_process
from vl2spike_ros.errors import InputError
from vl2spike_ros.evaluation.metrics import RECALL_KS
from vl2spike_ros.ros.node_diagnostics import percentiles
from vl2spike_ros.ros.parameters import TRANSPORTS

DEMO_NAMESPACE = "/vl2spike_demo"
SUMMARY_KS = (1, 5, 10)  # the Recall@K printed in the one-line summary (all of RECALL_KS are in the JSON)
WARMUP_ANSWER_TIMEOUT_S = 10.0  # per warm-up frame; the first inference includes lazy start-up work
LOCKSTEP_ANSWER_TIMEOUT_S = 60.0


class MatchCollector:
    """Collects `~/match` answers to the replayed frames (by header stamp) and the node's diagnostics."""

    def __init__(self, stamp_to_index: dict[tuple[int, int], int], node_prefix: str) -> None:
        self.stamp_to_index = stamp_to_index
        self.node_prefix = node_prefix
        self.matches: dict[int, dict] = {}
        self.received_at: dict[int, float] = {}
        self.published_at: dict[int, float] = {}
        self.other_stamps: set[tuple[int, int]] = set()  # answers to frames outside the replay (warm-up)
        self.diagnostics: list[dict[str, str]] = []
        self.changed = threading.Condition()

    def on_match(self, message: Any) -> None:
        from vl2spike_ros.ros.match_message import match_fields  # rclpy's messages: only when replaying

        body = match_fields(message)
        key = (body["stamp"]["sec"], body["stamp"]["nanosec"])
        with self.changed:
            if key in self.stamp_to_index:
                index = self.stamp_to_index[key]
                self.matches[index] = body
                self.received_at[index] = time.monotonic()
            else:
                self.other_stamps.add(key)
            self.changed.notify_all()

    def on_diagnostics(self, message: Any) -> None:
        for status in message.status:
            if status.name.startswith(self.node_prefix):
                with self.changed:
                    self.diagnostics.append({kv.key: kv.value for kv in status.values})
                    self.changed.notify_all()

    def wait_for(self, predicate, timeout_s: float) -> bool:
        with self.changed:
            return self.changed.wait_for(predicate, timeout_s)


def live_recalls(matches: dict[int, dict], query_frames: list[int], reference_frames: list[int],
                 tolerance: int, top_k: int) -> dict[int, float]:
    """Recall@K (percent) over all queries, from the node's answers; an unanswered query is a miss."""
    from vl2spike_ros.evaluation.metrics import frame_tolerance_positives, recall_at_k

    ranked = np.full((len(query_frames), top_k), -1, dtype=np.int64)
    for index, body in matches.items():
        ids = body["place_ids"][:top_k]
        ranked[index, : len(ids)] = ids
    positives = frame_tolerance_positives(query_frames, reference_frames, tolerance)
    return recall_at_k(ranked, positives, ks=tuple(k for k in RECALL_KS if k <= top_k))


def run_live_demo(checkpoint: str | Path | None, map_dir: str | Path, query_dir: str | Path,
                  tolerance: int = 10, work_dir: str | Path | None = None, rate_hz: float = 10.0,
                  sequence_length: int = 1, transport: str = "raw", num_threads: int = 1,
                  startup_timeout_s: float = 120.0, max_queries: int | None = None,
                  progress: bool = True, lockstep: bool = False) -> dict[str, Any]:
    """Replay `query_dir` (folder or bag) through a live `vpr_node` holding `map_dir`; see the module doc.

    The node's answers go to `work_dir/live_matches.json` (per query: place ids, scores, the node's
    query index). The returned dict (also written to `work_dir/live_metrics.json`) has `recall@K` (percent) for
    each K of RECALL_KS up to the map size, `num_queries`, `answered`, `dropped`, `invalid`,
    `latency_ms` and `end_to_end_ms` (each {p50, p90, p99}), `rate_hz`, `lockstep` and the paths used.
    """
    from vl2spike_ros.core.place_map import PlaceMap
    from vl2spike_ros.ros.bag_tools import bag_messages
    from vl2spike_ros.sources.traverses import is_bag, open_sequence
    from vl2spike_ros.sources.bags import write_bag

    if transport not in TRANSPORTS:
        raise InputError(f"transport {transport!r}: expected one of {', '.join(TRANSPORTS)}")
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
    stamp_to_index = {divmod(m.stamp_ns, 10**9): m.index for m in messages if m.index < len(frames)}

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
    collector = MatchCollector(stamp_to_index, f"{DEMO_NAMESPACE}/vpr_node")
    with open(log_path, "w") as log:
        process = subprocess.Popen(node_command(ros_args), stdout=log, stderr=subprocess.STDOUT,
                                   env={**os.environ, **env_updates})
    if progress:
        print(f"live demo: starting vpr_node (log: {log_path})", flush=True)
    try:
        _replay_through_node(process, log_path, bag, msgtype, len(frames), collector, rate_hz,
                             transport, startup_timeout_s, lockstep, progress)
    finally:
        exit_code = stop_process(process)
    final_diagnostics = collector.diagnostics[-1] if collector.diagnostics else {}

    # 5. Metrics: Recall@K over ALL queries (unanswered = miss), latencies, drops.
    recalls = live_recalls(collector.matches, [frame.frame for frame in frames], reference_frames,
                           tolerance, top_k)
    matches, published_at, received_at = collector.matches, collector.published_at, collector.received_at
    end_to_end = [1000.0 * (received_at[i] - published_at[i]) for i in matches if i in published_at]
    result: dict[str, Any] = {
        **{f"recall@{k}": float(value) for k, value in recalls.items()},
        "num_queries": len(frames),
        "num_references": len(place_map),
        "answered": len(matches),
        "dropped": int(final_diagnostics.get("frames_dropped", "0")),
        "invalid": int(final_diagnostics.get("invalid_frames", "0")),
        "frames_received_by_node": int(final_diagnostics.get("frames_received", "0")),
        "latency_ms": percentiles([body["latency_ms"] for body in matches.values()]),
        "end_to_end_ms": percentiles(end_to_end),
        "rate_hz": rate_hz,
        "lockstep": lockstep,
        "tolerance": tolerance,
        "sequence_length": sequence_length,
        "transport": transport,
        "bag": str(bag),
        "node_log": str(log_path),
        "node_exit_code": exit_code,
    }
    from vl2spike_ros.core.atomic_files import write_json_atomic

    write_json_atomic(work_dir / "live_metrics.json", result)
    # The node's answers in the layout of the offline matches.json (unanswered queries: empty lists).
    answers = [matches.get(index, {}) for index in range(len(frames))]
    write_json_atomic(work_dir / "live_matches.json", {
        "place_ids": [body.get("place_ids", []) for body in answers],
        "scores": [body.get("scores", []) for body in answers],
        "query_index": [body.get("query_index") for body in answers],
    })
    return result


def _replay_through_node(process: subprocess.Popen, log_path: Path, bag: Path, msgtype: str, count: int,
                         collector: MatchCollector, rate_hz: float, transport: str,
                         startup_timeout_s: float, lockstep: bool, progress: bool) -> None:
    """Steps 3 and 4: wait for the node, warm it up, reset its sequence, replay, let answers settle."""
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from std_srvs.srv import Trigger

    from vl2spike_ros.ros.match_message import MATCH_TYPE
    from vl2spike_ros.ros.bag_tools import (bag_messages, play_bag, restamped, ros_message_class,
                                            wait_for_subscribers)

    image_topic = f"{DEMO_NAMESPACE}/image" + ("/compressed" if transport == "compressed" else "")
    context = rclpy.Context()
    rclpy.init(context=context)
    executor = SingleThreadedExecutor(context=context)
    node = rclpy.create_node("vl2spike_live_demo", context=context)
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    node.create_subscription(MATCH_TYPE, f"{DEMO_NAMESPACE}/vpr_node/match", collector.on_match, 1000)
    node.create_subscription(DiagnosticArray, "/diagnostics", collector.on_diagnostics, 10)
    alive = lambda: process.poll() is None  # noqa: E731

    def failed(what: str) -> InputError:
        return InputError(f"vpr_node {what} (exit code {process.poll()}); last log lines:\n{log_tail(log_path)}")

    try:
        # 3. Wait until the node is active (it subscribes only then), then warm it up on one frame.
        probe = node.create_publisher(ros_message_class(msgtype), image_topic,
                                      QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))
        if not wait_for_subscribers(node, probe, 1, startup_timeout_s, alive=alive):
            raise failed("did not become active")
        # A frame from the middle of the traverse: were it kept in the node's sequence history, the
        # first queries would be scored against the wrong stretch of the route.
        warmup = next(m for m in bag_messages(bag)[2] if m.index == count // 2)
        # Warm-up stamps 1, 2, ... (no query has them). Only the answer to the LAST one sent counts:
        # the node answers in order, so no earlier warm-up frame can be processed after it.
        for warmup_stamp in range(1, 1 + int(startup_timeout_s / WARMUP_ANSWER_TIMEOUT_S) + 1):
            probe.publish(restamped(warmup, warmup_stamp))
            if collector.wait_for(lambda: (0, warmup_stamp) in collector.other_stamps or not alive(),
                                  WARMUP_ANSWER_TIMEOUT_S) and alive():
                break
        else:
            raise failed("did not answer a warm-up frame")
        if not alive():
            raise failed("stopped during warm-up")
        client = node.create_client(Trigger, f"{DEMO_NAMESPACE}/vpr_node/reset_sequence")
        if not client.wait_for_service(timeout_sec=30.0):
            raise failed("offers no ~/reset_sequence")
        future = client.call_async(Trigger.Request())
        deadline = time.monotonic() + 30.0
        while not future.done() and time.monotonic() < deadline:
            time.sleep(0.01)
        if not future.done() or not future.result().success:
            raise failed("did not reset its sequence after the warm-up")
        if progress:
            pace = "in lockstep" if lockstep else f"at {rate_hz:g} Hz"
            print(f"live demo: replaying {count} query frames {pace} on {image_topic}", flush=True)

        stop = threading.Event()

        def on_publish(message, when: float) -> None:
            collector.published_at[message.index] = when
            if lockstep and not collector.wait_for(
                    lambda: message.index in collector.matches or not alive(), LOCKSTEP_ANSWER_TIMEOUT_S):
                raise failed(f"did not answer query {message.index} in {LOCKSTEP_ANSWER_TIMEOUT_S:g} s")
            if message.index + 1 >= count:
                stop.set()

        play_bag(node, bag, out_topic=image_topic, rate_hz=rate_hz, wait_subscribers=1,
                 wait_timeout_s=10.0, on_publish=on_publish, stop=stop, publisher=probe)
        # 4. Let the last frames come back (until every query is answered or answers stop coming),
        #    then take the node's final diagnostics.
        while len(collector.matches) < count:
            answered = len(collector.matches)
            if not collector.wait_for(lambda: len(collector.matches) > answered, 2.0):
                break
        seen = len(collector.diagnostics)
        collector.wait_for(lambda: len(collector.diagnostics) > seen, 3.0)
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown(context=context)
        spinner.join(timeout=5.0)


def format_summary(result: dict[str, Any]) -> str:
    def ms(values: dict[str, float | None]) -> str:
        return " / ".join("n/a" if values[k] is None else f"{values[k]:.1f}" for k in ("p50", "p90", "p99"))

    pace = "lockstep" if result["lockstep"] else f"{result['rate_hz']:g} Hz"
    recalls = "  ".join(f"Recall@{k} {result[f'recall@{k}']:.1f}%" for k in SUMMARY_KS if f"recall@{k}" in result)
    return "\n".join([
        f"live (vpr_node over DDS, {result['transport']}, {pace}): "
        f"{result['answered']}/{result['num_queries']} queries answered, "
        f"{result['dropped']} dropped, {result['invalid']} invalid",
        f"  {recalls}  (tolerance {result['tolerance']} frames)",
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
    parser.add_argument("--lockstep", action="store_true",
                        help="send each frame after the previous one's match (no drops; --rate is then an upper bound)")
    parser.add_argument("--transport", choices=TRANSPORTS, default="raw")
    parser.add_argument("--sequence-length", type=int, default=1)
    parser.add_argument("--work-dir", default=None)
    args = parser.parse_args(argv)
    try:
        result = run_live_demo(args.checkpoint, args.map, args.query, args.tolerance, args.work_dir,
                               rate_hz=args.rate, sequence_length=args.sequence_length,
                               transport=args.transport, lockstep=args.lockstep)
    except InputError as error:
        print(f"live demo: error: {error}", file=sys.stderr)
        return 2
    print(format_summary(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
