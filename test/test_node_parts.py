"""The ROS-free parts of vpr_node: parameter checks, the one-frame slot, statistics and status,
~/match JSON, the ~/match_image picture and its bounded thumbnail cache."""
import json
import threading
import time

import pytest

from helpers import photo
from vl2spike_ros.core.localizer import Match
from vl2spike_ros.core.place_map import Place
from vl2spike_ros.ros.frame_slot import FrameSlot
from vl2spike_ros.ros.match_image import THUMBNAIL_HEIGHT, ReferenceImages, match_picture
from vl2spike_ros.ros.match_message import match_json
from vl2spike_ros.ros.node_diagnostics import STAGES, NodeStats, StatusReporter, diagnostic_values, percentiles
from vl2spike_ros.ros.parameters import PARAMETER_SPECS, PARAMETERS, check_parameter


def test_parameter_table_defaults_are_valid():
    names = [spec.name for spec in PARAMETERS]
    assert len(names) == len(set(names))
    for required in ("model_path", "map_path", "mode", "top_k", "sequence_length", "match_threshold",
                     "novelty_threshold", "transport", "autostart", "device", "publish_match_image"):
        assert required in names
    for spec in PARAMETERS:
        assert check_parameter(spec.name, spec.default) is None, spec.name
        assert spec.description


def test_the_node_takes_one_core_unless_told_otherwise():
    """A robot computer runs other nodes: FAISS, torch and onnxruntime left at their defaults spin on every core."""
    import yaml

    from conftest import REPO_ROOT

    spec = PARAMETER_SPECS["num_threads"]
    shipped = yaml.safe_load((REPO_ROOT / "config" / "vpr.yaml").read_text())["/**"]["ros__parameters"]
    assert spec.default == shipped["num_threads"] == 1
    assert "raise it" in spec.description


@pytest.mark.parametrize("name, value, fragment", [
    ("mode", "fly", "mode must be one of"),
    ("transport", "theora", "transport must be one of"),
    ("top_k", 0, "top_k must be in"),
    ("top_k", 2.5, "top_k must be a int"),
    ("top_k", True, "top_k must be a int"),
    ("match_threshold", 1.5, "match_threshold must be in"),
    ("match_threshold", float("nan"), "must be finite"),
    ("autostart", "yes", "autostart must be a bool"),
])
def test_invalid_parameter_values_have_a_reason(name, value, fragment):
    assert fragment in check_parameter(name, value)


def test_integers_are_accepted_for_float_parameters_and_unknown_names_are_not_ours():
    assert check_parameter("match_threshold", 0) is None
    assert check_parameter("use_sim_time", "anything") is None


def test_slot_keeps_the_newest_frame_and_counts_drops():
    slot = FrameSlot()
    assert slot.put("a") is False
    assert slot.put("b") is True and slot.put("c") is True
    assert (slot.received, slot.dropped) == (3, 2)
    assert slot.take(0) == ("c", 2)  # two frames skipped before "c"
    assert slot.pending == 1  # taken, not finished
    slot.finish()
    assert slot.take(0.01) is None and slot.pending == 0
    slot.put("d")
    assert slot.take(0) == ("d", 0)


def test_slot_take_waits_for_a_frame_and_close_releases_it():
    slot = FrameSlot()
    got = []
    worker = threading.Thread(target=lambda: got.append(slot.take(5.0)))
    worker.start()
    time.sleep(0.05)
    slot.put(1)
    worker.join(5.0)
    assert got == [(1, 0)]
    worker = threading.Thread(target=lambda: got.append(slot.take(5.0)))
    worker.start()
    slot.close()
    worker.join(5.0)
    assert got == [(1, 0), None] and not worker.is_alive()
    slot.reopen()
    slot.put(2)
    assert slot.take(0) == (2, 0)


def test_a_frame_left_in_the_slot_at_close_is_a_drop_not_pending():
    """Deactivate closes the slot with a frame the worker never took; after activate nothing is pending."""
    slot = FrameSlot()
    slot.put("taken")
    slot.take(0)
    slot.finish()
    slot.put("left behind")
    slot.close()
    assert (slot.received, slot.dropped, slot.pending) == (2, 1, 0)
    assert slot.take(0) is None
    assert slot.put("while closed") is True and slot.pending == 0
    slot.reopen()
    assert slot.pending == 0
    slot.put("next")
    assert slot.take(0) == ("next", 0)  # drops from before the close start no gap after it


def test_slot_under_a_fast_producer_never_holds_more_than_one():
    slot = FrameSlot()
    taken = []

    def consume():
        while True:
            item = slot.take(0.5)
            if item is None:
                return
            taken.append(item)
            time.sleep(0.002)

    consumer = threading.Thread(target=consume)
    consumer.start()
    for i in range(2000):
        slot.put(i)
    consumer.join(5.0)
    assert slot.received == 2000
    assert len(taken) + slot.dropped == 2000
    frames = [frame for frame, _ in taken]
    assert frames == sorted(frames) and frames[-1] == 1999
    # Each take reports exactly the frames skipped since the previous one.
    assert all(frame - previous - 1 == skipped
               for previous, (frame, skipped) in zip([-1] + frames, taken))


def _match(index, latency=10.0, accepted=True, added=None, best_place=None):
    return Match(query_index=index, place_ids=[2, 0], scores=[0.9, 0.5], accepted=accepted,
                 latency_ms=latency, added_place_id=added, best_place=best_place)


def test_stats_rate_latency_and_counters():
    stats = NodeStats(window_s=10.0)
    for i in range(11):
        stats.record_match(_match(i, latency=float(i)), now=100.0 + i * 0.1)
    stats.record_invalid("bad step")
    snapshot = stats.snapshot(now=101.0)
    assert snapshot["frames_processed"] == 11 and snapshot["invalid_frames"] == 1
    assert snapshot["rate_hz"] == pytest.approx(10.0)
    assert snapshot["latency_ms_p50"] == pytest.approx(5.0)
    assert snapshot["last_invalid_reason"] == "bad step"
    later = stats.snapshot(now=200.0)  # the window forgets, the counters do not
    assert later["rate_hz"] == 0.0 and later["latency_ms_p50"] is None and later["frames_processed"] == 11
    values = dict(diagnostic_values(later, received=20, dropped=9, pending=1, extra={"map_size": 3}))
    assert values["frames_dropped"] == "9" and values["frames_pending"] == "1" and values["latency_ms_p50"] == "n/a" and values["map_size"] == "3"


def test_stats_report_each_stage_of_a_frame():
    stats = NodeStats(window_s=10.0)
    for i in range(21):
        stages = {stage: float(i * (position + 1)) for position, stage in enumerate(STAGES)}
        stats.record_match(_match(i), stages, now=100.0 + i * 0.1)
    snapshot = stats.snapshot(now=102.0)
    for position, stage in enumerate(STAGES):
        assert snapshot[f"stage_{stage}_ms_p50"] == pytest.approx(10.0 * (position + 1))
        assert snapshot[f"stage_{stage}_ms_p95"] == pytest.approx(19.0 * (position + 1))
    values = dict(diagnostic_values(stats.snapshot(now=200.0), received=21, dropped=0, pending=0, extra={}))
    assert values["stage_encode_ms_p50"] == "n/a"  # the window forgets stage times too


def test_status_tells_map_errors_apart_from_bad_input():
    stats, reporter = NodeStats(), StatusReporter()
    assert reporter.status("inactive", stats.snapshot()) == ("WARN", "inactive: not processing images")
    stats.record_match(_match(0))
    assert reporter.status("active", stats.snapshot())[0] == "OK"
    stats.record_invalid("image step 5: too short")
    level, message = reporter.status("active", stats.snapshot())
    assert level == "WARN" and "1 invalid frame(s)" in message and "image step 5" in message
    stats.record_map_error("ivfpq needs 256 descriptors")
    snapshot = stats.snapshot()
    assert (snapshot["map_errors"], snapshot["invalid_frames"]) == (1, 1)
    level, message = reporter.status("active", snapshot)
    assert level == "ERROR" and "map refused 1 keyframe(s)" in message and "256" in message
    assert reporter.status("active", stats.snapshot())[0] == "OK"  # reported once, not forever


def test_percentiles():
    assert percentiles([]) == {"p50": None, "p90": None, "p99": None}
    assert percentiles(range(101))["p90"] == pytest.approx(90.0)


def test_match_json_schema():
    best = Place(2, source="images-00002.png", frame=20, pose=[2, 0, 0, 0, 0, 0, 1])
    body = match_json(_match(7, best_place=best), 12, 345, "cam", "localize", 3)
    json.dumps(body)  # serialisable as is
    assert body["stamp"] == {"sec": 12, "nanosec": 345} and body["frame_id"] == "cam"
    assert body["place_ids"] == [2, 0] and body["scores"] == [0.9, 0.5]
    assert body["accepted"] is True and body["query_index"] == 7 and body["latency_ms"] == 10.0
    assert body["mode"] == "localize" and body["added_place_id"] is None and body["map_size"] == 3
    assert body["best_place"]["source"] == "images-00002.png" and body["best_place"]["frame"] == 20
    empty = match_json(Match(0, [], [], False, 1.0), 0, 0, "", "map", 0)
    assert empty["best_place"] is None and empty["place_ids"] == []


def test_thumbnail_cache_stays_bounded_over_a_long_mapping_run():
    # The node once kept up to 20,000 thumbnails (120x240 RGB: about 1.7 GB).
    references = ReferenceImages(capacity=50)
    frame = photo("astronaut", (480, 240))
    for place_id in range(1000):
        references.remember(place_id, frame)
    assert len(references) == 50
    assert references.find(Place(0)) is None  # evicted, and it has no file to fall back on
    newest = references.find(Place(999))
    assert newest is not None and newest.shape[0] == THUMBNAIL_HEIGHT
    references.find(Place(950))  # used: now the most recent
    references.remember(1000, frame)
    assert references.find(Place(950)) is not None and references.find(Place(951)) is None


def test_reference_pictures_come_from_files_when_not_cached(tmp_path):
    import cv2

    cv2.imwrite(str(tmp_path / "images-00004.png"), photo("coffee", (64, 32))[:, :, ::-1])
    references = ReferenceImages(tmp_path, capacity=2)
    assert references.find(Place(4, source="images-00004.png")).shape == (32, 64, 3)
    assert references.find(Place(5, source="images-00005.png")) is None
    picture = match_picture(photo("astronaut", (64, 32)), _match(3, best_place=Place(4, source="images-00004.png")),
                            references)
    assert picture.shape == (96 + 24, 2 * 192, 3)  # both panels scaled to 96 px under the caption
