"""Sequence matching: hand-computed scores, offline == online, growing maps, bad input."""
import time

import numpy as np
import pytest

from vl2spike_ros.errors import InputError
from vl2spike_ros.core.sequence import SequenceMatcher, sequence_scores

# Queries 0..4 traverse references 0..4 (diagonal 0.9); query 3 alone prefers reference 4 (0.95).
SIMILARITY = np.array(
    [
        [0.9, 0.1, 0.2, 0.1, 0.0],
        [0.2, 0.9, 0.1, 0.2, 0.1],
        [0.1, 0.2, 0.9, 0.1, 0.2],
        [0.1, 0.1, 0.2, 0.9, 0.95],
        [0.1, 0.2, 0.1, 0.3, 0.9],
    ],
    dtype=np.float32,
)


def test_sequence_recovers_the_diagonal_where_single_frames_fail():
    assert SIMILARITY[3].argmax() == 4
    scores = sequence_scores(SIMILARITY, length=3, velocities=(1.0,))
    np.testing.assert_array_equal(scores.argmax(axis=1), np.arange(5))
    # (3, 3): mean of S[3,3], S[2,2], S[1,1]; (3, 4): S[3,4], S[2,3], S[1,2].
    assert scores[3, 3] == pytest.approx((0.9 + 0.9 + 0.9) / 3)
    assert scores[3, 4] == pytest.approx((0.95 + 0.1 + 0.1) / 3)
    # (3, 0): only S[3,0] exists (references -1 and -2 do not), so it is the whole mean.
    assert scores[3, 0] == pytest.approx(0.1)
    # (3, 1): S[3,1], S[2,0]; (1, 4): S[1,4], S[0,3] (the start clips the sequence to two queries).
    assert scores[3, 1] == pytest.approx((0.1 + 0.1) / 2)
    assert scores[1, 4] == pytest.approx((0.1 + 0.1) / 2)
    np.testing.assert_array_equal(scores[0], SIMILARITY[0])


def test_best_velocity_wins():
    # Query q matches reference 2q: only velocity 2 follows it.
    similarity = np.zeros((3, 6), dtype=np.float32)
    similarity[[0, 1, 2], [0, 2, 4]] = 1.0
    assert sequence_scores(similarity, 3, velocities=(1.0,))[2, 4] == pytest.approx(1 / 3)
    assert sequence_scores(similarity, 3, velocities=(1.0, 2.0))[2, 4] == pytest.approx(1.0)


def test_length_one_returns_the_similarities_unchanged():
    similarity = np.random.default_rng(0).uniform(-1, 1, (6, 9)).astype(np.float32)
    np.testing.assert_array_equal(sequence_scores(similarity, 1), similarity)
    matcher = SequenceMatcher(1)
    for row in similarity:
        np.testing.assert_array_equal(matcher.push(row), row)


@pytest.mark.parametrize("length", [1, 4, 10])
def test_offline_and_online_agree_exactly(length):
    similarity = np.random.default_rng(length).uniform(-1, 1, (40, 30)).astype(np.float32)
    matcher = SequenceMatcher(length)
    online = np.stack([matcher.push(row) for row in similarity])
    np.testing.assert_array_equal(online, sequence_scores(similarity, length))


def test_online_handles_a_growing_map_and_reset():
    matcher = SequenceMatcher(2, velocities=(1.0,))
    first = np.array([0.5, 0.2, 0.1], dtype=np.float32)
    second = np.array([0.3, 0.6, 0.2, 0.8], dtype=np.float32)  # place 3 was added in between
    matcher.push(first)
    scores = matcher.push(second)
    # Reference n: second[n] and first[n-1]; reference 0 has no predecessor.
    np.testing.assert_allclose(scores, [0.3, (0.6 + 0.5) / 2, (0.2 + 0.2) / 2, (0.8 + 0.1) / 2], rtol=1e-6)
    with pytest.raises(InputError, match="call reset"):
        matcher.push(first)
    matcher.reset()
    np.testing.assert_array_equal(matcher.push(first), first)


def test_bad_input_is_refused():
    with pytest.raises(InputError, match="sequence length"):
        sequence_scores(SIMILARITY, 0)
    with pytest.raises(InputError, match="velocities"):
        SequenceMatcher(3, velocities=())
    with pytest.raises(InputError, match="NaN"):
        sequence_scores(np.array([[np.nan]]), 2)
    with pytest.raises(InputError, match=r"shape \[Q, N\]"):
        sequence_scores(np.zeros(4), 2)
    with pytest.raises(InputError, match=r"shape \[N\]"):
        SequenceMatcher(2).push(np.zeros((2, 2)))


def test_nordland_sized_matrix_is_fast():
    similarity = np.random.default_rng(0).uniform(-1, 1, (1892, 1892)).astype(np.float32)
    started = time.perf_counter()
    scores = sequence_scores(similarity, 10)
    # Typically ~0.1 s; the loose bound only catches a fall back to per-element Python loops.
    assert time.perf_counter() - started < 3.0
    assert scores.shape == similarity.shape and scores.dtype == np.float32
