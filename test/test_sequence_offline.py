"""Whole-traverse sequence matching in chunks against the whole-matrix scoring it must equal."""
import numpy as np
import pytest

from vl2spike_ros.core.sequence import sequence_scores, sequence_top_k
from vl2spike_ros.errors import InputError


def unit_rows(rng, count, dim):
    rows = rng.normal(size=(count, dim)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


@pytest.mark.parametrize("length, chunk_rows", [(1, 7), (3, 1), (5, 4), (10, 16), (10, 1000)])
def test_chunks_give_the_whole_matrix_results(length, chunk_rows):
    rng = np.random.default_rng(length * 100 + chunk_rows)
    queries, references = unit_rows(rng, 53, 16), unit_rows(rng, 41, 16)
    similarity = queries @ references.T
    whole = sequence_scores(similarity, length)
    scores, ids = sequence_top_k(lambda start, stop: similarity[start:stop], len(queries), length, k=5,
                                 chunk_rows=chunk_rows)
    expected_ids = np.argsort(-whole, axis=1, kind="stable")[:, :5]
    np.testing.assert_array_equal(ids, expected_ids)
    np.testing.assert_array_equal(scores, np.take_along_axis(whole, expected_ids, axis=1))


def test_bad_arguments_are_refused():
    rng = np.random.default_rng(0)
    similarity = unit_rows(rng, 4, 8) @ unit_rows(rng, 6, 8).T

    def rows(start, stop):
        return similarity[start:stop]

    with pytest.raises(InputError, match=r"k must be an integer in \[1, 6\]"):
        sequence_top_k(rows, 4, 2, k=7)
    with pytest.raises(InputError, match="sequence length must be an integer >= 1"):
        sequence_top_k(rows, 4, 0, k=1)
    with pytest.raises(InputError, match="chunk_rows must be a positive integer"):
        sequence_top_k(rows, 4, 2, k=1, chunk_rows=0)


def test_references_without_a_score_come_back_as_minus_one():
    similarity = np.full((4, 3), 0.5, dtype=np.float32)
    scores, ids = sequence_top_k(lambda start, stop: similarity[start:stop], 4, 4, k=3, velocities=(1.0,))
    # Query 2 reaches back two references (wrapping round the map of 3); query 3's sequence would
    # reach back three, round the whole map: no reference is scored.
    np.testing.assert_array_equal(ids[2], [0, 1, 2])
    np.testing.assert_array_equal(ids[3], [-1, -1, -1])
    assert (scores[2] == pytest.approx(0.5)) and (scores[3] == -np.inf).all()
