"""Metrics against hand-computed cases; atomic writers on real files."""
import json
import os

import numpy as np
import pytest

from vl2spike_ros.errors import InputError
from vl2spike_ros.evaluation.metrics import (
    MetricRadiusTruth,
    evaluate_rankings,
    frame_tolerance_positives,
    metric_radius_positives,
    plot_pr_curve,
    pr_auc,
    pr_curve,
    recall_at_100_precision,
    recall_at_k,
)
from vl2spike_ros.core.atomic_files import atomic_path, atomic_write_bytes, write_json_atomic


# --- ground truth ---------------------------------------------------------------------------------
# The dense [Q, N] construction the metrics used before ground truth scaled to full Nordland; kept
# here only as the reference the scalable forms must reproduce exactly.
def dense_frame_positives(query_frames, reference_frames, tolerance):
    queries = np.asarray(query_frames, dtype=np.int64)
    references = np.asarray(reference_frames, dtype=np.int64)
    return np.abs(queries[:, np.newaxis] - references[np.newaxis, :]) <= tolerance


def dense_radius_positives(query_positions, reference_positions, radius):
    queries = np.asarray(query_positions, dtype=float)
    references = np.asarray(reference_positions, dtype=float)
    squared = np.zeros((len(queries), len(references)))
    for axis in range(queries.shape[1]):
        squared += (queries[:, axis, np.newaxis] - references[np.newaxis, :, axis]) ** 2
    return squared <= float(radius) ** 2


def dense_metrics(ranked, top1_scores, positives):
    """Today's metrics computed from the dense matrix, as evaluate_rankings did before."""
    rows = np.arange(len(ranked))[:, np.newaxis]
    hits = positives[rows, np.maximum(ranked, 0)] & (ranked >= 0)
    found = np.cumsum(hits, axis=1) > 0
    out = {f"recall@{k}": 100.0 * float(found[:, min(k, ranked.shape[1]) - 1].mean()) for k in (1, 5, 10, 20)}
    out["pr_auc"] = pr_auc(top1_scores, hits[:, 0], positives.any(axis=1))
    out["recall@100p"] = 100.0 * recall_at_100_precision(top1_scores, hits[:, 0], positives.any(axis=1))
    return out, hits, positives.any(axis=1)


def all_hits(truth):
    """Every (query, reference) pair through the scalable interface, for small cases."""
    ranks = np.tile(np.arange(truth.num_references), (truth.num_queries, 1))
    return truth.hits(ranks)


def test_frame_tolerance_positives():
    positives = frame_tolerance_positives([10, 20, 30], [8, 12, 25, 31], tolerance=2)
    expected = np.array(
        [
            [True, True, False, False],
            [False, False, False, False],
            [False, False, False, True],
        ]
    )
    np.testing.assert_array_equal(all_hits(positives), expected)
    np.testing.assert_array_equal(positives.has_positive, [True, False, True])
    np.testing.assert_array_equal(all_hits(frame_tolerance_positives([5], [5, 6], tolerance=0)), [[True, False]])
    with pytest.raises(InputError, match="tolerance must be a finite number >= 0"):
        frame_tolerance_positives([1], [1], tolerance=-1)
    with pytest.raises(InputError, match="query_frames must be a 1-D sequence of integers"):
        frame_tolerance_positives([1.5], [1], tolerance=1)


def test_metric_radius_positives():
    queries = [[0.0, 0.0], [10.0, 0.0]]
    references = [[3.0, 4.0], [0.0, 0.5], [10.0, 6.0]]
    truth = metric_radius_positives(queries, references, radius=5.0)
    np.testing.assert_array_equal(all_hits(truth), [[True, True, False], [False, False, False]])
    np.testing.assert_array_equal(truth.has_positive, [True, False])
    np.testing.assert_array_equal(
        all_hits(metric_radius_positives([[0, 0, 0]], [[0, 0, 2], [0, 0, 3]], radius=2.5)), [[True, False]]
    )
    with pytest.raises(InputError, match="radius must be a finite number >= 0"):
        metric_radius_positives(queries, references, radius=-0.1)
    with pytest.raises(InputError, match="give both 2D or both 3D"):
        metric_radius_positives(queries, [[0, 0, 0]], radius=1)


@pytest.mark.parametrize("seed", range(6))
def test_scalable_ground_truth_gives_the_dense_results(seed, monkeypatch):
    """Random small traverses (repeated, unsorted frames; -1 results; 2D/3D poses): hits,
    has-positive and every metric equal what the dense [Q, N] matrix gives."""
    rng = np.random.default_rng(seed)
    num_queries, num_references = int(rng.integers(25, 60)), int(rng.integers(20, 50))
    query_frames = rng.integers(0, 80, num_queries)
    reference_frames = rng.permutation(rng.integers(0, 80, num_references))
    tolerance = float(rng.choice([0, 1, 2.5, 7]))
    ranked = np.stack([rng.permutation(num_references)[:20] for _ in range(num_queries)])
    ranked[rng.random(ranked.shape) < 0.05] = -1
    scores = np.round(rng.random(num_queries), 1)  # ties on purpose
    dimensions = 2 + seed % 2
    query_positions = rng.normal(size=(num_queries, dimensions)) * 5
    reference_positions = rng.normal(size=(num_references, dimensions)) * 5
    # Chunks of a few queries, so the chunked any-positive scan crosses chunk borders.
    monkeypatch.setattr(MetricRadiusTruth, "QUERY_CHUNK_ELEMENTS", 3 * num_references)
    cases = [(frame_tolerance_positives(query_frames, reference_frames, tolerance),
              dense_frame_positives(query_frames, reference_frames, tolerance)),
             (metric_radius_positives(query_positions, reference_positions, 4.0),
              dense_radius_positives(query_positions, reference_positions, 4.0))]
    for truth, dense in cases:
        np.testing.assert_array_equal(all_hits(truth), dense)
        expected, hits, has_positive = dense_metrics(ranked, scores, dense)
        np.testing.assert_array_equal(truth.hits(ranked), hits)
        np.testing.assert_array_equal(truth.has_positive, has_positive)
        if has_positive.any():
            metrics = evaluate_rankings(ranked, scores, truth)
            assert {key: metrics[key] for key in expected} == expected
            assert evaluate_rankings(ranked, scores, dense) == metrics


# --- Recall@K ------------------------------------------------------------------------------------
# 4 queries, 6 references. Query 0: hit at rank 1; query 1: hit at rank 3; query 2: no hit in the
# ranking; query 3: has no positive at all (still counts in the denominator).
POSITIVES = np.array(
    [
        [True, False, False, False, False, False],
        [False, False, False, False, True, True],
        [False, True, False, False, False, False],
        [False, False, False, False, False, False],
    ]
)
RANKED = np.array([[0, 2, 3], [1, 2, 5], [0, 2, 3], [4, 5, 0]])


def test_recall_at_k_counts_every_query():
    assert recall_at_k(RANKED, POSITIVES, ks=(1, 2, 3)) == {1: 25.0, 2: 25.0, 3: 50.0}


def test_recall_at_k_refuses_k_beyond_the_ranking_unless_it_is_complete():
    with pytest.raises(InputError, match="recall@5 needs at least 5 ranked ids per query but ranked_ids has 3"):
        recall_at_k(RANKED, POSITIVES, ks=(1, 5))
    complete = np.array([[0, 1], [1, 0]])
    truth = np.array([[False, True], [False, False]])
    assert recall_at_k(complete, truth, ks=(1, 2, 20)) == {1: 0.0, 2: 50.0, 20: 50.0}


def test_missing_results_never_count_as_hits():
    # -1 is what an approximate index returns when it finds fewer than k places.
    truth = np.array([[False, False, True]])
    assert recall_at_k(np.array([[-1, 2]]), truth, ks=(1, 2)) == {1: 0.0, 2: 100.0}
    with pytest.raises(InputError, match=r"ranked_ids must lie in \[-1, 2\]"):
        recall_at_k(np.array([[3]]), truth, ks=(1,))


# --- precision-recall ----------------------------------------------------------------------------
# Four queries by falling top-1 score: correct, wrong, correct, wrong (the last has no positive).
# Recall's denominator is 3 (queries with a positive).
SCORES = np.array([0.6, 0.9, 0.7, 0.8])
CORRECT = np.array([False, True, True, False])
HAS_POSITIVE = np.array([False, True, True, True])


def test_pr_curve_by_hand():
    precision, recall, thresholds = pr_curve(SCORES, CORRECT, HAS_POSITIVE)
    np.testing.assert_allclose(thresholds, [0.9, 0.8, 0.7, 0.6])
    np.testing.assert_allclose(precision, [1 / 1, 1 / 2, 2 / 3, 2 / 4])
    np.testing.assert_allclose(recall, [1 / 3, 1 / 3, 2 / 3, 2 / 3])
    # Area: (1/3 - 0) * 1 + 0 * 1/2 + (2/3 - 1/3) * 2/3 + 0 * 1/2 = 5/9.
    assert pr_auc(SCORES, CORRECT, HAS_POSITIVE) == pytest.approx(5 / 9)
    assert recall_at_100_precision(SCORES, CORRECT, HAS_POSITIVE) == pytest.approx(1 / 3)


def test_tied_scores_are_accepted_together():
    precision, recall, thresholds = pr_curve([0.9, 0.9, 0.5], [True, False, True], [True, True, True])
    np.testing.assert_allclose(thresholds, [0.9, 0.5])
    np.testing.assert_allclose(precision, [1 / 2, 2 / 3])
    np.testing.assert_allclose(recall, [1 / 3, 2 / 3])
    assert recall_at_100_precision([0.9, 0.9, 0.5], [True, False, True], [True, True, True]) == 0.0


def test_perfect_ranking_has_unit_area():
    assert pr_auc([0.9, 0.8], [True, True], [True, True]) == pytest.approx(1.0)
    assert recall_at_100_precision([0.9, 0.8], [True, True], [True, True]) == pytest.approx(1.0)


def test_pr_input_is_checked():
    with pytest.raises(InputError, match="no query has a positive"):
        pr_curve([0.5], [False], [False])
    with pytest.raises(InputError, match="top1_correct is true for a query whose has_positive is false"):
        pr_curve([0.5, 0.4], [True, False], [False, True])
    with pytest.raises(InputError, match=r"has_positive must be a boolean array of shape \[2\]"):
        pr_curve([0.5, 0.4], [True, False], [True])


def test_evaluate_rankings():
    top1_scores = np.array([0.9, 0.7, 0.8, 0.6])
    ranked = np.array([[0, 2, 3, 4, 5, 1], [1, 2, 5, 0, 3, 4], [0, 2, 3, 4, 5, 1], [4, 5, 0, 1, 2, 3]])
    metrics = evaluate_rankings(ranked, top1_scores, POSITIVES)
    # Recall@1: query 0 only; recall@5: query 1 (rank 3) and query 2 (rank 6 > 5 misses) -> 2/4;
    # recall@10 and @20: the ranking is complete, so query 2 counts too -> 3/4.
    assert {key: metrics[key] for key in ("recall@1", "recall@5", "recall@10", "recall@20")} == {
        "recall@1": 25.0, "recall@5": 50.0, "recall@10": 75.0, "recall@20": 75.0}
    # Top-1: query 0 (0.9) correct, query 2 (0.8) wrong, 1 and 3 wrong; 3 queries have a positive.
    assert metrics["pr_auc"] == pytest.approx(1 / 3)
    assert metrics["recall@100p"] == pytest.approx(100 / 3)
    assert (metrics["num_queries"], metrics["num_references"]) == (4, 6)
    json.dumps(metrics)  # goes straight into metrics.json
    with pytest.raises(InputError, match=r"top1_scores must have shape \[4\]"):
        evaluate_rankings(ranked, top1_scores[:3], POSITIVES)


# --- files ---------------------------------------------------------------------------------------
def test_plot_pr_curve_writes_a_png_atomically(tmp_path):
    precision, recall, _ = pr_curve(SCORES, CORRECT, HAS_POSITIVE)
    path = tmp_path / "pr_curve.png"
    plot_pr_curve(precision, recall, path, "demo route")
    assert path.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert [p.name for p in tmp_path.iterdir()] == ["pr_curve.png"]


def test_json_and_bytes_are_written_atomically(tmp_path):
    path = tmp_path / "metrics.json"
    write_json_atomic(path, {"recall@1": 50.0, "name": "Nordland ø"})
    assert json.loads(path.read_text(encoding="utf-8")) == {"recall@1": 50.0, "name": "Nordland ø"}
    atomic_write_bytes(tmp_path / "blob.bin", b"\x00\x01")
    assert (tmp_path / "blob.bin").read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blob.bin", "metrics.json"]


def test_failed_write_keeps_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text("old")
    with pytest.raises(RuntimeError, match="writer failed"):
        with atomic_path(path) as temporary:
            assert temporary.parent == tmp_path and temporary.suffix == ".json"
            temporary.write_text("half")
            raise RuntimeError("writer failed")
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["metrics.json"]
