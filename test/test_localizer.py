import numpy as np
import pytest

from helpers import photo, write_tiny_checkpoint
from vl2spike_ros.core.encoder import DescriptorEncoder
from vl2spike_ros.core.localizer import Localizer, MapUpdateError
from vl2spike_ros.core.place_map import Place, PlaceMap
from vl2spike_ros.errors import InputError

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "brick", "grass")


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    return DescriptorEncoder(write_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "s.safetensors"))


def unit_rows(count: int, dim: int, seed: int = 0) -> np.ndarray:
    rows = np.random.default_rng(seed).normal(size=(count, dim)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def map_of(encoder, descriptors) -> PlaceMap:
    place_map = PlaceMap(encoder.dim, encoder.fingerprint)
    place_map.add(descriptors)
    return place_map


def test_a_frame_finds_its_own_place(encoder):
    images = [photo(name, (64, 32)) for name in PHOTOS]
    localizer = Localizer(encoder, map_of(encoder, encoder.encode(images)), top_k=3)
    match = localizer.localize(images[2])
    assert match.place_ids[0] == 2
    assert len(match.place_ids) == len(match.scores) == 3
    assert match.scores == sorted(match.scores, reverse=True)
    assert match.accepted and match.latency_ms > 0 and match.query_index == 0
    assert localizer.localize(images[4]).query_index == 1


def test_threshold_decides_acceptance(encoder):
    descriptors = unit_rows(10, encoder.dim)
    localizer = Localizer(encoder, map_of(encoder, descriptors), top_k=1, match_threshold=0.99)
    assert localizer.match_descriptor(descriptors[3]).accepted
    assert not localizer.match_descriptor(unit_rows(1, encoder.dim, seed=9)[0]).accepted


def test_sequence_matching_recovers_a_route_single_frames_miss(encoder):
    references = unit_rows(30, encoder.dim, seed=1)
    localizer = Localizer(encoder, map_of(encoder, references), top_k=1, sequence_length=5)
    rng = np.random.default_rng(2)
    results = []
    for place in range(10, 20):
        noisy = references[place] + rng.normal(scale=0.12, size=encoder.dim).astype(np.float32)
        if place == 17:  # one frame that alone looks like another place
            noisy = references[3] * 1.0
        results.append(localizer.match_descriptor(noisy / np.linalg.norm(noisy)).place_ids[0])
    assert results[7] == 17


def test_sequence_matching_lists_only_references_it_could_score(encoder):
    references = unit_rows(3, encoder.dim, seed=1)
    localizer = Localizer(encoder, map_of(encoder, references), top_k=3, sequence_length=5)
    matches = [localizer.match_descriptor(references[place % 3]) for place in range(5)]
    # Three queries reach back two references, round the map of 3: every place is scored.
    assert sorted(matches[2].place_ids) == [0, 1, 2] and np.isfinite(matches[2].scores).all()
    assert matches[2].place_ids[0] == 2
    # Five reach back at least three (velocity 0.8: 0, 1, 2, 2, 3), round the whole map: none is.
    assert matches[4].place_ids == [] and not matches[4].accepted and matches[4].best_place is None


def test_sequence_matching_finds_the_start_of_a_loop_driven_twice(encoder):
    """The map is one lap of a loop; the robot drives it twice without a reset. At the first places
    of the second lap the sequences reach back past place 0 into the end of the first lap."""
    places, length = 30, 5
    references = unit_rows(places, encoder.dim, seed=1)
    localizer = Localizer(encoder, map_of(encoder, references), top_k=1, sequence_length=length)
    rng = np.random.default_rng(2)
    second_lap = []
    for lap in range(2):
        for place in range(places):
            noisy = references[place] + rng.normal(scale=0.12, size=encoder.dim).astype(np.float32)
            match = localizer.match_descriptor(noisy / np.linalg.norm(noisy))
            if lap == 1:
                second_lap.append(match.place_ids[0] if match.place_ids else None)
    assert second_lap == list(range(places))


def test_sequence_matching_searches_exactly_whatever_the_index(encoder):
    place_map = PlaceMap(encoder.dim, encoder.fingerprint, "hnsw")
    place_map.add(unit_rows(30, encoder.dim))
    assert Localizer(encoder, place_map, sequence_length=1).search_index == "hnsw"
    assert Localizer(encoder, place_map, sequence_length=3).search_index == "exact"


def test_mapping_mode_adds_only_novel_frames(encoder):
    place_map = PlaceMap(encoder.dim, encoder.fingerprint)
    localizer = Localizer(encoder, place_map, mode="map", novelty_threshold=0.95)
    first = localizer.match_descriptor(unit_rows(1, encoder.dim, seed=5)[0], "a", stamp=1.5)
    assert first.added_place_id == 0 and first.place_ids == [] and first.best_place is None
    again = localizer.match_descriptor(unit_rows(1, encoder.dim, seed=5)[0], "b")
    assert again.added_place_id is None and again.place_ids == [0]
    assert again.best_place == Place(place_id=0, source="a", frame=0, stamp=1.5)
    other = localizer.match_descriptor(unit_rows(1, encoder.dim, seed=6)[0], "c", stamp=2.0)
    assert other.added_place_id == 1 and localizer.map_size == 2
    assert place_map.places[1] == Place(place_id=1, source="c", frame=2, stamp=2.0)


def test_best_place_and_pose_come_with_the_match(encoder, tmp_path):
    descriptors = unit_rows(4, encoder.dim, seed=3)
    place_map = PlaceMap(encoder.dim, encoder.fingerprint)
    poses = [[float(i), 0.0, 0.0, 0.0, 0.0, 0.0, 1.0] for i in range(4)]
    place_map.add(descriptors, [Place(place_id=i, source=f"p{i}", pose=poses[i]) for i in range(4)])
    localizer = Localizer(encoder, place_map, top_k=2, match_threshold=0.5)
    match = localizer.match_descriptor(descriptors[2])
    assert match.best_place.source == "p2" and match.pose == poses[2]
    rejected = localizer.match_descriptor(unit_rows(1, encoder.dim, seed=11)[0])
    assert not rejected.accepted and rejected.pose is None and rejected.best_place is not None
    assert localizer.save_map(tmp_path / "saved") == 4
    assert PlaceMap.load(tmp_path / "saved").places[3].pose == poses[3]


def test_an_approximate_index_never_reports_place_minus_one(encoder):
    # IVF-PQ probing 1 of 16 lists sees about 300/16 places, far fewer than top_k = 100: FAISS pads
    # its answer with id -1, which once reached metadata as places[-1], the last place.
    place_map = PlaceMap(encoder.dim, encoder.fingerprint, "ivfpq", nlist=16, nprobe=1)
    descriptors = unit_rows(300, encoder.dim, seed=4)
    place_map.add(descriptors)
    _, raw_ids = place_map.search(descriptors[:1], 100)
    assert (raw_ids < 0).any()  # the situation under test really arises
    match = Localizer(encoder, place_map, top_k=100).match_descriptor(descriptors[0])
    assert 0 < len(match.place_ids) < 100 and min(match.place_ids) >= 0
    assert len(match.scores) == len(match.place_ids) and np.isfinite(match.scores).all()
    assert match.best_place.place_id == match.place_ids[0] != len(place_map) - 1


def test_sequence_starts_afresh_after_skipped_frames(encoder):
    references = unit_rows(40, encoder.dim, seed=1)
    length = 5

    def scores_after(first: int, skipped_before_last: int) -> list[float]:
        localizer = Localizer(encoder, map_of(encoder, references), top_k=40, sequence_length=length)
        for place in range(first, first + length - 1):
            localizer.match_descriptor(references[place])
        last = first + length - 1 + skipped_before_last
        match = localizer.match_descriptor(references[last], frames_skipped=skipped_before_last)
        return dict(zip(match.place_ids, match.scores))[last]

    # Without a gap the full diagonal scores 1.0; after 3 dropped frames the old queries lie on
    # another diagonal, so only a new sequence scores the frame itself (1.0) rather than a blend.
    assert scores_after(10, 0) == pytest.approx(1.0)
    assert scores_after(10, 3) == pytest.approx(1.0)
    fresh = Localizer(encoder, map_of(encoder, references), top_k=40, sequence_length=length)
    localizer = Localizer(encoder, map_of(encoder, references), top_k=40, sequence_length=length)
    for place in range(10, 14):
        localizer.match_descriptor(references[place])
    after_gap = localizer.match_descriptor(references[20], frames_skipped=6)
    assert after_gap.place_ids == fresh.match_descriptor(references[20]).place_ids
    assert after_gap.query_index == 4  # skipped frames were never queries


def test_restart_forgets_history_and_numbers_queries_from_zero(encoder):
    references = unit_rows(20, encoder.dim, seed=1)
    localizer = Localizer(encoder, map_of(encoder, references), top_k=3, sequence_length=3)
    localizer.match_descriptor(references[7])  # a warm-up frame from elsewhere on the route
    localizer.restart()
    fresh = Localizer(encoder, map_of(encoder, references), top_k=3, sequence_length=3)
    for place in (2, 3, 4):
        got, expected = localizer.match_descriptor(references[place]), fresh.match_descriptor(references[place])
        assert (got.query_index, got.place_ids, got.scores) == (expected.query_index, expected.place_ids,
                                                                expected.scores)


def test_a_keyframe_the_map_refuses_is_a_map_error(encoder):
    """A broken descriptor (NaN, e.g. from a diverged model) is refused by the map: a map error."""
    place_map = PlaceMap(encoder.dim, encoder.fingerprint, "flat")
    localizer = Localizer(encoder, place_map, mode="map")
    descriptor = unit_rows(1, encoder.dim)[0]
    descriptor[0] = np.nan
    with pytest.raises(MapUpdateError, match="refused a keyframe"):
        localizer.match_descriptor(descriptor, "frame")
    assert len(place_map) == 0


def test_a_keyframe_that_trains_the_index_says_so(encoder):
    place_map = PlaceMap(encoder.dim, encoder.fingerprint, "ivfpq")
    localizer = Localizer(encoder, place_map, mode="map", novelty_threshold=0.99)
    descriptors = unit_rows(512, encoder.dim, seed=7)
    notes = [localizer.match_descriptor(descriptor).index_note for descriptor in descriptors]
    assert len(place_map) == 512
    assert {index: note for index, note in enumerate(notes) if note} == {
        255: "map index ivfpq trained on 256 places: 6 lists, 6 probed per search",
        511: "map index ivfpq retrained on 512 places: 13 lists, 13 probed per search"}


def test_mapping_starts_from_an_empty_map_with_every_index_kind(encoder, tmp_path):
    """IVF-PQ included: an empty ivfpq map keeps keyframes exactly until it has enough to train."""
    checkpoint = encoder.info.path
    for kind in ("flat", "hnsw", "ivfpq", "fastscan"):
        localizer = Localizer.from_paths(checkpoint, tmp_path / kind, index_kind=kind, mode="map")
        assert localizer.map_size == 0
        localizer.add_keyframe(unit_rows(1, encoder.dim)[0], "first", None)
        assert localizer.map_size == 1


def test_centring_matches_a_traverse_that_shares_an_offset(encoder):
    """Queries that all carry one offset (another season) find their places once each traverse is
    centred on its own mean: the running mean of the queries takes the offset out as it learns it.
    The first query is centred on the map's mean and is well-defined."""
    rng = np.random.default_rng(3)
    places = unit_rows(200, encoder.dim, seed=4) * 0.3 + unit_rows(1, encoder.dim, seed=5)
    places /= np.linalg.norm(places, axis=1, keepdims=True)
    offset = unit_rows(1, encoder.dim, seed=6)[0] * 1.5
    queries = places + offset + rng.normal(0.0, 0.02, places.shape)
    queries = (queries / np.linalg.norm(queries, axis=1, keepdims=True)).astype(np.float32)
    place_map = map_of(encoder, places)
    assert np.allclose(place_map.descriptor_mean, places.mean(axis=0), atol=1e-6)
    hits = {}
    for centre in (False, True):
        localizer = Localizer(encoder, place_map, top_k=1, centre=centre)
        hits[centre] = np.array([localizer.match_descriptor(q).place_ids[0] == i for i, q in enumerate(queries)])
    assert hits[True].sum() > 5 * hits[False].sum()
    assert hits[True][100:].mean() >= 0.75 > hits[False][100:].mean()


def test_centring_needs_a_fixed_map(encoder):
    localizer = Localizer(encoder, map_of(encoder, unit_rows(5, encoder.dim)), centre=True)
    with pytest.raises(InputError, match="fixed map"):
        localizer.set_mode("map")
