"""The live demo against the offline evaluation: the same Localizer behind both, so with no frame
dropped the node's Recall@K equals `metrics.json` exactly, with and without sequence matching.
Runs the shipped model on the embedded route through a real vpr_node process over DDS (loopback)."""
import json

import numpy as np
import pytest

import node_fixtures  # noqa: F401 - loopback ROS environment before rclpy starts
from vl2spike_ros.core.encoder import DescriptorEncoder
from vl2spike_ros.demo.live import run_live_demo
from vl2spike_ros.demo.route import write_demo_route
from vl2spike_ros.evaluation.metrics import RECALL_KS
from vl2spike_ros.evaluation.runner import (build_map, evaluate_against_map, open_checked_sequence,
                                            write_evaluation)

pytest.importorskip("rclpy", reason="rclpy (ROS 2) is not installed")


@pytest.fixture(scope="module")
def route_and_map(tmp_path_factory):
    root = tmp_path_factory.mktemp("live_demo")
    reference, query = write_demo_route(root / "route")
    encoder = DescriptorEncoder()
    place_map = build_map(encoder, open_checked_sequence(reference), progress=False)
    place_map.save(root / "map")
    return root, encoder, place_map, query


@pytest.mark.parametrize("sequence_length", [1, 5])
def test_live_recall_equals_offline_metrics_without_drops(route_and_map, sequence_length):
    root, encoder, place_map, query = route_and_map
    offline = evaluate_against_map(encoder, place_map, open_checked_sequence(query), tolerance=10,
                                   sequence_length=sequence_length, progress=False)
    write_evaluation(offline, root / f"offline_L{sequence_length}", "offline")
    metrics = json.loads((root / f"offline_L{sequence_length}" / "metrics.json").read_text())
    # One work_dir for both runs: each writes its query bag afresh.
    live = run_live_demo(None, root / "map", query, tolerance=10, work_dir=root / "live",
                         sequence_length=sequence_length, lockstep=True, rate_hz=1000.0, progress=False)
    assert live["answered"] == live["num_queries"] == metrics["num_queries"] == 179
    assert live["dropped"] == 0 and live["invalid"] == 0 and live["node_exit_code"] == 0
    for k in RECALL_KS:
        assert live[f"recall@{k}"] == metrics[f"recall@{k}"], (k, live, metrics)
    # Finer than Recall@K: every query's ranking and scores. A warm-up frame left in the node's
    # sequence history would change the first queries' scores; one left in its count, their indices.
    offline_matches = json.loads((root / f"offline_L{sequence_length}" / "matches.json").read_text())
    live_matches = json.loads((root / "live" / "live_matches.json").read_text())
    assert live_matches["query_index"] == list(range(179))
    assert live_matches["place_ids"] == offline_matches["place_ids"]
    assert np.allclose(live_matches["scores"], offline_matches["scores"], atol=1e-5)
