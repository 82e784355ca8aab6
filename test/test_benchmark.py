"""`vl2spike benchmark` end to end at tiny sizes (a real vpr_node over loopback DDS, a real child
evaluation): every key the issue names is written. Figures are not asserted: targets are met in
the benchmark itself, never in timed unit tests."""
import json
import os
import subprocess
import sys

import pytest

import node_fixtures as support  # loopback ROS environment before anything starts rclpy
from vl2spike_ros.benchmark.run import TARGETS, check_targets, recommended_index
from vl2spike_ros.ros.node_diagnostics import STAGES

KEYS = ("encode_ms_p50", "encode_ms_p95", "encode_fps_batch32", "vit_b32_encode_ms_p50",
        "vit_b32_encode_ms_p95", "vit_b32_encode_fps_batch32", "vit_b32_onnxruntime_encode_ms_p50",
        "speedup_vs_vit_b32_same_runtime", "speedup_vs_vit_b32_torch",
        "energy_uj_per_frame", "energy_ratio_vs_ann_same_shape", "energy_ratio_vs_vit_b32",
        "energy_int8_uj_per_frame", "energy_ann_int8_same_shape_uj_per_frame",
        "energy_ratio_int8_vs_ann_int8_same_shape", "energy_ratio_int8_vs_vit_b32_int8",
        "map_10k_query_ms", "map_100k_query_ms", "map_1m_query_ms", "map_1m_top1_agreement",
        "map_1m_index", "node_latency_p50_ms", "node_latency_p95_ms", "node_latency_p99_ms",
        "node_rate_hz", "node_drops", "node_cpu_percent", "node_rss_mb",
        "evaluate_27592_peak_rss_mb", "evaluate_27592_wall_s", "soak_rss_growth_pct")


def test_tiny_benchmark_writes_every_key(tmp_path):
    out = tmp_path / "bench"
    command = [sys.executable, "-m", "vl2spike_ros.cli", "benchmark", "--out", str(out), "--quick",
               "--backend", "both", "--map-sizes", "1000,1200,1500", "--hnsw-max-places", "1200", "--node-places", "300",
               "--node-frames", "45", "--eval-places", "60", "--repeats", "5", "--vit-repeats", "1",
               "--batch-repeats", "1", "--soak", "390", "--map-kinds", "isotropic"]  # route: test_map_scale.py
    done = subprocess.run(command, env={**os.environ, **support.ROS_ENV}, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    results = json.loads((out / "benchmark.json").read_text())
    missing = [key for key in KEYS if key not in results or results[key] is None]
    assert not missing
    assert results["quick"] is True and results["sizes"]["map_sizes"] == [1000, 1200, 1500]
    assert results["evaluate_places"] == 60 and results["node_places"] == 300
    assert results["node_frames"] == 45 and results["soak_frames"] == 390
    at_1500 = [(row["index"], row["options"].get("nprobe")) for row in results["map_search"] if row["places"] == 1500]
    # ivfpq: nprobe swept up to nlist (38); fastscan: 2.5% to 20% of its 38 lists
    assert at_1500 == [("flat", None), ("ivfpq", 16), ("ivfpq", 32), ("ivfpq", 38),
                       ("fastscan", 1), ("fastscan", 2), ("fastscan", 4), ("fastscan", 8)]
    best = [row for row in results["map_search"] if row["places"] == 1500 and row["index"] == results["map_1m_index"]]
    assert results["map_1m_search_options"] in {" ".join(f"{k}={row['options'][k]}" for k in ("nprobe", "rerank"))
                                               if row["index"] != "flat" else "" for row in best}
    assert all(isinstance(row["bytes_per_place"], int) for row in results["map_search"])  # RSS noise at this size
    # Where the node's time went, from its /diagnostics: every stage timed.
    assert set(results["node_stage_ms"]) == set(STAGES)
    assert all(results["node_stage_ms"][stage]["p50"] is not None for stage in ("decode", "encode", "search", "publish"))
    assert results["map_not_built"] == [{"descriptors": "isotropic", "places": 1500, "index": "hnsw",
                                         "reason": "above --hnsw-max-places (build time)"}]
    assert set(results["targets"]) == set(TARGETS)
    # The ViT ONNX Runtime times is the network PyTorch runs (random weights, the same embeddings).
    assert results["vit_b32_onnx_max_abs_difference"] < 1e-3
    assert not (out / "work" / "vit_b32.onnx").exists()
    assert "| speedup_vs_vit_b32_same_runtime |" in (out / "benchmark.md").read_text()
    assert "speedup_vs_vit_b32_same_runtime" in done.stdout  # the table is printed too
    assert "speedup_vs_vit_b32_batch1" not in results  # no ratio across two runtimes


def test_recommendation_is_the_fastest_index_that_agrees_with_exact_search():
    rows = [{"index": "flat", "query_ms": {"p50": 5.0}, "top1_agreement": 1.0},
            {"index": "hnsw", "query_ms": {"p50": 0.4}, "top1_agreement": 0.995},
            {"index": "ivfpq", "query_ms": {"p50": 0.1}, "top1_agreement": 0.90}]
    assert recommended_index(rows)["index"] == "hnsw"
    rows[1]["top1_agreement"] = 0.5
    rows[0]["top1_agreement"] = 0.98  # nothing reaches 0.99: exact search it is
    assert recommended_index(rows)["index"] == "flat"


def test_targets_are_judged_and_missing_ones_left_open():
    verdicts = check_targets({"speedup_vs_vit_b32_same_runtime": 30.0, "node_latency_p95_ms": 15.5,
                              "soak_rss_growth_pct": None})
    assert verdicts["speedup_vs_vit_b32_same_runtime"]["met"] is True
    assert verdicts["node_latency_p95_ms"] == {"target": "<= 5", "met": False}
    assert verdicts["soak_rss_growth_pct"]["met"] is None


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_a_gpu_is_one_clear_line(tmp_path):
    done = subprocess.run([sys.executable, "-m", "vl2spike_ros.cli", "benchmark", "--out", str(tmp_path),
                           "--device", "cuda"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip() == ("vl2spike benchmark: error: device 'cuda': CUDA is not available on "
                                   "this machine; use 'cpu'")
