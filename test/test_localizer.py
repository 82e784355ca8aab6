import numpy as np
import pytest

from helpers import photo, write_tiny_checkpoint
from vl2spike_ros.core.encoder import DescriptorEncoder
from vl2spike_ros.errors import InputError
from vl2spike_ros.core.localizer import Localizer
from vl2spike_ros.core.place_map import Place, PlaceMap

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


def test_mapping_mode_adds_only_novel_frames(encoder):
    place_map = PlaceMap(encoder.dim, encoder.fingerprint)
    localizer = Localizer(encoder, place_map, mode="map", novelty_threshold=0.95)
    first = localizer.match_descriptor(unit_rows(1, encoder.dim, seed=5)[0], Place(place_id=0, source="a"))
    assert first.added_place_id == 0 and first.place_ids == []
    again = localizer.match_descriptor(unit_rows(1, encoder.dim, seed=5)[0], Place(place_id=1, source="b"))
    assert again.added_place_id is None and again.place_ids == [0]
    other = localizer.match_descriptor(unit_rows(1, encoder.dim, seed=6)[0], Place(place_id=1, source="c"))
    assert other.added_place_id == 1 and len(place_map) == 2
    assert place_map.places[1].source == "c"


def test_map_of_another_model_is_refused(encoder, tmp_path):
    other = DescriptorEncoder(write_tiny_checkpoint(tmp_path / "other.safetensors", seed=7))
    with pytest.raises(InputError, match="rebuild the map"):
        Localizer(encoder, map_of(other, unit_rows(3, other.dim)))


def test_empty_map_cannot_localise(encoder):
    with pytest.raises(InputError, match="empty map"):
        Localizer(encoder, PlaceMap(encoder.dim, encoder.fingerprint))
