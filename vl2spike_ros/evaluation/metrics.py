"""Place-recognition metrics: ground truth, Recall@K, the precision-recall curve of the top-1 match.

Conventions (also what `metrics.json` reports):
- Recall@K is in percent of ALL queries; a query without any positive reference counts as a miss.
- The PR curve accepts a query's top-1 match when its score is >= a threshold, swept over every
  top-1 score. precision = correct accepted / accepted; recall = correct accepted / queries that
  have at least one positive (a query without one can never be matched correctly, and counting it
  would cap recall below 1 for a perfect system). Both are fractions in [0, 1].
- PR-AUC is average precision over that curve: sum over thresholds of (r_i - r_{i-1}) * p_i with
  r_0 = 0, i.e. the area under the step curve, in [0, 1].
- Recall at 100% precision is the highest recall among thresholds with precision exactly 1.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from vl2spike_ros.errors import InputError
from vl2spike_ros.core.atomic_files import atomic_path

RECALL_KS = (1, 5, 10, 20)


# --- ground truth ---------------------------------------------------------------------------------
def frame_tolerance_positives(query_frames: Any, reference_frames: Any, tolerance: float) -> np.ndarray:
    """Positives bool [Q, N]: reference n is positive for query q when |frame_q - frame_n| <= tolerance."""
    queries = _integer_vector("query_frames", query_frames)
    references = _integer_vector("reference_frames", reference_frames)
    _check_non_negative("tolerance", tolerance)
    return np.abs(queries[:, np.newaxis] - references[np.newaxis, :]) <= tolerance


def metric_radius_positives(query_positions: Any, reference_positions: Any, radius: float) -> np.ndarray:
    """Positives bool [Q, N]: reference n is positive for query q when they are within `radius` metres."""
    queries = _position_matrix("query_positions", query_positions)
    references = _position_matrix("reference_positions", reference_positions)
    if queries.shape[1] != references.shape[1]:
        raise InputError(
            f"query_positions have {queries.shape[1]} coordinates but reference_positions have "
            f"{references.shape[1]}; give both 2D or both 3D"
        )
    _check_non_negative("radius", radius)
    squared = np.zeros((len(queries), len(references)))
    for axis in range(queries.shape[1]):  # one axis at a time keeps memory at one [Q, N] array
        squared += (queries[:, axis, np.newaxis] - references[np.newaxis, :, axis]) ** 2
    return squared <= float(radius) ** 2


# --- Recall@K ------------------------------------------------------------------------------------
def recall_at_k(ranked_ids: Any, positives: Any, ks: Sequence[int] = RECALL_KS) -> dict[int, float]:
    """Percent of all queries with a positive among their first k ranked ids, for each k.

    ranked_ids int [Q, Kmax], best first; -1 marks "no result" (approximate indexes). A k larger
    than Kmax is refused, unless the ranking already lists every reference (Kmax == N): then
    recall@k equals recall@N.
    """
    ranks, truth = _validated_rankings(ranked_ids, positives)
    columns = ranks.shape[1]
    hits = _ranked_hits(ranks, truth)
    first_hit_found_by = np.cumsum(hits, axis=1) > 0
    recalls: dict[int, float] = {}
    for k in ks:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise InputError(f"each k must be a positive integer, got {k!r}")
        if k > columns and columns < truth.shape[1]:
            raise InputError(
                f"recall@{k} needs at least {k} ranked ids per query but ranked_ids has {columns}"
            )
        recalls[int(k)] = 100.0 * float(first_hit_found_by[:, min(k, columns) - 1].mean())
    return recalls


# --- precision-recall ----------------------------------------------------------------------------
def pr_curve(
    top1_scores: Any, top1_correct: Any, has_positive: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall and thresholds (descending), one point per distinct top-1 score."""
    scores, correct, positive = _validated_top1(top1_scores, top1_correct, has_positive)
    order = np.argsort(-scores, kind="stable")
    sorted_scores = scores[order]
    true_positives = np.cumsum(correct[order])
    accepted = np.arange(1, len(scores) + 1)
    # With tied scores a threshold accepts the whole tie, so take the last index of each run.
    last_of_tie = np.flatnonzero(np.append(sorted_scores[1:] != sorted_scores[:-1], True))
    precision = true_positives[last_of_tie] / accepted[last_of_tie]
    recall = true_positives[last_of_tie] / int(positive.sum())
    return precision, recall, sorted_scores[last_of_tie]


def pr_auc(top1_scores: Any, top1_correct: Any, has_positive: Any) -> float:
    """Area under the step PR curve (average precision), in [0, 1]."""
    precision, recall, _ = pr_curve(top1_scores, top1_correct, has_positive)
    return float(np.sum(np.diff(recall, prepend=0.0) * precision))


def recall_at_100_precision(top1_scores: Any, top1_correct: Any, has_positive: Any) -> float:
    """Highest recall (fraction) at a threshold where every accepted match is correct; 0 if none."""
    precision, recall, _ = pr_curve(top1_scores, top1_correct, has_positive)
    perfect = precision == 1.0
    return float(recall[perfect].max()) if perfect.any() else 0.0


def plot_pr_curve(precision: Any, recall: Any, path: str | os.PathLike[str], title: str) -> None:
    """Write the PR curve as a PNG at `path`, atomically."""
    precision_values = np.asarray(precision, dtype=float)
    recall_values = np.asarray(recall, dtype=float)
    if precision_values.ndim != 1 or precision_values.shape != recall_values.shape:
        raise InputError(
            f"precision and recall must be 1-D of equal length, got {list(precision_values.shape)} "
            f"and {list(recall_values.shape)}"
        )
    # An explicit Agg canvas: no pyplot global state, no display needed.
    figure = Figure(figsize=(5, 4), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.step(np.concatenate([[0.0], recall_values]), np.concatenate([[1.0], precision_values]), where="pre")
    axes.set_xlabel("recall")
    axes.set_ylabel("precision")
    axes.set_xlim(0.0, 1.0)
    axes.set_ylim(0.0, 1.05)
    axes.set_title(title)
    axes.grid(True, alpha=0.3)
    figure.tight_layout()
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png")


# --- all metrics at once -------------------------------------------------------------------------
def evaluate_rankings(ranked_ids: Any, top1_scores: Any, positives: Any) -> dict[str, float | int]:
    """Recall@1/5/10/20 (percent), PR-AUC (fraction), recall at 100% precision (percent), counts."""
    ranks, truth = _validated_rankings(ranked_ids, positives)
    if np.shape(top1_scores) != (len(ranks),):
        raise InputError(f"top1_scores must have shape [{len(ranks)}], got {list(np.shape(top1_scores))}")
    recalls = recall_at_k(ranks, truth, RECALL_KS)
    top1_correct = _ranked_hits(ranks[:, :1], truth)[:, 0]
    has_positive = truth.any(axis=1)
    metrics: dict[str, float | int] = {f"recall@{k}": value for k, value in recalls.items()}
    metrics["pr_auc"] = pr_auc(top1_scores, top1_correct, has_positive)
    metrics["recall@100p"] = 100.0 * recall_at_100_precision(top1_scores, top1_correct, has_positive)
    metrics["num_queries"] = int(truth.shape[0])
    metrics["num_references"] = int(truth.shape[1])
    return metrics


# --- validation ----------------------------------------------------------------------------------
def _integer_vector(name: str, values: Any) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1 or not (np.issubdtype(array.dtype, np.integer) or array.size == 0):
        raise InputError(f"{name} must be a 1-D sequence of integers, got {array.dtype} {list(array.shape)}")
    return array.astype(np.int64)


def _position_matrix(name: str, values: Any) -> np.ndarray:
    try:
        array = np.asarray(values, dtype=float)
    except (TypeError, ValueError) as error:
        raise InputError(f"{name} must be numeric: {error}") from error
    if array.ndim != 2 or array.shape[1] not in (2, 3):
        raise InputError(f"{name} must have shape [N, 2] or [N, 3], got {list(array.shape)}")
    if not np.isfinite(array).all():
        raise InputError(f"{name} contain NaN or infinite values")
    return array


def _check_non_negative(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise InputError(f"{name} must be a number >= 0, got {value!r}")
    if not np.isfinite(value) or value < 0:
        raise InputError(f"{name} must be a finite number >= 0, got {value!r}")


def _validated_rankings(ranked_ids: Any, positives: Any) -> tuple[np.ndarray, np.ndarray]:
    truth = np.asarray(positives)
    if truth.dtype != bool or truth.ndim != 2:
        raise InputError(f"positives must be a boolean matrix [Q, N], got {truth.dtype} {list(truth.shape)}")
    ranks = np.asarray(ranked_ids)
    if ranks.ndim != 2 or not np.issubdtype(ranks.dtype, np.integer):
        raise InputError(
            f"ranked_ids must be an integer matrix [Q, K], got {ranks.dtype} {list(ranks.shape)}"
        )
    if ranks.shape[0] != truth.shape[0]:
        raise InputError(f"ranked_ids has {ranks.shape[0]} queries but positives has {truth.shape[0]}")
    if ranks.shape[0] == 0 or ranks.shape[1] == 0:
        raise InputError(f"ranked_ids must hold at least one query and one id, got {list(ranks.shape)}")
    if ranks.size and (ranks.min() < -1 or ranks.max() >= truth.shape[1]):
        raise InputError(
            f"ranked_ids must lie in [-1, {truth.shape[1] - 1}] (-1: no result), "
            f"got values in [{ranks.min()}, {ranks.max()}]"
        )
    return ranks.astype(np.int64), truth


def _ranked_hits(ranks: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """bool [Q, K]: whether each ranked id is a positive of its query; -1 is never one."""
    rows = np.arange(len(ranks))[:, np.newaxis]
    return truth[rows, np.maximum(ranks, 0)] & (ranks >= 0)


def _validated_top1(
    top1_scores: Any, top1_correct: Any, has_positive: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    try:
        scores = np.asarray(top1_scores, dtype=float)
    except (TypeError, ValueError) as error:
        raise InputError(f"top1_scores must be numeric: {error}") from error
    correct = np.asarray(top1_correct)
    positive = np.asarray(has_positive)
    if scores.ndim != 1 or len(scores) == 0:
        raise InputError(f"top1_scores must be a non-empty 1-D array, got shape {list(scores.shape)}")
    if np.isnan(scores).any():
        raise InputError("top1_scores contain NaN")
    for name, flags in (("top1_correct", correct), ("has_positive", positive)):
        if flags.dtype != bool or flags.shape != scores.shape:
            raise InputError(
                f"{name} must be a boolean array of shape {list(scores.shape)}, "
                f"got {flags.dtype} {list(flags.shape)}"
            )
    if (correct & ~positive).any():
        raise InputError("top1_correct is true for a query whose has_positive is false")
    if not positive.any():
        raise InputError("no query has a positive reference, so recall is undefined; check the tolerance")
    return scores, correct, positive
