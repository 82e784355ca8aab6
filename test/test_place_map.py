"""PlaceMap on real FAISS indexes and real files: search, validation, save/load, atomic replacement."""
import json
import os
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from vl2spike_ros.errors import InputError
from vl2spike_ros.core.place_map import INDEX_KINDS, Place, PlaceMap
from vl2spike_ros.core.place_map.index_factory import AUTO_FLAT_MAX_PLACES, index_kind_for

REPO_ROOT = Path(__file__).resolve().parents[1]
FINGERPRINT = "a1b2c3d4e5f6a7b8c9d0" * 3
# ivfpq needs >= 256 vectors for its first add (8-bit PQ codebooks).
KIND_SIZES = {"flat": (40, 16), "hnsw": (40, 16), "ivfpq": (300, 32), "fastscan": (300, 32)}


def unit_vectors(count: int, dim: int, seed: int = 0) -> np.ndarray:
    vectors = np.random.default_rng(seed).standard_normal((count, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def built_map(kind: str, seed: int = 0, fingerprint: str = FINGERPRINT) -> PlaceMap:
    count, dim = KIND_SIZES[kind]
    place_map = PlaceMap(dim, fingerprint, kind)
    places = [
        Place(place_id=i, source="route.bag:/camera", frame=100 + i, stamp=0.5 * i,
              pose=[float(i), 2.0, 0.0, 0.0, 0.0, 0.0, 1.0])
        for i in range(count)
    ]
    place_map.add(unit_vectors(count, dim, seed), places)
    return place_map


def test_flat_search_finds_each_place_itself_first():
    vectors = unit_vectors(20, 8)
    place_map = PlaceMap(8, FINGERPRINT)
    assert place_map.add(vectors[:12]) == list(range(12))
    assert place_map.add(vectors[12:]) == list(range(12, 20))
    scores, ids = place_map.search(vectors, k=3)
    assert scores.dtype == np.float32 and ids.dtype == np.int64
    assert scores.shape == ids.shape == (20, 3)
    np.testing.assert_array_equal(ids[:, 0], np.arange(20))
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-5)
    assert np.all(np.diff(scores, axis=1) <= 0)
    assert len(place_map) == 20 and place_map.dim == 8 and place_map.index_kind == "flat"
    assert place_map.places[5] == Place(place_id=5)
    assert not place_map.has_poses


def test_k_larger_than_map_is_refused():
    place_map = PlaceMap(8, FINGERPRINT)
    place_map.add(unit_vectors(5, 8))
    with pytest.raises(InputError, match="k=6 but the map holds 5 places"):
        place_map.search(unit_vectors(1, 8), k=6)
    with pytest.raises(InputError, match="k=1 but the map holds 0 places"):
        PlaceMap(8, FINGERPRINT, "hnsw").search(unit_vectors(1, 8), k=1)


@pytest.mark.parametrize(
    "bad, message",
    [
        (unit_vectors(3, 8) * 2.0, "L2-normalised"),
        (unit_vectors(3, 9), r"shape \[N, 8\]"),
        (unit_vectors(8, 1)[:, 0], r"shape \[N, 8\]"),
        (np.full((2, 8), np.nan), "NaN"),
        ([["a"] * 8], "float32"),
    ],
)
def test_bad_descriptors_are_refused_and_leave_the_map_unchanged(bad, message):
    place_map = PlaceMap(8, FINGERPRINT)
    place_map.add(unit_vectors(2, 8))
    with pytest.raises(InputError, match=message):
        place_map.add(bad)
    with pytest.raises(InputError, match=message):
        place_map.search(bad, k=1)
    assert len(place_map) == 2


def test_place_metadata_is_checked():
    place_map = PlaceMap(8, FINGERPRINT)
    with pytest.raises(InputError, match="place_id=3 would be stored as id 0"):
        place_map.add(unit_vectors(1, 8), [Place(place_id=3)])
    with pytest.raises(InputError, match="2 descriptors but 1 places"):
        place_map.add(unit_vectors(2, 8), [Place(place_id=0)])
    with pytest.raises(InputError, match="pose must be 7"):
        Place(place_id=0, pose=[1.0, 2.0])
    with pytest.raises(InputError, match="frame must be an integer"):
        Place(place_id=0, frame=1.5)
    assert len(place_map) == 0
    place = Place(place_id=4, source="images-00004.png", frame=4, stamp=1, pose=[0, 0, 0, 0, 0, 0, 1])
    assert Place.from_json(json.loads(json.dumps(place.to_json()))) == place


def test_bad_index_options_are_refused():
    with pytest.raises(InputError, match="index kind must be one of"):
        PlaceMap(8, FINGERPRINT, "lsh")
    with pytest.raises(InputError, match=r"does not take options \['M'\]"):
        PlaceMap(8, FINGERPRINT, "flat", M=16)
    with pytest.raises(InputError, match="m=3 must divide the descriptor dim 8"):
        PlaceMap(8, FINGERPRINT, "ivfpq", m=3)
    with pytest.raises(InputError, match=r"dim must be an integer in \[1, 65536\]"):
        PlaceMap(0, FINGERPRINT)


def test_ivfpq_started_empty_takes_one_keyframe_at_a_time_and_trains_when_it_can(tmp_path):
    """Mapping mode: an ivfpq map starts empty; its places sit in a flat index until 256 can train IVF-PQ."""
    place_map = PlaceMap(16, FINGERPRINT, "ivfpq")
    vectors = unit_vectors(300, 16, seed=4)
    for row in range(255):
        assert place_map.add(vectors[row:row + 1]) == [row]
    assert place_map.index_structure == "flat"
    scores, ids = place_map.search(vectors[:3], k=1)
    np.testing.assert_array_equal(ids[:, 0], [0, 1, 2])  # exact while flat
    place_map.save(tmp_path / "early")
    early = PlaceMap.load(tmp_path / "early")
    assert (early.index_kind, early.index_structure, len(early)) == ("ivfpq", "flat", 255)

    assert early.add(vectors[255:256]) == [255]  # the 256th trains IVF-PQ on all of them
    assert early.index_structure == "ivfpq" and early.index_options["nlist"] is not None
    assert early.add(vectors[256:]) == list(range(256, 300))
    _, found = early.search(vectors[:50], k=5)
    assert np.mean(found[:, 0] == np.arange(50)) > 0.8  # approximate now, but finds itself
    early.save(tmp_path / "trained")
    assert PlaceMap.load(tmp_path / "trained").index_structure == "ivfpq"


def test_ivfpq_grown_one_keyframe_at_a_time_retrains_as_it_grows(tmp_path):
    """Trained once at 256 places, a map grown to Nordland's 1,892 kept 6 lists, every one probed:
    an exhaustive scan. Retraining at each doubling (512, 1024) chooses the lists from the map again."""
    vectors = unit_vectors(1892, 32, seed=5)
    batch = PlaceMap(32, FINGERPRINT, "ivfpq")
    batch.add(vectors)
    assert (batch.trained_count, batch.index_options["nlist"]) == (1892, 43)
    grown = PlaceMap(32, FINGERPRINT, "ivfpq")
    trainings = []
    for row in range(len(vectors)):
        grown.add(vectors[row:row + 1])
        if grown.trained_count != (trainings[-1] if trainings else 0):
            trainings.append(grown.trained_count)
    assert trainings == [256, 512, 1024]
    options = grown.index_options
    assert options["nlist"] == 26 and options["nlist"] >= batch.index_options["nlist"] / 2
    assert options["nprobe"] == 16 < options["nlist"]  # a search probes some lists, not all
    _, found = grown.search(vectors[:100], k=1)
    assert np.mean(found[:, 0] == np.arange(100)) > 0.9


def test_ivfpq_retraining_keeps_given_options_and_survives_save_and_load(tmp_path):
    vectors = unit_vectors(1300, 32, seed=6)
    chosen = PlaceMap(32, FINGERPRINT, "ivfpq")
    chosen.add(vectors[:600])  # trained on 600 places: nlist 15
    chosen.set_search_options(nprobe=4)
    chosen.save(tmp_path / "chosen")
    assert json.loads((tmp_path / "chosen" / "map.json").read_text())["index_training"] == {
        "count": 600, "options_from_data": ["m", "nlist"]}
    loaded = PlaceMap.load(tmp_path / "chosen")
    assert (loaded.trained_count, loaded.index_options["nlist"]) == (600, 15)
    loaded.add(vectors[600:1199])
    assert loaded.trained_count == 600
    loaded.add(vectors[1199:1200])  # twice 600: the lists are chosen again, the nprobe asked for kept
    assert (loaded.trained_count, loaded.index_options["nlist"], loaded.index_options["nprobe"]) == (1200, 30, 4)

    fixed = PlaceMap(32, FINGERPRINT, "ivfpq", nlist=8)
    for start in range(0, 1300, 100):
        fixed.add(vectors[start:start + 100])
    assert (fixed.trained_count, fixed.index_options["nlist"]) == (1200, 8)


def test_a_map_json_with_a_bad_training_record_is_refused(tmp_path):
    built_map("ivfpq").save(tmp_path / "map")
    metadata = json.loads((tmp_path / "map" / "map.json").read_text())
    for training in ({"count": 301, "options_from_data": []}, {"count": 300, "options_from_data": ["M"]}, "all"):
        (tmp_path / "map" / "map.json").write_text(json.dumps({**metadata, "index_training": training}))
        with pytest.raises(InputError, match=r"map.json index_training must hold count in \[1, 300\]"):
            PlaceMap.load(tmp_path / "map")


def test_a_map_records_its_descriptor_mean_and_refuses_one_that_is_not(tmp_path):
    place_map = built_map("flat")
    place_map.save(tmp_path / "map")
    metadata = json.loads((tmp_path / "map" / "map.json").read_text())
    assert np.allclose(metadata["descriptor_mean"], place_map.descriptors.mean(axis=0), atol=1e-6)
    assert np.allclose(PlaceMap.load(tmp_path / "map").descriptor_mean, metadata["descriptor_mean"])
    shifted = [value + 0.01 for value in metadata["descriptor_mean"]]
    for mean, reason in ((shifted, "is not the mean of descriptors.npy"), (shifted[:-1], "must be a list of")):
        (tmp_path / "map" / "map.json").write_text(json.dumps({**metadata, "descriptor_mean": mean}))
        with pytest.raises(InputError, match=f"descriptor_mean {reason}"):
            PlaceMap.load(tmp_path / "map")
    del metadata["descriptor_mean"]  # saved before maps recorded it
    (tmp_path / "map" / "map.json").write_text(json.dumps(metadata))
    assert len(PlaceMap.load(tmp_path / "map")) == len(place_map)


def test_ivfpq_nprobe_changes_without_rebuilding_and_probing_more_lists_agrees_more(tmp_path):
    """Revisits (places perturbed to cosine ~0.8) miss their place when its IVF list is not probed."""
    places = unit_vectors(3000, 32, seed=3)
    rng = np.random.default_rng(4)
    queries = places[:200] + rng.normal(scale=0.08, size=(200, 32)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    exact_top1 = np.argmax(queries @ places.T, axis=1)
    place_map = PlaceMap(32, FINGERPRINT, "ivfpq", nlist=64)
    place_map.add(places)

    def agreement(nprobe: int) -> float:
        place_map.set_search_options(nprobe=nprobe)
        return float(np.mean(place_map.search(queries, 5)[1][:, 0] == exact_top1))

    one_list, every_list = agreement(1), agreement(64)
    assert one_list < 0.9 and every_list == 1.0  # every list probed, re-ranked exactly: exact search
    scores, ids = place_map.search(queries, 5)
    assert np.allclose(scores, np.take_along_axis(queries @ places.T, ids, axis=1), atol=1e-5)
    place_map.set_search_options(rerank=1)  # a shortlist of one: the product-quantised ranking alone
    assert np.mean(place_map.search(queries, 1)[1][:, 0] == exact_top1) < 1.0
    place_map.set_search_options(rerank=32)
    place_map.set_search_options(nprobe=1000)  # more lists than there are: all of them
    assert place_map.index_options["nprobe"] == 64
    place_map.set_search_options(nprobe=8)
    place_map.save(tmp_path / "map")
    loaded = PlaceMap.load(tmp_path / "map")
    assert loaded.index_options["nprobe"] == 8
    assert np.array_equal(loaded.search(queries, 5)[1], place_map.search(queries, 5)[1])


def test_fastscan_sizes_itself_from_the_map_and_probing_more_lists_agrees_more(tmp_path):
    """About 4 sqrt(count) lists (at most count/39), one byte of code per two dimensions, a tenth of
    the lists probed; every place's own descriptor finds it once all lists are probed."""
    descriptors = unit_vectors(4000, 32, seed=4)
    place_map = PlaceMap(32, FINGERPRINT, "fastscan")
    place_map.add(descriptors)
    assert place_map.index_structure == "fastscan"
    assert place_map.index_options == {"nlist": 102, "m": 16, "nprobe": 16, "rerank": 32}
    queries = unit_vectors(200, 32, seed=5) * 0.8 + descriptors[:200]
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    exact = np.argmax(queries @ descriptors.T, axis=1)
    agreement = {}
    for nprobe in (1, 16, 102):
        place_map.set_search_options(nprobe=nprobe)
        agreement[nprobe] = float(np.mean(place_map.search(queries, 1)[1][:, 0] == exact))
    assert agreement[1] < agreement[16] < agreement[102] == 1.0
    place_map.save(tmp_path / "map")
    assert PlaceMap.load(tmp_path / "map").search(queries, 1)[1][:, 0].tolist() == exact.tolist()


def test_auto_index_is_exact_for_small_maps_and_ivfpq_for_large_ones():
    assert index_kind_for(AUTO_FLAT_MAX_PLACES) == "flat"
    assert index_kind_for(AUTO_FLAT_MAX_PLACES + 1) == "ivfpq"


def test_fastscan_block_layout_edits_are_refused(tmp_path):
    """The walk checks the block layout that sizes fast scan's code arrays, not only length fields:
    vectors per block (bbs, stored before the product quantiser) and the lists' own copy of it."""
    built_map("fastscan").save(tmp_path / "map")
    as_format_1(tmp_path / "map")
    index_path = tmp_path / "map" / "index.faiss"
    original = index_path.read_bytes()
    quantiser = original.index(struct.pack("<QQQ", 32, 16, 4))  # the product quantiser: d, M, nbits
    # bbs (int32) sits before M2 (uint64), implem (int32) and qbs2 (uint64).
    for offset, size in ((quantiser - 24, 4), (original.index(b"ilbl") + 4 + 16, 8)):
        data = bytearray(original)
        data[offset:offset + size] = (64).to_bytes(size, "little")
        index_path.write_bytes(bytes(data))
        with pytest.raises(InputError, match="index.faiss is truncated or corrupt.*blocks? (lists )?of 64"):
            PlaceMap.load(tmp_path / "map")


@pytest.mark.parametrize("kind", ["ivfpq", "fastscan"])
def test_an_inverted_list_id_beyond_the_map_is_refused(kind, tmp_path):
    """A place id in the lists is what search hands back and re-ranking indexes the map with; one
    edited to name no place made search raise IndexError on every query that reached it."""
    place_map = built_map(kind)
    place_map.save(tmp_path / "map")
    as_format_1(tmp_path / "map")
    index_path = tmp_path / "map" / "index.faiss"
    data = bytearray(index_path.read_bytes())
    last_id = struct.pack("<q", len(place_map) - 1)
    offset = data.rindex(last_id)  # the highest id is the last 8 bytes that spell it
    data[offset:offset + 8] = struct.pack("<q", 4_861_092_669)
    index_path.write_bytes(bytes(data))
    with pytest.raises(InputError, match="index.faiss is truncated or corrupt.*place ids outside"):
        PlaceMap.load(tmp_path / "map")


def test_random_edits_of_a_fastscan_index_are_refused_or_harmless(tmp_path):
    """Eight random bytes written anywhere in a fast-scan index.faiss (format 1: no hashes to catch
    them first): the map is refused with the one-line error, or, where the edit hit codes or
    centroids, it loads and answers. FAISS never sees a length the walk did not check."""
    built_map("fastscan").save(tmp_path / "map")
    as_format_1(tmp_path / "map")
    index_path = tmp_path / "map" / "index.faiss"
    original = index_path.read_bytes()
    rng = np.random.default_rng(11)
    refused = 0
    for _ in range(60):
        data = bytearray(original)
        offset = int(rng.integers(0, len(data) - 8))
        data[offset:offset + 8] = rng.integers(0, 256, 8, dtype=np.uint8).tobytes()
        index_path.write_bytes(bytes(data))
        try:
            loaded = PlaceMap.load(tmp_path / "map")
        except InputError as error:
            assert "index.faiss is truncated or corrupt" in str(error)
            refused += 1
        else:
            assert loaded.search(loaded.descriptors[:2], 2)[1].shape == (2, 2)
    assert refused > 0


def test_search_options_are_validated_and_a_refusal_changes_nothing():
    place_map = built_map("hnsw")
    place_map.set_search_options(ef_search=128)
    assert place_map.index_options["ef_search"] == 128
    for bad, message in [({"nprobe": 4}, "no search-time options ['nprobe']"), ({"M": 8}, "no search-time"),
                         ({"ef_search": 0}, "ef_search must be a positive integer"),
                         ({"ef_search": None}, "need values")]:
        with pytest.raises(InputError, match=message.replace("[", r"\[")):
            place_map.set_search_options(**bad)
    assert place_map.index_options["ef_search"] == 128
    with pytest.raises(InputError, match="flat has no search-time options"):
        built_map("flat").set_search_options(nprobe=4)


@pytest.mark.parametrize("kind", INDEX_KINDS)
def test_similarities_are_exact_for_every_index_kind(kind):
    place_map = built_map(kind)
    queries = unit_vectors(4, place_map.dim, seed=7)
    expected = queries @ place_map.descriptors.T
    np.testing.assert_allclose(place_map.similarities(queries), expected, atol=1e-6)
    assert place_map.similarities(queries).shape == (4, len(place_map))


@pytest.mark.parametrize("kind", INDEX_KINDS)
def test_save_load_round_trip(kind, tmp_path):
    place_map = built_map(kind)
    queries = unit_vectors(5, place_map.dim, seed=3)
    scores, ids = place_map.search(queries, k=4)
    place_map.save(tmp_path / "map")
    assert sorted(p.name for p in (tmp_path / "map").iterdir()) == [
        "descriptors.npy", "index.faiss", "map.json", "places.json"]
    assert [p.name for p in tmp_path.iterdir()] == ["map"]  # no staging or backup left behind
    metadata = json.loads((tmp_path / "map" / "map.json").read_text())
    assert metadata["metric"] == "inner_product" and metadata["count"] == len(place_map)
    assert metadata["index_kind"] == kind and metadata["format_version"] == 2
    assert metadata["index_structure"] == kind

    loaded = PlaceMap.load(tmp_path / "map", expected_fingerprint=FINGERPRINT, expected_dim=place_map.dim)
    assert (len(loaded), loaded.dim, loaded.fingerprint, loaded.index_kind) == (
        len(place_map), place_map.dim, FINGERPRINT, kind)
    assert loaded.places == place_map.places and loaded.has_poses
    assert loaded.index_options == place_map.index_options
    loaded_scores, loaded_ids = loaded.search(queries, k=4)
    np.testing.assert_array_equal(loaded_ids, ids)
    np.testing.assert_allclose(loaded_scores, scores, atol=1e-6)
    np.testing.assert_array_equal(loaded.descriptors, place_map.descriptors)
    # A loaded map keeps growing (mapping mode) with ids continuing where it stopped.
    assert loaded.add(unit_vectors(1, place_map.dim, seed=9)) == [len(place_map)]


def test_reindexed_keeps_places_and_descriptors():
    flat = built_map("flat")
    hnsw = flat.reindexed("hnsw", M=8)
    assert hnsw.index_kind == "hnsw" and hnsw.places == flat.places
    np.testing.assert_array_equal(hnsw.descriptors, flat.descriptors)
    np.testing.assert_array_equal(hnsw.search(flat.descriptors, k=1)[1][:, 0], np.arange(len(flat)))


def test_fingerprint_and_dim_mismatch_are_refused(tmp_path):
    built_map("flat").save(tmp_path / "map")
    other = "ffff0000ffff0000ffff"
    with pytest.raises(InputError) as error:
        PlaceMap.load(tmp_path / "map", expected_fingerprint=other)
    assert str(error.value) == (
        f"map {tmp_path / 'map'} was built with model {FINGERPRINT[:12]} but the encoder is "
        f"{other[:12]}; rebuild the map"
    )
    with pytest.raises(InputError, match=r"holds 16-dim descriptors but the encoder makes 32-dim"):
        PlaceMap.load(tmp_path / "map", expected_dim=32)


@pytest.mark.parametrize("kind", INDEX_KINDS)
def test_truncated_index_is_refused_naming_it(kind, tmp_path):
    built_map(kind).save(tmp_path / "map")
    index_path = tmp_path / "map" / "index.faiss"
    index_path.write_bytes(index_path.read_bytes()[: index_path.stat().st_size // 2])
    with pytest.raises(InputError, match=r"map .*map: index.faiss is truncated or corrupt"):
        PlaceMap.load(tmp_path / "map")


def test_incomplete_or_inconsistent_maps_are_refused(tmp_path):
    map_dir = tmp_path / "map"
    with pytest.raises(InputError, match="does not exist"):
        PlaceMap.load(map_dir)
    built_map("flat").save(map_dir)

    (map_dir / "places.json").rename(tmp_path / "places.json")
    with pytest.raises(InputError, match="incomplete: missing places.json"):
        PlaceMap.load(map_dir)
    places_text = (tmp_path / "places.json").read_text()
    places = json.loads(places_text)
    (map_dir / "places.json").write_text(json.dumps(places[:-1]))
    with pytest.raises(InputError, match="places.json is truncated or corrupt: .* bytes but map.json records"):
        PlaceMap.load(map_dir)
    (map_dir / "places.json").write_text(places_text.replace('"frame": 100', '"frame": 900'))
    with pytest.raises(InputError, match="places.json is corrupt or was modified: its sha256"):
        PlaceMap.load(map_dir)
    (map_dir / "places.json").write_text(places_text)

    metadata = json.loads((map_dir / "map.json").read_text())
    (map_dir / "map.json").write_text(json.dumps({**metadata, "count": 41}))
    with pytest.raises(InputError, match="index.faiss is truncated or corrupt.*40 vectors but map.json says 41"):
        PlaceMap.load(map_dir)
    (map_dir / "map.json").write_text(json.dumps({**metadata, "format_version": 99}))
    with pytest.raises(InputError, match="format_version 99"):
        PlaceMap.load(map_dir)
    (map_dir / "map.json").write_text("{not json")
    with pytest.raises(InputError, match="cannot read map.json"):
        PlaceMap.load(map_dir)


def test_save_replaces_an_old_map_but_not_other_directories(tmp_path):
    built_map("flat", seed=1).save(tmp_path / "map")
    built_map("hnsw", seed=2).save(tmp_path / "map")
    assert PlaceMap.load(tmp_path / "map").index_kind == "hnsw"
    assert [p.name for p in tmp_path.iterdir()] == ["map"]

    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "holiday.png").write_bytes(b"keep me")
    with pytest.raises(InputError, match="not a map of vl2spike .*holiday.png.*; refusing to replace it"):
        built_map("flat").save(tmp_path / "photos")
    assert (tmp_path / "photos" / "holiday.png").read_bytes() == b"keep me"

    # A folder that merely holds a file called map.json (and a src/ folder) is not a map either.
    project = tmp_path / "project"
    (project / "src").mkdir(parents=True)
    (project / "src" / "main.py").write_text("print('keep me')")
    (project / "map.json").write_text("{}")
    with pytest.raises(InputError, match="not a map of vl2spike .*src.*; refusing to replace it"):
        built_map("flat").save(project)
    map_dir = tmp_path / "map"
    (map_dir / "map.json").write_text('{"format_version": 2}')  # the right files, a foreign map.json
    with pytest.raises(InputError, match="its map.json is not one vl2spike writes"):
        built_map("flat").save(map_dir)
    assert (project / "src" / "main.py").read_text() == "print('keep me')"


def as_format_1(map_dir: Path) -> None:
    """Rewrite a saved map's map.json as format 1 wrote it (no file sizes or hashes)."""
    metadata = json.loads((map_dir / "map.json").read_text())
    for key in ("files", "index_structure", "index_training"):
        del metadata[key]
    (map_dir / "map.json").write_text(json.dumps({**metadata, "format_version": 1}))


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivfpq"])
def test_format_1_maps_still_load(kind, tmp_path):
    place_map = built_map(kind)
    place_map.save(tmp_path / "map")
    as_format_1(tmp_path / "map")
    loaded = PlaceMap.load(tmp_path / "map")
    np.testing.assert_array_equal(loaded.descriptors, place_map.descriptors)
    assert loaded.search(place_map.descriptors[:3], k=2)[1].tolist() == place_map.search(
        place_map.descriptors[:3], k=2)[1].tolist()


@pytest.mark.parametrize("kind, field_offset", [("flat", 37), ("hnsw", 37), ("ivfpq", 53 + 37),
                                                ("fastscan", 53 + 37)])
def test_index_length_field_edit_is_refused_before_faiss_allocates(kind, field_offset, tmp_path):
    """An 8-byte edit of a length field made FAISS allocate 12.9 GB; now the walk refuses it first.

    Format 1 (no hashes) so the edit reaches the index check; the message names the field's claim,
    which only the walk in index_file makes (FAISS never ran)."""
    built_map(kind).save(tmp_path / "map")
    as_format_1(tmp_path / "map")
    index_path = tmp_path / "map" / "index.faiss"
    data = bytearray(index_path.read_bytes())
    data[field_offset:field_offset + 8] = (3_200_000_000).to_bytes(8, "little")
    index_path.write_bytes(bytes(data))
    with pytest.raises(InputError, match="index.faiss is truncated or corrupt.*claims 3200000000 items"):
        PlaceMap.load(tmp_path / "map")


def test_map_json_that_lies_about_dim_or_kind_is_refused(tmp_path):
    built_map("flat").save(tmp_path / "map")
    as_format_1(tmp_path / "map")
    metadata = json.loads((tmp_path / "map" / "map.json").read_text())
    (tmp_path / "map" / "map.json").write_text(json.dumps({**metadata, "dim": 1_000_000}))
    with pytest.raises(InputError, match=r"dim must be an integer in \[1, 65536\]"):
        PlaceMap.load(tmp_path / "map")
    (tmp_path / "map" / "map.json").write_text(json.dumps({**metadata, "index_kind": "hnsw",
                                                           "index_options": {}}))
    with pytest.raises(InputError, match="structure b'IxFI' where b'IHNf' was expected"):
        PlaceMap.load(tmp_path / "map")


def test_deeply_nested_places_json_is_one_clear_error(tmp_path):
    built_map("flat").save(tmp_path / "map")
    as_format_1(tmp_path / "map")
    (tmp_path / "map" / "places.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(InputError, match="places.json: JSON nested too deeply"):
        PlaceMap.load(tmp_path / "map")


def test_failed_swap_rolls_back_to_the_old_map(tmp_path, monkeypatch):
    built_map("flat", seed=1).save(tmp_path / "map")
    old_descriptors = PlaceMap.load(tmp_path / "map").descriptors.copy()
    real_rename = os.rename

    def rename_failing_on_staging(source, destination):
        if str(source).endswith(".saving"):
            raise OSError("disk went away")
        real_rename(source, destination)

    monkeypatch.setattr(os, "rename", rename_failing_on_staging)
    with pytest.raises(OSError, match="disk went away"):
        built_map("flat", seed=2).save(tmp_path / "map")
    monkeypatch.setattr(os, "rename", real_rename)
    np.testing.assert_array_equal(PlaceMap.load(tmp_path / "map").descriptors, old_descriptors)
    assert [p.name for p in tmp_path.iterdir()] == ["map"]


# The child saves a new map over the old one and is killed (os._exit, no clean-up) at one point.
CRASHING_SAVE = textwrap.dedent(
    """
    import os, shutil, sys
    sys.path.insert(0, sys.argv[3])
    from test_place_map import built_map

    crash_point, target = sys.argv[1], sys.argv[2]
    real_rename, real_rmtree, renames = os.rename, shutil.rmtree, []

    def rename(source, destination):
        renames.append(source)
        if crash_point == f"rename{len(renames)}":
            os._exit(9)
        real_rename(source, destination)

    def rmtree(path, *args, **kwargs):
        if crash_point == "delete_previous" and str(path).endswith(".previous"):
            os._exit(9)
        real_rmtree(path, *args, **kwargs)

    os.rename, shutil.rmtree = rename, rmtree
    built_map("flat", seed=2).save(target)
    """
)


@pytest.mark.parametrize(
    "crash_point, survivor_seed",
    [("rename1", 1), ("rename2", 1), ("delete_previous", 2)],
    ids=["after-write-before-swap", "between-renames", "before-deleting-old"],
)
def test_killed_save_leaves_a_whole_map(crash_point, survivor_seed, tmp_path):
    target = tmp_path / "map"
    built_map("flat", seed=1).save(target)
    environment = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", CRASHING_SAVE, crash_point, str(target), str(Path(__file__).parent)],
        env=environment, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 9, result.stderr

    survivor = PlaceMap.load(target, expected_fingerprint=FINGERPRINT)
    np.testing.assert_array_equal(survivor.descriptors, built_map("flat", seed=survivor_seed).descriptors)
    # The next save finishes or discards what the crash left, and leaves only the map.
    built_map("flat", seed=3).save(target)
    np.testing.assert_array_equal(PlaceMap.load(target).descriptors, built_map("flat", seed=3).descriptors)
    assert [p.name for p in tmp_path.iterdir()] == ["map"]


def test_saved_files_get_ordinary_permissions(tmp_path):
    """Not mkstemp's 0600: a node running as another user reads maps written by the CLI."""
    import stat

    from vl2spike_ros.core.atomic_files import atomic_write_bytes

    umask = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "file.bin", b"x")
    finally:
        os.umask(umask)
    assert stat.S_IMODE((tmp_path / "file.bin").stat().st_mode) == 0o644
