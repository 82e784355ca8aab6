"""Sequence matching: hand-computed scores, offline == online, growing maps, no favourite on noise,
bad input."""
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
    # (3, 0) and (3, 1) reach before reference 0 and wrap round to the map's end, on three terms like
    # every other reference: (3, 0) takes S[3,0], S[2,4], S[1,3]; (3, 1) S[3,1], S[2,0], S[1,4].
    assert scores[3, 0] == pytest.approx((0.1 + 0.2 + 0.2) / 3)
    assert scores[3, 1] == pytest.approx((0.1 + 0.1 + 0.1) / 3)
    # (1, 4): S[1,4], S[0,3]; the start clips every sequence of query 1 to two queries alike.
    assert scores[1, 4] == pytest.approx((0.1 + 0.1) / 2)
    assert scores[1, 0] == pytest.approx((0.2 + 0.0) / 2)
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
    # Reference n: second[n] and first[n-1]; reference 0's predecessor (3, the map's end) was not in
    # the map at the first query, so reference 0 is not scored.
    np.testing.assert_allclose(scores, [-np.inf, (0.6 + 0.5) / 2, (0.2 + 0.2) / 2, (0.8 + 0.1) / 2], rtol=1e-6)
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


def test_noise_has_no_favourite_reference():
    """Pure-noise similarities: every reference, the map's first ones included, is as likely to come
    out on top as another. Scoring the first references on fewer terms put 37-44% of top-1s on the
    first 9 of 400."""
    rng = np.random.default_rng(0)
    length, size, trials = 10, 400, 30
    tops = np.concatenate([
        sequence_scores(rng.uniform(-1, 1, (size, size)).astype(np.float32), length).argmax(axis=1)[length - 1:]
        for _ in range(trials)])
    counts = np.bincount(tops, minlength=size)
    # The first 9 (whose sequences wrap round the map's end) within 4 binomial deviations of their share.
    share = 9 / size
    assert abs(counts[:9].sum() - share * len(tops)) < 4 * np.sqrt(len(tops) * share * (1 - share))
    # All references in ten blocks of 40: a chi-square test of equal counts (9 degrees of freedom;
    # 27.9 is its 99.9% quantile).
    blocks = counts.reshape(10, 40).sum(axis=1)
    expected = blocks.mean()
    assert ((blocks - expected) ** 2 / expected).sum() < 27.9


def test_the_newest_keyframes_of_a_growing_map_have_no_advantage():
    """Mapping mode adds a keyframe per frame here: older rows lack the newest references. Scoring
    those on the terms that exist made the newest reference top-1 about ten times its share."""
    rng = np.random.default_rng(1)
    matcher = SequenceMatcher(10)
    newest_on_top, expected = 0, 0.0
    for size in range(50, 1050):
        scores = matcher.push(rng.uniform(-1, 1, size).astype(np.float32))
        if size >= 60:
            newest_on_top += int(scores.argmax() == size - 1)
            expected += 1 / size
    assert newest_on_top <= 3 * expected


def test_a_loop_driven_twice_is_matched_at_the_start_of_its_second_lap():
    """The map is the first lap; the robot drives on into a second one. At the second lap's first L
    places the sequences reach back past reference 0 into the end of the first lap: they wrap round
    and find the places (they were not scored at all, so the first places could never match)."""
    rng = np.random.default_rng(3)
    places, length = 60, 10
    route = rng.normal(size=(places, 32)).astype(np.float32)
    laps = np.concatenate([route, route]) + rng.normal(scale=2.0, size=(2 * places, 32)).astype(np.float32)
    unit = lambda rows: rows / np.linalg.norm(rows, axis=1, keepdims=True)  # noqa: E731
    similarity = unit(laps) @ unit(route).T
    scores = sequence_scores(similarity, length)
    assert (similarity.argmax(axis=1) != np.tile(np.arange(places), 2)).any()  # single frames err (39%)
    np.testing.assert_array_equal(scores.argmax(axis=1)[length - 1:], np.tile(np.arange(places), 2)[length - 1:])
    matcher = SequenceMatcher(length)
    online = np.stack([matcher.push(row) for row in similarity])
    np.testing.assert_array_equal(online, scores)


def test_a_map_shorter_than_the_sequence_scores_no_reference():
    matcher = SequenceMatcher(4, velocities=(1.0,))
    for _ in range(3):
        scores = matcher.push(np.full(3, 0.5, dtype=np.float32))
    np.testing.assert_array_equal(scores, [0.5, 0.5, 0.5])  # offsets 0, 1, 2 wrap round a map of 3
    # Offset 3 would visit the map of 3 twice.
    assert (matcher.push(np.full(3, 0.5, dtype=np.float32)) == -np.inf).all()
