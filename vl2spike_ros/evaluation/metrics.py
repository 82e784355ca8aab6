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

import abc
import math
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
# Ground truth is never a dense [Q, N] matrix: full Nordland (27,592 x 27,592) would need GBs before
# any descriptor is compared. A GroundTruth answers the two questions the metrics ask, whether each
# ranked id is a positive ([Q, K] memory) and whether a query has any positive ([Q] memory).
class GroundTruth(abc.ABC):
    """Which references are positives of each query, as the metrics need it."""

    num_queries: int
    num_references: int

    @abc.abstractmethod
    def hits(self, ranks: np.ndarray) -> np.ndarray:
        """bool [Q, K]: whether each ranked id (int64, -1: no result) is a positive of its query."""

    @property
    @abc.abstractmethod
    def has_positive(self) -> np.ndarray:
        """bool [Q]: whether the query has at least one positive reference."""


class FrameToleranceTruth(GroundTruth):
    """Reference n is positive for query q when |frame_q - frame_n| <= tolerance."""

    def __init__(self, query_frames: Any, reference_frames: Any, tolerance: float) -> None:
        self.query_frames = _integer_vector("query_frames", query_frames)
        self.reference_frames = _integer_vector("reference_frames", reference_frames)
        _check_non_negative("tolerance", tolerance)
        self.tolerance = tolerance
        self.num_queries, self.num_references = len(self.query_frames), len(self.reference_frames)

    def hits(self, ranks: np.ndarray) -> np.ndarray:
        frames = self.reference_frames[np.maximum(ranks, 0)] if self.num_references else np.zeros_like(ranks)
        return (np.abs(self.query_frames[:, np.newaxis] - frames) <= self.tolerance) & (ranks >= 0)

    @property
    def has_positive(self) -> np.ndarray:
        if not self.num_references:
            return np.zeros(self.num_queries, dtype=bool)
        # Frame differences are integers, so |d| <= tolerance is |d| <= floor(tolerance); the nearest
        # reference frame at or above frame_q - floor(tolerance) decides.
        reach = np.int64(min(math.floor(self.tolerance), np.iinfo(np.int64).max // 4))
        ordered = np.sort(self.reference_frames)
        lowest = np.searchsorted(ordered, self.query_frames - reach, side="left")
        candidate = ordered[np.minimum(lowest, len(ordered) - 1)]
        return (lowest < len(ordered)) & (candidate <= self.query_frames + reach)


class MetricRadiusTruth(GroundTruth):
    """Reference n is positive for query q when their positions are within `radius` metres."""

    QUERY_CHUNK_ELEMENTS = 1 << 22  # queries x references per chunk of the any-positive scan (32 MB)

    def __init__(self, query_positions: Any, reference_positions: Any, radius: float) -> None:
        self.queries = _position_matrix("query_positions", query_positions)
        self.references = _position_matrix("reference_positions", reference_positions)
        if self.queries.shape[1] != self.references.shape[1]:
            raise InputError(
                f"query_positions have {self.queries.shape[1]} coordinates but reference_positions have "
                f"{self.references.shape[1]}; give both 2D or both 3D"
            )
        _check_non_negative("radius", radius)
        self.radius = radius
        self.num_queries, self.num_references = len(self.queries), len(self.references)

    def _within(self, queries: np.ndarray, references: np.ndarray) -> np.ndarray:
        """queries [Q, A] against references [Q, K, A] (or [1, N, A]) -> bool [Q, K]."""
        squared = np.zeros(np.broadcast_shapes(queries.shape[:1] + (1,), references.shape[:2]))
        for axis in range(queries.shape[1]):
            squared += (queries[:, axis, np.newaxis] - references[:, :, axis]) ** 2
        return squared <= float(self.radius) ** 2

    def hits(self, ranks: np.ndarray) -> np.ndarray:
        if not self.num_references:
            return np.zeros(ranks.shape, dtype=bool)
        return self._within(self.queries, self.references[np.maximum(ranks, 0)]) & (ranks >= 0)

    @property
    def has_positive(self) -> np.ndarray:
        chunk = max(1, self.QUERY_CHUNK_ELEMENTS // max(self.num_references, 1))
        return np.concatenate([np.zeros(0, dtype=bool)] + [
            self._within(self.queries[start:start + chunk], self.references[np.newaxis]).any(axis=1)
            for start in range(0, self.num_queries, chunk)])


class MatrixTruth(GroundTruth):
    """A caller's own bool [Q, N] matrix of positives (small cases; the two above scale)."""

    def __init__(self, positives: Any) -> None:
        self.matrix = np.asarray(positives)
        if self.matrix.dtype != bool or self.matrix.ndim != 2:
            raise InputError(f"positives must be a boolean matrix [Q, N], got {self.matrix.dtype} "
                             f"{list(self.matrix.shape)}")
        self.num_queries, self.num_references = self.matrix.shape

    def hits(self, ranks: np.ndarray) -> np.ndarray:
        rows = np.arange(len(ranks))[:, np.newaxis]
        return self.matrix[rows, np.maximum(ranks, 0)] & (ranks >= 0)

    @property
    def has_positive(self) -> np.ndarray:
        return self.matrix.any(axis=1)


def frame_tolerance_positives(query_frames: Any, reference_frames: Any, tolerance: float) -> FrameToleranceTruth:
    """Positives by frame number: reference n is positive for query q when |frame_q - frame_n| <= tolerance."""
    return FrameToleranceTruth(query_frames, reference_frames, tolerance)


def metric_radius_positives(query_positions: Any, reference_positions: Any, radius: float) -> MetricRadiusTruth:
    """Positives by position: reference n is positive for query q when they are within `radius` metres."""
    return MetricRadiusTruth(query_positions, reference_positions, radius)


# --- Recall@K ------------------------------------------------------------------------------------
def recall_at_k(ranked_ids: Any, positives: Any, ks: Sequence[int] = RECALL_KS) -> dict[int, float]:
    """Percent of all queries with a positive among their first k ranked ids, for each k.

    ranked_ids int [Q, Kmax], best first; -1 marks "no result" (approximate indexes). A k larger
    than Kmax is refused, unless the ranking already lists every reference (Kmax == N): then
    recall@k equals recall@N.
    """
    ranks, truth = _validated_rankings(ranked_ids, positives)
    columns = ranks.shape[1]
    hits = truth.hits(ranks)
    first_hit_found_by = np.cumsum(hits, axis=1) > 0
    recalls: dict[int, float] = {}
    for k in ks:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise InputError(f"each k must be a positive integer, got {k!r}")
        if k > columns and columns < truth.num_references:
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
    top1_correct = truth.hits(ranks[:, :1])[:, 0]
    has_positive = truth.has_positive
    metrics: dict[str, float | int] = {f"recall@{k}": value for k, value in recalls.items()}
    metrics["pr_auc"] = pr_auc(top1_scores, top1_correct, has_positive)
    metrics["recall@100p"] = 100.0 * recall_at_100_precision(top1_scores, top1_correct, has_positive)
    metrics["num_queries"] = int(truth.num_queries)
    metrics["num_references"] = int(truth.num_references)
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


def _validated_rankings(ranked_ids: Any, positives: Any) -> tuple[np.ndarray, GroundTruth]:
    """positives: a GroundTruth, or a bool [Q, N] matrix (small cases)."""
    truth = positives if isinstance(positives, GroundTruth) else MatrixTruth(positives)
    ranks = np.asarray(ranked_ids)
    if ranks.ndim != 2 or not np.issubdtype(ranks.dtype, np.integer):
        raise InputError(
            f"ranked_ids must be an integer matrix [Q, K], got {ranks.dtype} {list(ranks.shape)}"
        )
    if ranks.shape[0] != truth.num_queries:
        raise InputError(f"ranked_ids has {ranks.shape[0]} queries but positives has {truth.num_queries}")
    if ranks.shape[0] == 0 or ranks.shape[1] == 0:
        raise InputError(f"ranked_ids must hold at least one query and one id, got {list(ranks.shape)}")
    if ranks.size and (ranks.min() < -1 or ranks.max() >= truth.num_references):
        raise InputError(
            f"ranked_ids must lie in [-1, {truth.num_references - 1}] (-1: no result), "
            f"got values in [{ranks.min()}, {ranks.max()}]"
        )
    return ranks.astype(np.int64), truth


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
