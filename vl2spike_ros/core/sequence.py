"""SeqSLAM-style sequence matching on descriptor similarities.

A query q matches reference n well when the recent queries q, q-1, ..., q-L+1 also match the
references the robot would have passed: n, n - round(v), ..., n - round(v*(L-1)) for a velocity v
(references per query). The score of (q, n) is the mean of those similarities, maximised over a
few velocities.

Every candidate of a query is scored on the same evidence: the query's sequence holds the last L
queries (fewer only right after the start or a reset, and then equally few for every reference),
and every reference takes one term from each of them. A mean over fewer terms varies more, so
scoring some references on fewer would let them win on noise: scoring the map's first references
on the terms that exist put 37-44% of pure-noise top-1s on the first 9 of 400 references.

A sequence that would reach before the map's first reference wraps round to the map's end, as on a
loop route: reference n takes reference N + n - offset where n - offset < 0. So a robot that comes
back to the start of its map (a loop driven twice) is matched there on L terms like anywhere else,
and on a map that is no loop those references are scored on L terms too, from the end of the route
the robot did not come from (low similarities, so they win no more often than any reference). A
sequence longer than the map (an offset of N or more) would visit the map twice and is not
scored. In mapping mode a reference that the map did not hold yet at a past query lacks that term,
and a reference lacking a term at a velocity is not scored at it; scoring the newest keyframes on
the terms that exist made the newest one top-1 ten times its share. A reference scored at no
velocity gets -inf.

We score raw cosine similarities, without SeqSLAM's local contrast normalisation: descriptors from
the distilled encoder are already comparable across the map, and raw scores keep one match
threshold meaningful with and without sequence matching (L=1 returns the similarities unchanged).

`sequence_scores` scores a whole [Q, N] matrix, `sequence_top_k` a whole traverse in chunks of
queries (offline evaluation at any size); `SequenceMatcher` scores one query at a time (the robot). Both accumulate the same terms in the same order and precision, so
they give identical results on the same matrix.
"""
from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from vl2spike_ros.errors import InputError

DEFAULT_VELOCITIES = (0.8, 1.0, 1.25)


def sequence_scores(
    similarity: Any, length: int, velocities: Sequence[float] = DEFAULT_VELOCITIES
) -> np.ndarray:
    """Sequence scores float32 [Q, N] for a similarity matrix [Q, N] (query rows in time order)."""
    matrix = _validated_matrix(similarity)
    offset_rows = _offset_rows(length, velocities)
    num_queries, num_references = matrix.shape
    best = np.full(matrix.shape, -np.inf, dtype=np.float32)
    for offsets in offset_rows:
        total = np.zeros(matrix.shape, dtype=np.float32)
        # How many terms (q, n) has depends on q only up to q = L-1: count per number of steps taken.
        terms_by_steps = np.zeros((len(offsets), num_references), dtype=np.float32)
        for step, offset in enumerate(offsets[:num_queries]):
            # Query q - step against reference (n - offset) mod N, for every (q, n) where both exist.
            for references, past_references in _wrapped_pieces(offset, num_references, num_references):
                total[step:, references] += matrix[: num_queries - step, past_references]
                terms_by_steps[step:, references] += 1
        steps_taken = np.minimum(np.arange(num_queries), len(offsets) - 1)
        terms = terms_by_steps[steps_taken]
        np.maximum(best, _complete_means(total, terms, (steps_taken + 1)[:, np.newaxis]), out=best)
    return best


def sequence_top_k(
    similarity_rows: Callable[[int, int], Any], num_queries: int, length: int, k: int,
    velocities: Sequence[float] = DEFAULT_VELOCITIES, chunk_rows: int = 256,
) -> tuple[np.ndarray, np.ndarray]:
    """Best k sequence scores and reference ids, float32 / int64 [Q, k], of a whole query traverse;
    id -1 and score -inf where a query has fewer than k scored references.

    `similarity_rows(start, stop)` gives the similarities [stop - start, N] of those queries to
    every reference (e.g. `lambda a, b: queries[a:b] @ references.T`). Equal to ranking each row of
    `sequence_scores` on the whole matrix, but only `chunk_rows` queries plus the L-1 before them
    are ever held, so full Nordland (27,592 x 27,592) needs megabytes, not gigabytes.
    """
    offset_rows = _offset_rows(length, velocities)  # refuses bad arguments before any work
    if isinstance(chunk_rows, bool) or not isinstance(chunk_rows, (int, np.integer)) or chunk_rows < 1:
        raise InputError(f"chunk_rows must be a positive integer, got {chunk_rows!r}")
    history = len(offset_rows[0]) - 1
    top_scores = np.empty((num_queries, k), dtype=np.float32)
    top_ids = np.empty((num_queries, k), dtype=np.int64)
    for start in range(0, num_queries, chunk_rows):
        stop = min(start + chunk_rows, num_queries)
        # The L-1 queries before the chunk take part in its first rows' sequences; a chunk that
        # starts at query 0 has none, exactly like the whole matrix.
        context = max(0, start - history)
        scores = sequence_scores(similarity_rows(context, stop), length, velocities)[start - context:]
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= scores.shape[1]:
            raise InputError(f"k must be an integer in [1, {scores.shape[1]}], got {k!r}")
        # Partition to the best k (linear in N), then order those by score, lower id first on ties
        # (a tie at the k-th place itself may keep either id, as in the Localizer).
        candidates = np.sort(np.argpartition(-scores, k - 1, axis=1)[:, :k], axis=1)
        order = np.argsort(-np.take_along_axis(scores, candidates, axis=1), axis=1, kind="stable")
        ranked = np.take_along_axis(candidates, order, axis=1)
        ranked_scores = np.take_along_axis(scores, ranked, axis=1)
        top_ids[start:stop] = np.where(np.isfinite(ranked_scores), ranked, -1)
        top_scores[start:stop] = ranked_scores
    return top_scores, top_ids


class SequenceMatcher:
    """Online sequence matching: push one similarity row per query, get that query's sequence scores.

    The map may grow between pushes (mapping mode); a sequence that needs a reference an older row
    lacks leaves that candidate unscored (-inf) at that velocity (see the module doc). A shrinking
    row means another map: call `reset()` first.
    """

    def __init__(self, length: int, velocities: Sequence[float] = DEFAULT_VELOCITIES) -> None:
        self._offset_rows = _offset_rows(length, velocities)
        self._length = int(length)
        self._recent_rows: deque[np.ndarray] = deque(maxlen=self._length)

    @property
    def length(self) -> int:
        return self._length

    @property
    def frames(self) -> int:
        """Queries the newest scores average: up to `length`, fewer after a start or reset()."""
        return len(self._recent_rows)

    def reset(self) -> None:
        """Forget the recent queries (after a new map, or when the robot was moved)."""
        self._recent_rows.clear()

    def push(self, similarity_row: Any) -> np.ndarray:
        """Scores float32 [N] of the newest query, given its similarities [N] to every reference."""
        if np.ndim(similarity_row) != 1:
            raise InputError(f"similarity_row must have shape [N], got {list(np.shape(similarity_row))}")
        row = _validated_matrix(np.asarray(similarity_row)[np.newaxis], name="similarity_row")[0]
        if self._recent_rows and len(row) < len(self._recent_rows[-1]):
            raise InputError(
                f"similarity_row has {len(row)} entries but the previous one had "
                f"{len(self._recent_rows[-1])}; call reset() after switching to a smaller map"
            )
        self._recent_rows.append(row)
        num_references = len(row)
        best = np.full(num_references, -np.inf, dtype=np.float32)
        for offsets in self._offset_rows:
            total = np.zeros(num_references, dtype=np.float32)
            terms = np.zeros(num_references, dtype=np.float32)
            for offset, past_row in zip(offsets, reversed(self._recent_rows)):
                # Reference n takes past_row[(n - offset) mod N] where that reference existed then.
                for references, past_references in _wrapped_pieces(offset, num_references, len(past_row)):
                    total[references] += past_row[past_references]
                    terms[references] += 1
            np.maximum(best, _complete_means(total, terms, len(self._recent_rows)), out=best)
        return best


def _wrapped_pieces(offset: int, num_references: int, past_length: int) -> list[tuple[slice, slice]]:
    """(references, past references) slice pairs: reference n of a map of N takes past reference
    (n - offset) mod N, for the n whose past reference is below `past_length` (the map's size at
    that past query). None where |offset| >= N: the sequence would visit the map twice."""
    if abs(offset) >= num_references:
        return []
    first = -offset % num_references  # the past reference that reference 0 takes
    pieces = []
    # Over references 0 .. N-1, (n - offset) mod N runs first .. N-1, then 0 .. first-1.
    for reference, past, count in ((0, first, num_references - first), (num_references - first, 0, first)):
        count = min(count, past_length - past)
        if count > 0:
            pieces.append((slice(reference, reference + count), slice(past, past + count)))
    return pieces


def _complete_means(total: np.ndarray, terms: np.ndarray, steps: Any) -> np.ndarray:
    """total / terms where all `steps` terms exist, -inf where some are missing (see the module doc)."""
    return np.where(terms == steps, total / terms, np.float32(-np.inf)).astype(np.float32, copy=False)


def _offset_rows(length: int, velocities: Sequence[float]) -> list[tuple[int, ...]]:
    """Per velocity, the reference offset of each step back; velocities giving equal offsets merged."""
    if isinstance(length, bool) or not isinstance(length, (int, np.integer)) or length < 1:
        raise InputError(f"sequence length must be an integer >= 1, got {length!r}")
    speeds = list(velocities)
    if not speeds or not all(
        isinstance(v, (int, float, np.integer, np.floating)) and math.isfinite(v) for v in speeds
    ):
        raise InputError(f"velocities must be a non-empty list of finite numbers, got {velocities!r}")
    rows: list[tuple[int, ...]] = []
    for speed in speeds:
        # Round half up (not Python's round-half-even) so offsets grow evenly with the step.
        offsets = tuple(math.floor(speed * step + 0.5) for step in range(int(length)))
        if offsets not in rows:
            rows.append(offsets)
    return rows


def _validated_matrix(similarity: Any, name: str = "similarity") -> np.ndarray:
    try:
        matrix = np.asarray(similarity, dtype=np.float32)
    except (TypeError, ValueError) as error:
        raise InputError(f"{name} must be numeric: {error}") from error
    if matrix.ndim != 2:
        raise InputError(f"{name} must have shape [Q, N], got {list(matrix.shape)}")
    if not np.isfinite(matrix).all():
        raise InputError(f"{name} contains NaN or infinite values")
    return matrix
