"""vpr_node against a hostile publisher: a 600-byte JPEG whose header claims 20000x20000 pixels
(1.2 GB once decoded) is counted invalid from its header, and the node's memory stays bounded."""
from __future__ import annotations

import time
from pathlib import Path

import pytest

import node_fixtures as support  # sets the loopback ROS environment before rclpy starts

rclpy = pytest.importorskip("rclpy", reason="rclpy (ROS 2) is not installed")

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from rclpy.qos import qos_profile_sensor_data  # noqa: E402
from sensor_msgs.msg import CompressedImage  # noqa: E402

from helpers import jpeg_size_bomb, photo  # noqa: E402
from vl2spike_ros.ros.image_messages import rgb_to_compressed  # noqa: E402
from vl2spike_ros.ros.match_message import MATCH_TYPE, match_fields  # noqa: E402

NAMESPACE = "/vpr_test_untrusted"
# The bomb decoded would add 1.2 GB; a few frames' worth of working memory is all the node may gain.
MAX_PEAK_GROWTH_MB = 200


def peak_rss_mb(pid: int) -> float:
    """Peak resident memory (VmHWM) of `pid` or its largest descendant (the console script may
    re-start Python once to set its library path)."""
    peaks, pending = [], [pid]
    while pending:
        current = pending.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
            peaks.append(int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM"))))
            for task in Path(f"/proc/{current}/task").iterdir():
                pending.extend(int(child) for child in (task / "children").read_text().split())
        except (FileNotFoundError, ProcessLookupError, StopIteration):
            continue
    return max(peaks, default=0) / 1024


def test_jpeg_size_bomb_is_invalid_and_memory_stays_bounded(tmp_path):
    if not Path("/proc/self/status").is_file():
        pytest.skip("needs /proc to read the node's peak memory")
    checkpoint = support.tiny_checkpoint(tmp_path / "tiny.safetensors")
    images = support.write_random_images(tmp_path / "reference", 6)
    map_dir = support.build_test_map(checkpoint, images, tmp_path / "map")
    node = support.NodeProcess(tmp_path / "node.log", {
        "model_path": checkpoint, "map_path": map_dir, "transport": "compressed", "num_threads": 1,
        "top_k": 3, "diagnostics_period": 0.2}, NAMESPACE)
    probe = support.Probe()
    try:
        publisher = probe.node.create_publisher(CompressedImage, f"{NAMESPACE}/image/compressed",
                                                qos_profile_sensor_data)
        matches = probe.collect(MATCH_TYPE, f"{NAMESPACE}/vpr_node/match", match_fields)
        diagnostics = probe.collect(DiagnosticArray, "/diagnostics",
                                    lambda m: support.diagnostics_values(m, f"{NAMESPACE}/vpr_node"))
        assert node.wait_for_log("active: listening on", 120.0), node.log()
        assert probe.wait_until(lambda: publisher.get_subscription_count() > 0, 20.0)

        def answered(sec: int) -> bool:
            good = rgb_to_compressed(photo("coffee", (64, 32)))
            good.header.stamp.sec = sec
            deadline = time.monotonic() + 30.0
            while time.monotonic() < deadline:
                publisher.publish(good)
                if probe.wait_until(lambda: any(m["stamp"]["sec"] == sec for m in matches), 1.0):
                    return True
            return False

        assert answered(1), node.log()  # warm: discovery and the first inference are done
        peak_before = peak_rss_mb(node.process.pid)

        bomb = CompressedImage(format="jpeg", data=jpeg_size_bomb(20000, 20000))
        assert len(bomb.data) < 1000
        for _ in range(20):
            publisher.publish(bomb)
            time.sleep(0.02)

        def invalid_count() -> int:  # called under probe.lock by wait_until, and after it
            latest = [d for d in list(diagnostics) if d is not None]
            return int(latest[-1]["invalid_frames"]) if latest else 0

        assert probe.wait_until(lambda: invalid_count() >= 10, 10.0), (invalid_count(), node.log())
        reason = [d for d in list(diagnostics) if d is not None][-1]["last_invalid_reason"]
        assert "20000x20000" in reason and "max_image_pixels" in reason, reason
        assert answered(2), node.log()  # still serving
        growth = peak_rss_mb(node.process.pid) - peak_before
        print(f"size bomb: {invalid_count()} invalid, peak memory {peak_before:.0f} MB + {growth:.0f} MB")
        assert growth < MAX_PEAK_GROWTH_MB
        assert node.process.poll() is None
    finally:
        probe.close()
        assert node.stop() == 0, node.log()
