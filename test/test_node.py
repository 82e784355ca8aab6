"""vpr_node as users run it: its console script in its own process, talked to over DDS on loopback.

Two node processes serve the module: a localising one on raw images (map of the demo route's
reference traverse) and a mapping one on compressed images (starting from an empty map).
"""
from __future__ import annotations

import json
import sys
import time

import pytest

import node_fixtures as support  # sets the loopback ROS environment before rclpy starts

rclpy = pytest.importorskip("rclpy", reason="rclpy (ROS 2) is not installed")

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from lifecycle_msgs.srv import GetState  # noqa: E402
from rcl_interfaces.msg import Parameter as ParameterMsg  # noqa: E402
from rcl_interfaces.msg import ParameterType, ParameterValue  # noqa: E402
from rcl_interfaces.srv import SetParameters  # noqa: E402
from rclpy.qos import qos_profile_sensor_data  # noqa: E402
from sensor_msgs.msg import CompressedImage, Image  # noqa: E402
from std_msgs.msg import String  # noqa: E402
from std_srvs.srv import SetBool  # noqa: E402

from vl2spike_ros.sources.image_folders import ImageFolderSequence  # noqa: E402
from vl2spike_ros.demo.route import write_demo_route  # noqa: E402
from vl2spike_ros.core.place_map import PlaceMap  # noqa: E402
from vl2spike_ros.ros.image_messages import rgb_to_compressed, rgb_to_image  # noqa: E402
from vl2spike_ros.ros.node_diagnostics import STAGES  # noqa: E402
from vl2spike_ros.ros.match_message import (MATCH_TYPE, SAVE_MAP_TYPE, TYPED_UNAVAILABLE,  # noqa: E402
                                            match_fields)

RAW_NS = "/vpr_test_raw"
MAP_NS = "/vpr_test_map"


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("node_assets")
    reference, query = write_demo_route(root / "route")
    checkpoint = support.tiny_checkpoint(root / "tiny.safetensors")
    map_dir = support.build_test_map(checkpoint, reference, root / "map")
    queries = ImageFolderSequence(query)
    images = [queries.read(i) for i in range(40)]
    return {"root": root, "reference": reference, "checkpoint": checkpoint, "map": map_dir, "images": images}


@pytest.fixture(scope="module")
def probe():
    p = support.Probe()
    yield p
    p.close()


def _stamp(message, sec: int, nanosec: int = 0, frame_id: str = "test_camera"):
    message.header.stamp.sec, message.header.stamp.nanosec = sec, nanosec
    message.header.frame_id = frame_id
    return message


def _start(assets, namespace: str, log_name: str, **params):
    base = {"model_path": assets["checkpoint"], "num_threads": 1, "top_k": 5}
    return support.NodeProcess(assets["root"] / log_name, {**base, **params}, namespace)


class Channel:
    """A node process plus the probe's publisher, /match and /diagnostics collectors for it."""

    def __init__(self, probe, node, compressed: bool, match_type=MATCH_TYPE, read_match=match_fields) -> None:
        self.probe, self.node = probe, node
        self.msg_type = CompressedImage if compressed else Image
        topic = f"{node.namespace}/image" + ("/compressed" if compressed else "")
        self.publisher = probe.node.create_publisher(self.msg_type, topic, qos_profile_sensor_data)
        self.matches = probe.collect(match_type, f"{node.namespace}/vpr_node/match", read_match)
        prefix = f"{node.namespace}/vpr_node"
        self.diagnostics = probe.collect(
            DiagnosticArray, "/diagnostics", lambda m: support.diagnostics_values(m, prefix))
        self.compressed = compressed
        self.next_sec = 1000

    def message(self, rgb, sec: int):
        make = rgb_to_compressed if self.compressed else rgb_to_image
        return _stamp(make(rgb), sec)

    def stamp(self) -> int:
        self.next_sec += 1
        return self.next_sec

    def send(self, rgb, timeout_s: float = 30.0) -> dict:
        """Publish one frame (again, while nothing comes back: best effort) and return its match."""
        sec = self.stamp()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.publisher.publish(self.message(rgb, sec))
            # Repeat only when best-effort transport seems to have lost the frame, not merely when busy.
            if self.probe.wait_until(lambda: any(m["stamp"]["sec"] == sec for m in self.matches), 5.0):
                return next(m for m in self.matches if m["stamp"]["sec"] == sec)
            assert self.node.process.poll() is None, self.node.log()
        raise AssertionError(f"no match for stamp {sec}; node log:\n{self.node.log()}")

    def latest_diagnostics(self, timeout_s: float = 30.0) -> dict[str, str]:
        """The first diagnostics message that arrives from now on."""
        with self.probe.lock:
            seen = len(self.diagnostics)
        assert self.probe.wait_until(
            lambda: any(d is not None for d in self.diagnostics[seen:]), timeout_s), "no /diagnostics"
        with self.probe.lock:
            return [d for d in self.diagnostics[seen:] if d is not None][-1]


def _wait_active(channel: Channel) -> None:
    assert channel.node.wait_for_log("active: listening on", 120.0), channel.node.log()
    assert channel.probe.wait_until(lambda: channel.publisher.get_subscription_count() > 0, 60.0)
    channel.send(channel.probe_image, timeout_s=30.0)  # warm-up: discovery and the first inference


def _serve(assets, probe, namespace: str, log_name: str, compressed: bool, **params):
    """Yields a channel to an active node; on teardown the node must exit cleanly."""
    node = _start(assets, namespace, log_name, **params)
    channel = Channel(probe, node, compressed=compressed)
    channel.probe_image = assets["images"][0]
    try:
        _wait_active(channel)
        yield channel
    finally:
        code = node.stop()
        assert code == 0, f"vpr_node exited with {code}:\n{node.log()}"
        assert_clean_shutdown(node.log())


def assert_clean_shutdown(log: str) -> None:
    """Ended through the lifecycle shutdown transition, with no traceback on the way out."""
    assert "finalized" in log and "Traceback" not in log and "KeyboardInterrupt" not in log, log[-3000:]


@pytest.fixture(scope="module")
def raw(assets, probe):
    yield from _serve(assets, probe, RAW_NS, "raw_node.log", compressed=False, map_path=assets["map"],
                      reference_images=assets["reference"])


@pytest.fixture(scope="module")
def mapping(assets, probe):
    yield from _serve(assets, probe, MAP_NS, "map_node.log", compressed=True,
                      map_path=assets["root"] / "new_map", mode="map", transport="compressed",
                      novelty_threshold=0.9995)


def test_matches_carry_the_query_stamp(raw, assets):
    for image in assets["images"][1:6]:
        match = raw.send(image)
        assert match["frame_id"] == "test_camera"
        assert match["stamp"]["nanosec"] == 0
        assert len(match["place_ids"]) == 5 and len(match["scores"]) == 5
        assert match["scores"] == sorted(match["scores"], reverse=True)
        assert match["accepted"] is True  # threshold 0.0
        assert match["latency_ms"] > 0
        assert match["mode"] == "localize" and match["added_place_id"] is None
        assert match["best_place"]["place_id"] == match["place_ids"][0]
        assert match["best_place"]["source"].startswith("images-")
    indices = [m["query_index"] for m in raw.matches]
    assert indices == sorted(indices)


@pytest.mark.skipif(TYPED_UNAVAILABLE is not None, reason=str(TYPED_UNAVAILABLE))
def test_match_is_a_typed_place_match_and_the_json_topic_says_the_same(raw, probe, assets):
    from vl2spike_ros.msg import PlaceMatch

    typed = probe.collect(PlaceMatch, f"{RAW_NS}/vpr_node/match")
    deprecated_json = probe.collect(String, f"{RAW_NS}/vpr_node/match_json", lambda m: json.loads(m.data))

    def pair(sec):
        typed_ones = [m for m in typed if m.header.stamp.sec == sec]
        json_ones = [m for m in deprecated_json if m["stamp"]["sec"] == sec]
        return (typed_ones[0], json_ones[0]) if typed_ones and json_ones else None

    found, deadline = None, time.monotonic() + 60  # the new subscriptions need discovery first
    while found is None and time.monotonic() < deadline:
        sec = raw.send(assets["images"][9])["stamp"]["sec"]
        probe.wait_until(lambda: pair(sec) is not None, 2.0)
        with probe.lock:
            found = pair(sec)
    assert found is not None, "no PlaceMatch with its JSON twin"
    message, body = found
    assert isinstance(message, PlaceMatch)
    assert message.header.frame_id == "test_camera" and message.header.stamp.nanosec == 0
    assert len(message.place_ids) == 5 and message.scores[0] >= message.scores[-1]
    assert message.accepted and message.mode == "localize" and message.added_place_id == -1
    assert message.sequence_length == 1 and message.latency_ms > 0
    assert message.map_size == len(PlaceMap.load(assets["map"]))
    best = message.best_place
    assert best.place_id == message.place_ids[0]
    assert best.source == f"images-{best.frame:05d}.png" and not best.has_pose
    fields = match_fields(message)  # float32 on the wire; the JSON keeps the node's float64
    assert body.keys() == fields.keys()
    for key in body:
        expected = pytest.approx(fields[key], rel=1e-6) if key in ("scores", "latency_ms") else fields[key]
        assert body[key] == expected, key


def test_without_the_typed_messages_the_node_says_so_once_and_publishes_json(assets, probe):
    """A pip install without the package's generated messages: one log line, JSON on ~/match,
    ~/save_map a std_srvs/Trigger."""
    namespace = "/vpr_test_json"
    hide_messages = ("import sys; sys.modules['vl2spike_ros.msg'] = sys.modules['vl2spike_ros.srv'] = None; "
                     "from vl2spike_ros.ros.node import main; sys.exit(main())")
    node = support.NodeProcess(assets["root"] / "json_node.log",
                               {"model_path": assets["checkpoint"], "num_threads": 1, "map_path": assets["map"]},
                               namespace, launcher=[sys.executable, "-c", hide_messages])
    channel = Channel(probe, node, compressed=False, match_type=String, read_match=lambda m: json.loads(m.data))
    channel.probe_image = assets["images"][0]
    try:
        _wait_active(channel)
        match = channel.send(assets["images"][3])
        assert match["schema_version"] == 1 and len(match["place_ids"]) == 5 and match["accepted"]
        services = dict(probe.node.get_service_names_and_types())
        assert services[f"{namespace}/vpr_node/save_map"] == ["std_srvs/srv/Trigger"]
    finally:
        code = node.stop()
    assert code == 0, node.log()
    assert node.log().count("the package's messages are not built here") == 1, node.log()


def test_node_is_an_active_lifecycle_node(raw, probe):
    state = probe.call(GetState, f"{RAW_NS}/vpr_node/get_state", GetState.Request()).current_state
    assert state.label == "active"


def test_match_image_shows_query_beside_reference(raw, probe, assets):
    images = probe.collect(Image, f"{RAW_NS}/vpr_node/match_image", depth=5)
    deadline = time.monotonic() + 60
    while not images and time.monotonic() < deadline:
        raw.send(assets["images"][7])
        probe.wait_until(lambda: bool(images), 1.0)
    assert images, "no ~/match_image"
    query = assets["images"][7]
    # 96 px high panels (query and 64x32 reference, both scaled 3x) under a 24 px caption banner.
    assert (images[-1].height, images[-1].width, images[-1].encoding) == (96 + 24, 2 * 192, "rgb8")
    assert query.shape == (32, 64, 3)


def test_parameter_updates_are_checked(raw, probe, assets):
    service = f"{RAW_NS}/vpr_node/set_parameters"

    def set_parameter(name, kind, **value):
        request = SetParameters.Request()
        request.parameters = [ParameterMsg(name=name, value=ParameterValue(type=kind, **value))]
        return probe.call(SetParameters, service, request).results[0]

    rejected = set_parameter("mode", ParameterType.PARAMETER_STRING, string_value="fly")
    assert not rejected.successful and "mode must be one of" in rejected.reason
    out_of_range = set_parameter("top_k", ParameterType.PARAMETER_INTEGER, integer_value=0)
    assert not out_of_range.successful and out_of_range.reason
    read_only = set_parameter("model_path", ParameterType.PARAMETER_STRING, string_value="/x")
    assert not read_only.successful and "read-only" in read_only.reason
    undeclared = set_parameter("no_such_parameter", ParameterType.PARAMETER_INTEGER, integer_value=1)
    assert not undeclared.successful and "no_such_parameter" in undeclared.reason, undeclared.reason
    accepted = set_parameter("top_k", ParameterType.PARAMETER_INTEGER, integer_value=3)
    assert accepted.successful, accepted.reason
    try:
        assert len(raw.send(assets["images"][8])["place_ids"]) == 3
    finally:
        assert set_parameter("top_k", ParameterType.PARAMETER_INTEGER, integer_value=5).successful


def settled_diagnostics(channel: Channel) -> dict[str, str]:
    """Diagnostics once every frame the node took in is accounted for (dropped, or finished by the
    worker). Call after a frame was answered: nothing new arrives, so this only waits for the counters."""
    for _ in range(60):
        values = channel.latest_diagnostics(timeout_s=30.0)
        if values["frames_pending"] == "0":
            return values
    raise AssertionError(f"diagnostics never settled: {values}")


def answered_since(channel: Channel, sec: int) -> list[dict]:
    with channel.probe.lock:
        return [m for m in channel.matches if m["stamp"]["sec"] > sec]


def test_burst_leaves_no_backlog_and_counts_drops(raw, probe, assets):
    raw.send(assets["images"][10])
    before = settled_diagnostics(raw)
    first_sec = raw.stamp()
    messages = [raw.message(assets["images"][i % 40], first_sec + i) for i in range(200)]
    raw.next_sec = first_sec + 200
    for message in messages:  # back to back: far faster than one inference per frame
        raw.publisher.publish(message)
    # No backlog: a fresh frame after the burst is answered without the burst's frames queueing
    # ahead of it (the one-frame slot holds the newest frame only).
    fresh = raw.send(assets["images"][20], timeout_s=60.0)
    after = settled_diagnostics(raw)
    received = int(after["frames_received"]) - int(before["frames_received"])
    dropped = int(after["frames_dropped"]) - int(before["frames_dropped"])
    processed = int(after["frames_processed"]) - int(before["frames_processed"])
    answered = answered_since(raw, first_sec - 1)
    print(f"burst: received {received}, processed {processed}, dropped {dropped}, answered {len(answered)}")
    assert dropped > 0 and processed + dropped == received
    assert len(answered) == processed  # each processed frame answered once: burst frames and the fresh one
    stamps = [m["stamp"]["sec"] for m in answered]
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)
    assert answered[-1] == fresh
    # Where each frame's time went: every stage timed; the student and the search are part of latency_ms.
    stage_p50 = {stage: float(after[f"stage_{stage}_ms_p50"]) for stage in STAGES}
    assert stage_p50["encode"] > 0 and stage_p50["search"] > 0 and stage_p50["publish"] > 0
    assert max(stage_p50["encode"], stage_p50["search"]) <= float(after["latency_ms_p50"])


def _malformed(index: int, good: Image) -> Image:
    message = Image()
    message.header.stamp.sec = 500 + index
    message.height, message.width, message.encoding = good.height, good.width, good.encoding
    message.step, message.data = good.step, bytes(good.data)
    kind = index % 6
    if kind == 0:
        message.encoding = "yuv422"               # unsupported encoding
    elif kind == 1:
        message.step = good.width * 3 - 1         # step shorter than a row
    elif kind == 2:
        message.data = bytes(good.data)[:-7]      # truncated data
    elif kind == 3:
        message.data = bytes(good.data) + b"\0" * 5  # more than step * height
    elif kind == 4:
        message.height = message.width = 0        # empty image
        message.data = b""
    else:
        message.encoding = "32FC1"                # a ROS encoding the node does not take
    return message


def test_malformed_frames_are_counted_and_dropped(raw, probe, assets):
    mark = raw.send(assets["images"][21])["stamp"]["sec"]
    before = settled_diagnostics(raw)
    good = rgb_to_image(assets["images"][21])
    count = 250
    for index in range(count):
        raw.publisher.publish(_malformed(index, good))
    match = raw.send(assets["images"][22])
    assert match["accepted"]
    after = settled_diagnostics(raw)
    invalid = int(after["invalid_frames"]) - int(before["invalid_frames"])
    print(f"malformed: sent {count}, counted invalid {invalid}")
    # Best-effort transport may lose some; none of those that arrive reach inference.
    assert 0 < invalid <= count, after
    # Only good frames reached inference (the good one possibly twice: `send` repeats unanswered frames).
    assert int(after["frames_processed"]) - int(before["frames_processed"]) == len(answered_since(raw, mark))
    assert int(after["map_errors"]) == 0
    assert raw.node.process.poll() is None
    assert "dropped an invalid frame" in raw.node.log()
    # Throttled: far fewer log lines than invalid frames.
    assert raw.node.log().count("dropped an invalid frame") < 20


def test_compressed_mapping_adds_places_and_save_round_trips(mapping, probe, assets):
    added = [m["added_place_id"] for m in mapping.matches if m["added_place_id"] is not None]
    assert added == [0]  # the warm-up frame started the empty map
    results = [mapping.send(image) for image in assets["images"][1:12]]
    new_ids = [m["added_place_id"] for m in results if m["added_place_id"] is not None]
    assert len(new_ids) >= 3, [m["scores"][:1] for m in results]
    assert new_ids == list(range(1, len(new_ids) + 1))
    assert all(m["mode"] == "map" for m in results)
    size = results[-1]["map_size"]
    assert size == 1 + len(new_ids)

    reply = probe.call(SAVE_MAP_TYPE, f"{MAP_NS}/vpr_node/save_map", SAVE_MAP_TYPE.Request())
    assert reply.success, reply.message
    saved = PlaceMap.load(assets["root"] / "new_map")
    assert len(saved) == size
    if TYPED_UNAVAILABLE is None:
        assert (reply.path, reply.place_count) == (str(assets["root"] / "new_map"), size)
    last = saved.places[-1]
    stamp = next(m["stamp"] for m in results if m["added_place_id"] == last.place_id)
    assert last.source == f"{MAP_NS}/image/compressed@{stamp['sec']}.{stamp['nanosec']:09d}"
    assert last.stamp == pytest.approx(stamp["sec"])

    off = probe.call(SetBool, f"{MAP_NS}/vpr_node/set_mapping", SetBool.Request(data=False))
    assert off.success, off.message
    localised = [mapping.send(image) for image in assets["images"][12:16]]
    assert all(m["mode"] == "localize" and m["added_place_id"] is None for m in localised)
    assert all(m["map_size"] == size for m in localised)
    back = probe.call(SetBool, f"{MAP_NS}/vpr_node/set_mapping", SetBool.Request(data=True))
    assert back.success, back.message


def test_corrupt_compressed_frames_are_dropped(mapping, probe, assets):
    mark = mapping.send(assets["images"][30])["stamp"]["sec"]
    before = settled_diagnostics(mapping)
    good = rgb_to_compressed(assets["images"][30], compression="jpeg")
    for index in range(20):
        message = CompressedImage()
        message.header.stamp.sec = 700 + index
        message.format = "jpeg"
        # Not an image at all, or a JPEG cut after its header.
        message.data = b"not an image" if index % 2 else bytes(good.data)[:40]
        mapping.publisher.publish(message)
    assert mapping.send(assets["images"][31])["stamp"]["sec"] > 0
    after = settled_diagnostics(mapping)
    invalid = int(after["invalid_frames"]) - int(before["invalid_frames"])
    assert 0 < invalid <= 20, after
    assert int(after["frames_processed"]) - int(before["frames_processed"]) == len(answered_since(mapping, mark))
    assert mapping.node.process.poll() is None


def assert_configure_fails(assets, namespace: str, log_name: str, reason: str, **params) -> None:
    """The node exits 1 at autostart, logging why configure failed."""
    node = _start(assets, namespace, log_name, **params)
    try:
        node.process.wait(120)
    finally:
        node.stop()
    log = node.log()
    assert node.process.returncode == 1, log
    assert "configure failed" in log and reason in log


def test_wrong_map_fails_configure_with_the_reason(assets, tmp_path):
    assert_configure_fails(assets, "/vpr_test_bad", "bad_node.log", "no such map directory",
                           map_path=tmp_path / "no_map")


@pytest.mark.parametrize("interval_s", [0.05, 0.3, 0.6, 1.0])
def test_three_sigints_end_through_lifecycle_shutdown(assets, probe, interval_s):
    """Ctrl-C under `ros2 launch`: the terminal's SIGINT, the one launch forwards, and one more from
    an impatient user, `interval_s` apart. Whichever moment of the shutdown they hit (the transition,
    rclpy's shutdown, the interpreter's exit, where Python restores the default handlers), the node
    ends through the shutdown transition with exit code 0 and no traceback."""
    import signal

    node = _start(assets, f"/vpr_test_sigint_{int(interval_s * 1000)}", f"sigint_{interval_s}.log",
                  map_path=assets["map"])
    channel = Channel(probe, node, compressed=False)
    channel.probe_image = assets["images"][0]
    try:
        _wait_active(channel)
        for image in assets["images"][1:4]:
            channel.send(image)
        for index in range(3):
            if index:
                time.sleep(interval_s)
            node.process.send_signal(signal.SIGINT)  # a no-op once the process has ended
        code = node.process.wait(60)
    finally:
        node.stop()
    assert code == 0, node.log()
    assert_clean_shutdown(node.log())


def test_mapping_with_ivfpq_from_an_empty_map(assets, probe, tmp_path):
    """An empty IVF-PQ map keeps keyframes exactly until it can train; the node maps with it."""
    params = dict(map_path=tmp_path / "ivfpq_map", mode="map", index="ivfpq", novelty_threshold=0.9995)
    served = _serve(assets, probe, "/vpr_test_ivfpq", "ivfpq_node.log", compressed=False, **params)
    channel = next(served)
    try:
        results = [channel.send(image) for image in assets["images"][1:8]]
        added = [m["added_place_id"] for m in results if m["added_place_id"] is not None]
        assert added and added == list(range(1, len(added) + 1))
        diagnostics = settled_diagnostics(channel)
        assert diagnostics["map_errors"] == "0" and diagnostics["invalid_frames"] == "0"
        reply = probe.call(SAVE_MAP_TYPE, "/vpr_test_ivfpq/vpr_node/save_map", SAVE_MAP_TYPE.Request())
        assert reply.success, reply.message
        assert len(PlaceMap.load(tmp_path / "ivfpq_map")) == 1 + len(added)
    finally:
        next(served, None)
