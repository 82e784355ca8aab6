"""The map benchmark's descriptors at a small size: route-shaped descriptors honour their calibrated
cosines, built HNSW maps come back from the cache, and `vl2spike benchmark --parts map` writes
both descriptor kinds with the calibration it measured. Figures are not asserted."""
import json
import subprocess
import sys

import numpy as np
import pytest

from vl2spike_ros.benchmark.map_search import search_at_size, synthetic_map
from vl2spike_ros.benchmark.options import ROUTE_DATA_HINT
from vl2spike_ros.benchmark.route_shape import route_cosines, route_revisits, route_rows


def test_route_descriptors_take_the_calibrated_cosines():
    rng = np.random.default_rng(0)
    rows = route_rows(rng, 2000, 64, 300, 0.93)  # 7 routes, the last one 200 places
    queries, revisited = route_revisits(rng, rows, 200, 0.61)
    assert rows.shape == (2000, 64) and queries.shape == (200, 64)
    np.testing.assert_allclose(np.linalg.norm(rows, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(queries, axis=1), 1.0, atol=1e-5)
    steps = np.sum(rows[:-1] * rows[1:], axis=1)
    within = (np.arange(1999) + 1) % 300 != 0
    np.testing.assert_allclose(steps[within], 0.93, atol=1e-4)  # every step, not just on average
    assert np.abs(steps[~within]).max() < 0.6  # a new route starts anywhere
    np.testing.assert_allclose(np.sum(queries * rows[revisited], axis=1), 0.61, atol=1e-4)
    figures = route_cosines(rows, 300, queries, revisited)
    assert figures["consecutive_cosine"] == pytest.approx(0.93, abs=1e-3)
    assert figures["revisit_cosine"] == pytest.approx(0.61, abs=1e-3)


def test_hnsw_maps_come_back_from_the_cache(tmp_path):
    route = {"route_length": 100, "consecutive_cosine": 0.9, "revisit_cosine": 0.7}
    descriptors, queries, _ = synthetic_map("route", 1000, 16, 50, route)
    first, again = (search_at_size(descriptors, queries, "f" * 64, 3, ("flat", "hnsw"), tmp_path, progress=print)
                    for _ in range(2))
    assert [row["cached"] for row in first if row["index"] == "hnsw"] == [False] * 5
    assert [row["cached"] for row in again if row["index"] == "hnsw"] == [True] * 5
    assert [row["top1_agreement"] for row in again] == [row["top1_agreement"] for row in first]
    assert again[1]["build_s"] == round(first[1]["build_s"], 2)  # the original build time is reported


def test_map_benchmark_writes_both_descriptor_kinds(tmp_path, nordland):
    out = tmp_path / "bench"
    command = [sys.executable, "-m", "vl2spike_ros.cli", "benchmark", "--out", str(out), "--parts", "map",
               "--map-sizes", "1000,1500,2000", "--hnsw-max-places", "1500", "--repeats", "3",
               "--route-data", str(nordland), "--route-places", "60", "--route-length", "100"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    results = json.loads((out / "benchmark.json").read_text())
    calibration = results["map_route_calibration"]
    assert calibration["places"] == 60 and calibration["route_length"] == 100
    for generated in calibration["generated"].values():  # what was asked for is what was generated
        assert generated["consecutive_cosine"] == pytest.approx(calibration["consecutive_cosine"], abs=2e-3)
        assert generated["revisit_cosine"] == pytest.approx(calibration["revisit_cosine"], abs=2e-3)
    assert sorted(calibration["generated"]) == ["1000", "1500", "2000"]
    kinds = {(row["descriptors"], row["places"], row["index"]) for row in results["map_search"]}
    assert {("isotropic", 1500, "hnsw"), ("route", 1500, "hnsw"), ("route", 2000, "ivfpq")} <= kinds
    for prefix in ("map", "map_route"):
        for key in ("index", "query_ms", "query_ms_p95", "top1_agreement"):
            assert results[f"{prefix}_1m_{key}"] is not None
    assert results["targets"]["map_route_1m_query_ms"]["met"] is not None
    assert "| route | 2,000 | flat |" in (out / "benchmark.md").read_text()
    assert list((out / "work" / "map_cache").glob("hnsw-*.json"))


def test_route_descriptors_need_route_data(tmp_path):
    done = subprocess.run([sys.executable, "-m", "vl2spike_ros.cli", "benchmark", "--out", str(tmp_path),
                           "--parts", "map", "--map-kinds", "isotropic,route"], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 2
    assert done.stderr.strip().startswith("vl2spike benchmark: error: --map-kinds route: expected --route-data DIR")


def test_quick_benchmark_without_route_data_runs_the_isotropic_maps(tmp_path):
    """The README's `vl2spike benchmark --quick --out DIR`, at the smallest sizes and the map part
    alone: the isotropic maps run, and one line says how to add the route-shaped ones."""
    out = tmp_path / "bench"
    done = subprocess.run([sys.executable, "-m", "vl2spike_ros.cli", "benchmark", "--quick", "--out", str(out),
                           "--parts", "map", "--map-sizes", "1000,1000,1000", "--hnsw-max-places", "1000",
                           "--repeats", "1"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    hints = [line for line in done.stdout.splitlines() if "--route-data" in line]
    assert hints == [ROUTE_DATA_HINT]
    results = json.loads((out / "benchmark.json").read_text())
    assert results["options"]["map_kinds"] == ["isotropic"]
    assert {row["descriptors"] for row in results["map_search"]} == {"isotropic"}
    assert results["map_1m_query_ms"] is not None and "map_route_1m_query_ms" not in results
