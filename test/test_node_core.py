"""The ROS-free parts of vpr_node: parameter checks, the one-frame slot, statistics, ~/match JSON."""
import json
import threading
import time

import numpy as np
import pytest

from vl2spike_ros.core.localizer import Match
from vl2spike_ros.ros.node_support import (PARAMETERS, FrameSlot, NodeStats, check_parameter,
                                    diagnostic_values, match_json, percentiles)
from vl2spike_ros.core.place_map import Place, PlaceMap


def test_parameter_table_defaults_are_valid():
    names = [spec.name for spec in PARAMETERS]
    assert len(names) == len(set(names))
    for required in ("model_path", "map_path", "mode", "top_k", "sequence_length", "match_threshold",
                     "novelty_threshold", "transport", "autostart", "device", "publish_match_image"):
        assert required in names
    for spec in PARAMETERS:
        assert check_parameter(spec.name, spec.default) is None, spec.name
        assert spec.description


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
    assert slot.take(0) == "c"
    assert slot.take(0.01) is None


def test_slot_take_waits_for_a_frame_and_close_releases_it():
    slot = FrameSlot()
    got = []
    worker = threading.Thread(target=lambda: got.append(slot.take(5.0)))
    worker.start()
    time.sleep(0.05)
    slot.put(1)
    worker.join(5.0)
    assert got == [1]
    worker = threading.Thread(target=lambda: got.append(slot.take(5.0)))
    worker.start()
    slot.close()
    worker.join(5.0)
    assert got == [1, None] and not worker.is_alive()
    slot.reopen()
    slot.put(2)
    assert slot.take(0) == 2


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
    assert taken == sorted(taken) and taken[-1] == 1999


def _match(index, latency=10.0, accepted=True, added=None):
    return Match(query_index=index, place_ids=[2, 0], scores=[0.9, 0.5], accepted=accepted,
                 latency_ms=latency, added_place_id=added)


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
    values = dict(diagnostic_values(later, received=20, dropped=9, extra={"map_size": 3}))
    assert values["frames_dropped"] == "9" and values["latency_ms_p50"] == "n/a" and values["map_size"] == "3"


def test_percentiles():
    assert percentiles([]) == {"p50": None, "p90": None, "p99": None}
    assert percentiles(range(101))["p90"] == pytest.approx(90.0)


def test_match_json_schema():
    place_map = PlaceMap(4, "f" * 64)
    vectors = np.eye(4, dtype=np.float32)[:3]
    place_map.add(vectors, [Place(i, source=f"images-{i:05d}.png", frame=i * 10,
                                  pose=[i, 0, 0, 0, 0, 0, 1]) for i in range(3)])
    body = match_json(_match(7, added=None), 12, 345, "cam", "localize", place_map)
    json.dumps(body)  # serialisable as is
    assert body["stamp"] == {"sec": 12, "nanosec": 345} and body["frame_id"] == "cam"
    assert body["place_ids"] == [2, 0] and body["scores"] == [0.9, 0.5]
    assert body["accepted"] is True and body["query_index"] == 7 and body["latency_ms"] == 10.0
    assert body["mode"] == "localize" and body["added_place_id"] is None and body["map_size"] == 3
    assert body["best_place"]["source"] == "images-00002.png" and body["best_place"]["frame"] == 20
    empty = match_json(Match(0, [], [], False, 1.0), 0, 0, "", "map", PlaceMap(4, "f" * 64))
    assert empty["best_place"] is None and empty["place_ids"] == []
