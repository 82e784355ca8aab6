"""PlaceMap: places searchable by inner product of L2-normalised descriptors, saved as one directory.

On disk (see `store` for how it is written and read safely):
  index.faiss      the FAISS index (flat, HNSW, IVF-PQ or IVF-PQ fast scan, inner product)
  descriptors.npy  float32 [count, dim], the exact descriptors (full similarity matrices, re-indexing)
  places.json      one object per place, in id order
  map.json         format version, model fingerprint, dim, metric, count, index kind, options,
                   structure and training (how many descriptors IVF-PQ was trained on, which
                   options it chose from them), and the size and sha256 of the three files above
                   (written last)
"""
from __future__ import annotations

import io
import json
import os
import time
import tokenize
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from vl2spike_ros.errors import InputError
from vl2spike_ros.core.place_map.index_factory import (
    IVFPQ_RETRAIN_GROWTH, SEARCH_OPTIONS, TRAINED_KINDS, apply_search_options, checked_index_options,
    index_structure, minimum_training_count, new_index, options_from_data, trained_index)
from vl2spike_ros.core.place_map.index_file import check_index_bytes, index_size_limit
from vl2spike_ros.core.place_map.place import Place, is_int, short_repr
from vl2spike_ros.core.place_map.store import (check_replaceable, parse_json, read_map_directory,
                                               write_map_directory)

METRIC = "inner_product"
NORM_TOLERANCE = 1e-3
MEAN_TOLERANCE = 1e-5
# .npy format 1.0 (what np.save writes here): 10 bytes of magic, version and header length, then at
# most 65535 bytes of header.
NPY_MAX_HEADER_BYTES = 10 + 0xFFFF


class PlaceMap:
    """Places searchable by inner product of L2-normalised float32 descriptors.

    Place ids are 0-based in insertion order. Besides the FAISS index the map keeps an exact float32
    copy of every descriptor, so `similarities` is exact for every index kind and a map can be
    re-indexed with another kind.

    Index kinds:
      flat   exact search (IndexFlatIP).
      hnsw   graph search (IndexHNSWFlat); options M, ef_construction, ef_search.
      ivfpq  inverted lists with product quantisation (IndexIVFPQ); options nlist, m (sub-quantisers,
             must divide dim), nbits (bits per code, default 8), nprobe, rerank (the shortlist that
             search re-ranks with the exact descriptors, default 32, so scores are exact). Until the map holds
             `minimum_training_count` descriptors (256 with nbits=8) its places
             sit in an exact flat index (so a map started empty takes one keyframe at a time);
             the add that reaches that count trains IVF-PQ on all of them, and so does each add
             that brings the map to IVFPQ_RETRAIN_GROWTH (2) times the count of the last training.
             Left unset, nlist is about sqrt(count) (and at most count/39), m the largest divisor
             of dim up to min(64, dim/8), nprobe a tenth of nlist (at least 16, at most nlist), chosen
             again at each training.
      fastscan  IVF-PQ for a million places and more (IndexIVFPQFastScan, 4-bit codes scanned with
             SIMD tables, an HNSW graph over the list centroids); options nlist, m, nprobe, rerank as
             ivfpq, trained the same way (from max(16, nlist) descriptors). Left unset, nlist is about
             4 sqrt(count) (at most count/39), m dim/2 (one byte per two dimensions), nprobe a tenth
             of nlist (at least 16); k-means runs 10 rounds on at most 32 descriptors per list.
    """

    def __init__(self, dim: int, fingerprint: str, index_kind: str = "flat", **index_options: int) -> None:
        options = checked_index_options(dim, index_kind, index_options)
        if not isinstance(fingerprint, str) or not fingerprint:
            raise InputError(f"fingerprint must be a non-empty string, got {short_repr(fingerprint)}")
        self._dim = int(dim)
        self._fingerprint = fingerprint
        self._index_kind = index_kind
        self._index_options = options
        # As asked for, None where chosen from the data at each training (index_options has the choices).
        self._requested_options = dict(options)
        self._trained_count = 0
        self._created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self._places: list[Place] = []
        self._descriptors = np.empty((0, self._dim), dtype=np.float32)
        self._count = 0
        self._index: faiss.Index = new_index(self._dim, index_kind, options)

    # --- properties -------------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return self._dim

    @property
    def fingerprint(self) -> str:
        return self._fingerprint

    @property
    def index_kind(self) -> str:
        return self._index_kind

    @property
    def index_options(self) -> dict[str, int | None]:
        return dict(self._index_options)

    @property
    def index_structure(self) -> str:
        """The FAISS structure the places are in now: the kind, or flat for an IVF map not yet trained."""
        return index_structure(self._index)

    @property
    def trained_count(self) -> int:
        """How many descriptors the IVF index was last trained on; 0 for other kinds and an untrained IVF map."""
        return self._trained_count

    @property
    def places(self) -> list[Place]:
        return list(self._places)

    @property
    def descriptors(self) -> np.ndarray:
        """The stored descriptors, float32 [len, dim], read-only."""
        view = self._descriptors[: self._count]
        view.flags.writeable = False
        return view

    @property
    def descriptor_mean(self) -> np.ndarray:
        """The mean of the stored descriptors, float32 [dim] (zeros for an empty map): what the
        localizer centres descriptors on (see Localizer's `centre`)."""
        if not self._count:
            return np.zeros(self._dim, dtype=np.float32)
        return self._descriptors[: self._count].mean(axis=0, dtype=np.float64).astype(np.float32)

    @property
    def has_poses(self) -> bool:
        """True when the map holds places and every one of them has a pose."""
        return self._count > 0 and all(place.pose is not None for place in self._places)

    def __len__(self) -> int:
        return self._count

    # --- adding and searching ---------------------------------------------------------------------
    def add(self, descriptors: Any, places: list[Place] | None = None) -> list[int]:
        """Add descriptors [N, dim] (and their places, or default metadata); return their ids.

        Everything is validated before the map changes, so a refused add leaves it as it was.
        """
        vectors = self._validated_vectors("descriptors", descriptors)
        new_ids = list(range(self._count, self._count + len(vectors)))
        if places is None:
            places = [Place(place_id=place_id) for place_id in new_ids]
        elif len(places) != len(vectors):
            raise InputError(f"got {len(vectors)} descriptors but {len(places)} places; give one place each")
        for place, expected_id in zip(places, new_ids):
            if not isinstance(place, Place):
                raise InputError(f"places must be Place objects, got {type(place).__name__}")
            if place.place_id != expected_id:
                raise InputError(
                    f"a place with place_id={place.place_id} would be stored as id {expected_id}; "
                    "ids are 0-based in insertion order"
                )
        if len(vectors) == 0:
            return []
        if self._trains_index(len(vectors)):
            # Train on every descriptor so far (the map keeps exact copies) and move them all over.
            everything = np.concatenate([self._descriptors[: self._count], vectors])
            index, self._index_options = trained_index(self._index_kind, everything, self._requested_options)
            index.add(everything)
            self._index, self._trained_count = index, len(everything)
        else:
            self._index.add(vectors)
        self._append_storage(vectors, list(places))
        return new_ids

    def search(self, queries: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k places for each query: scores float32 [Q, k] (best first) and ids int64 [Q, k].

        HNSW and IVF-PQ are approximate: where they find fewer than k places the id is -1 and the
        score -inf.
        """
        vectors = self._validated_vectors("queries", queries)
        if not is_int(k) or k < 1:
            raise InputError(f"k must be a positive integer, got {k!r}")
        if k > self._count:
            raise InputError(f"k={k} but the map holds {self._count} places")
        if self.index_structure in TRAINED_KINDS:
            scores, ids = self._reranked_search(vectors, int(k))
        else:
            scores, ids = self._index.search(vectors, int(k))
        scores = scores.astype(np.float32, copy=False)
        ids = ids.astype(np.int64, copy=False)
        scores[ids < 0] = -np.inf
        return scores, ids

    def _reranked_search(self, vectors: np.ndarray, k: int, chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
        """The IVF index's best `rerank` places (at least k), re-ranked by their exact descriptors: top-k
        order and scores are exact among the places it found (product quantisation only approximates them)."""
        shortlist = min(max(k, self._index_options["rerank"]), self._count)
        scores = np.empty((len(vectors), k), dtype=np.float32)
        ids = np.empty((len(vectors), k), dtype=np.int64)
        for start in range(0, len(vectors), chunk):  # bounds the [chunk, shortlist, dim] gather
            block = vectors[start:start + chunk]
            _, candidates = self._index.search(block, shortlist)
            exact = np.einsum("qd,qsd->qs", block, self._descriptors[np.maximum(candidates, 0)])
            exact[candidates < 0] = -np.inf
            order = np.argsort(-exact, axis=1, kind="stable")[:, :k]
            scores[start:start + chunk] = np.take_along_axis(exact, order, axis=1)
            ids[start:start + chunk] = np.take_along_axis(candidates, order, axis=1)
        return scores, ids

    def similarities(self, queries: Any) -> np.ndarray:
        """Exact inner products float32 [Q, len] of each query with every place (for sequence matching)."""
        vectors = self._validated_vectors("queries", queries)
        return vectors @ self._descriptors[: self._count].T

    def set_search_options(self, **options: int) -> None:
        """Change search-time options (hnsw: ef_search; ivfpq: nprobe, rerank) without rebuilding the index;
        they are saved with the map. They trade speed for agreement with exact search: docs/benchmark.md's
        map table shows what each costs. An ivfpq nprobe above nlist searches every list."""
        searchable = SEARCH_OPTIONS[self._index_kind]
        others = sorted(set(options) - set(searchable))
        if others:
            raise InputError(f"index kind {self._index_kind} has no search-time options {others} "
                             f"(accepted: {', '.join(searchable) or 'none'})")
        if any(value is None for value in options.values()):
            raise InputError(f"search-time options need values, got {options}")
        checked = checked_index_options(self._dim, self._index_kind, {**self._index_options, **options})
        self._requested_options.update(options)
        if self.index_structure in TRAINED_KINDS:
            checked["nprobe"] = min(checked["nprobe"], self._index.nlist)
        self._index_options = checked
        apply_search_options(self._index, checked)

    def reindexed(self, index_kind: str, **index_options: int) -> PlaceMap:
        """A copy of this map (same places, descriptors and fingerprint) under another index kind."""
        copy = PlaceMap(self._dim, self._fingerprint, index_kind, **index_options)
        copy.add(self._descriptors[: self._count], self.places)
        return copy

    # --- saving and loading -----------------------------------------------------------------------
    def save(self, directory: str | os.PathLike[str]) -> None:
        """Write the map to `directory`, replacing a map already there, atomically (see `store`).

        Only an absent or empty directory, or a map of vl2spike, is replaced; anything else is refused.
        """
        write_map_directory(Path(directory), self._payloads(), {
            "model_fingerprint": self._fingerprint,
            "dim": self._dim,
            "metric": METRIC,
            "count": self._count,
            "index_kind": self._index_kind,
            "index_options": self._index_options,
            "index_structure": self.index_structure,
            "index_training": {"count": self._trained_count, "options_from_data": sorted(
                name for name in options_from_data(self._index_kind) if self._requested_options[name] is None)},
            "descriptor_mean": [float(value) for value in self.descriptor_mean],
            "created": self._created,
            "saved": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        })

    @staticmethod
    def check_replaceable(directory: str | os.PathLike[str]) -> None:
        """Raise InputError unless `save` may write to `directory` (absent, empty, or a map of ours)."""
        check_replaceable(Path(directory).resolve())

    @classmethod
    def load(
        cls,
        directory: str | os.PathLike[str],
        expected_fingerprint: str | None = None,
        expected_dim: int | None = None,
    ) -> PlaceMap:
        """Read a map saved by `save`, refusing one that is incomplete, corrupt or built for another model.

        All files come from one save even while another process saves over the map (see `store`).
        """
        target = Path(directory).resolve()
        metadata, contents = read_map_directory(target, lambda metadata: _payload_size_limits(target, metadata))
        dim, fingerprint, count = metadata["dim"], metadata["model_fingerprint"], metadata["count"]
        if expected_fingerprint is not None and fingerprint != expected_fingerprint:
            raise InputError(
                f"map {target} was built with model {fingerprint[:12]} but the encoder is "
                f"{expected_fingerprint[:12]}; rebuild the map"
            )
        if expected_dim is not None and dim != expected_dim:
            raise InputError(
                f"map {target} holds {dim}-dim descriptors but the encoder makes {expected_dim}-dim ones; "
                "rebuild the map"
            )
        try:
            place_map = cls(dim, fingerprint, metadata["index_kind"], **metadata["index_options"])
        except (InputError, TypeError) as error:
            raise InputError(f"map {target}: map.json is invalid: {error}") from None
        structure = _index_structure(target, metadata)
        place_map._trained_count, from_data = _training_from_metadata(target, metadata, structure, count)
        place_map._requested_options.update({name: None for name in from_data})
        place_map._index = _index_from_bytes(target, contents["index.faiss"], structure, dim, count)
        apply_search_options(place_map._index, place_map._index_options)
        place_map._append_storage(_descriptors_from_bytes(target, contents["descriptors.npy"], count, dim),
                                  _places_from_bytes(target, contents["places.json"], count))
        place_map._created = metadata["created"]
        _check_descriptor_mean(target, metadata, place_map.descriptor_mean)
        return place_map

    # --- internals --------------------------------------------------------------------------------
    def _validated_vectors(self, name: str, array: Any) -> np.ndarray:
        try:
            vectors = np.ascontiguousarray(array, dtype=np.float32)
        except (TypeError, ValueError) as error:
            raise InputError(f"{name} must be convertible to float32: {error}") from error
        if vectors.ndim != 2 or vectors.shape[1] != self._dim:
            raise InputError(f"{name} must have shape [N, {self._dim}], got {list(vectors.shape)}")
        if not np.isfinite(vectors).all():
            raise InputError(f"{name} contain NaN or infinite values")
        norms = np.linalg.norm(vectors, axis=1)
        off = np.flatnonzero(np.abs(norms - 1.0) > NORM_TOLERANCE)
        if off.size:
            raise InputError(
                f"{name} must be L2-normalised (norm 1 within {NORM_TOLERANCE}); row {off[0]} has norm "
                f"{norms[off[0]]:.6f} ({off.size} rows off)"
            )
        return vectors

    def _append_storage(self, vectors: np.ndarray, places: list[Place]) -> None:
        needed = self._count + len(vectors)
        if needed > len(self._descriptors):
            # Doubling keeps mapping mode (one keyframe at a time) at amortised O(1) copies per add.
            grown = np.empty((max(needed, 2 * len(self._descriptors)), self._dim), dtype=np.float32)
            grown[: self._count] = self._descriptors[: self._count]
            self._descriptors = grown
        self._descriptors[self._count : needed] = vectors
        self._places.extend(places)
        self._count = needed

    def _trains_index(self, adding: int) -> bool:
        """True when this add brings an IVF map still flat to the count that trains its index, or a
        trained one to IVFPQ_RETRAIN_GROWTH times the count of its last training."""
        if self._index_kind not in TRAINED_KINDS:
            return False
        if self.index_structure == "flat":
            needed = minimum_training_count(self._index_kind, self._requested_options)
        else:
            needed = IVFPQ_RETRAIN_GROWTH * self._trained_count
        return self._count + adding >= needed

    def _payloads(self) -> dict[str, bytes]:
        buffer = io.BytesIO()
        np.save(buffer, self._descriptors[: self._count], allow_pickle=False)
        places = json.dumps([place.to_json() for place in self._places], indent=2) + "\n"
        return {
            "index.faiss": faiss.serialize_index(self._index).tobytes(),
            "descriptors.npy": buffer.getvalue(),
            "places.json": places.encode("utf-8"),
        }

# --- reading the files ---------------------------------------------------------------------------
def _check_metadata(target: Path, metadata: dict[str, Any]) -> None:
    expected_types = {
        "model_fingerprint": str, "dim": int, "metric": str, "count": int,
        "index_kind": str, "index_options": dict, "created": str,
    }
    for key, expected_type in expected_types.items():
        value = metadata.get(key)
        if not isinstance(value, expected_type) or isinstance(value, bool):
            raise InputError(
                f"map {target}: map.json field {key} must be a {expected_type.__name__}, got {short_repr(value)}"
            )
    if metadata["metric"] != METRIC:
        raise InputError(f"map {target} uses metric {short_repr(metadata['metric'])}; expected {METRIC!r}")
    if metadata["count"] < 0:
        raise InputError(f"map {target}: map.json count must be >= 0, got {metadata['count']}")


def _check_descriptor_mean(target: Path, metadata: dict[str, Any], mean: np.ndarray) -> None:
    """map.json's descriptor_mean (maps saved before it have none) must be the stored descriptors' mean."""
    recorded = metadata.get("descriptor_mean")
    if recorded is None:
        return
    if not (isinstance(recorded, list) and len(recorded) == len(mean)
            and all(isinstance(value, (int, float)) and not isinstance(value, bool) for value in recorded)):
        raise InputError(f"map {target}: map.json descriptor_mean must be a list of {len(mean)} numbers")
    if not np.allclose(np.asarray(recorded, dtype=np.float64), mean, atol=MEAN_TOLERANCE):
        raise InputError(f"map {target}: map.json descriptor_mean is not the mean of descriptors.npy")


def _index_structure(target: Path, metadata: dict[str, Any]) -> str:
    structure = metadata.get("index_structure", metadata["index_kind"])  # format 1 had no field
    if structure not in (metadata["index_kind"], "flat"):
        raise InputError(f"map {target}: map.json index_structure {short_repr(structure)} does not fit "
                         f"index kind {metadata['index_kind']}")
    return structure


def _payload_size_limits(target: Path, metadata: dict[str, Any]) -> dict[str, int]:
    """The most bytes index.faiss and descriptors.npy may take for what map.json says they hold, so a
    file padded far beyond that (or sparse, recorded at its padded size) is refused before it is read."""
    _check_metadata(target, metadata)
    dim, count = metadata["dim"], metadata["count"]
    try:
        options = checked_index_options(dim, metadata["index_kind"], metadata["index_options"])
    except (InputError, TypeError) as error:
        raise InputError(f"map {target}: map.json is invalid: {error}") from None
    return {"index.faiss": index_size_limit(_index_structure(target, metadata), dim, count, options),
            "descriptors.npy": NPY_MAX_HEADER_BYTES + 4 * count * dim}


def _training_from_metadata(target: Path, metadata: dict[str, Any], structure: str,
                            count: int) -> tuple[int, list[str]]:
    """(descriptors IVF-PQ was trained on, options it chose from them) from map.json."""
    training = metadata.get("index_training")
    if training is None:  # saved before maps recorded their training: on every place, options as saved
        return (count if structure in TRAINED_KINDS else 0), []
    choosable = options_from_data(metadata["index_kind"])
    low, high = (1, count) if structure in TRAINED_KINDS else (0, 0)
    trained = training.get("count") if isinstance(training, dict) else None
    from_data = training.get("options_from_data") if isinstance(training, dict) else None
    if not (is_int(trained) and low <= trained <= high and isinstance(from_data, list)
            and all(name in choosable for name in from_data)):
        raise InputError(f"map {target}: map.json index_training must hold count in [{low}, {high}] and "
                         f"options_from_data, a list of names from {list(choosable)}; got {short_repr(training)}")
    return int(trained), list(from_data)


def _index_from_bytes(target: Path, data: bytes, structure: str, dim: int, count: int) -> faiss.Index:
    # Walked and sized against map.json first: FAISS would allocate whatever a length field claims.
    check_index_bytes(data, structure, dim, count, f"map {target}: index.faiss")
    try:
        return faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
    except RuntimeError as error:
        reason = str(error).strip().splitlines()[-1] if str(error).strip() else "unreadable"
        raise InputError(f"map {target}: index.faiss is truncated or corrupt ({reason})") from None


def _descriptors_from_bytes(target: Path, data: bytes, count: int, dim: int) -> np.ndarray:
    expected = f"expected float32 [{count}, {dim}]"
    stream = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(stream)
        read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                       else np.lib.format.read_array_header_2_0)
        shape, fortran_order, dtype = read_header(stream)
    # numpy parses the header with Python's tokenizer: garbage raises its syntax and token errors.
    except (ValueError, EOFError, SyntaxError, tokenize.TokenError) as error:
        reason = str(error).splitlines()[0][:120] if str(error) else type(error).__name__
        raise InputError(f"map {target}: descriptors.npy is truncated or corrupt ({reason}); {expected}") from None
    if dtype != np.float32 or fortran_order or shape != (count, dim):
        raise InputError(f"map {target}: descriptors.npy holds {dtype} {list(shape)}, {expected}")
    if len(data) - stream.tell() != count * dim * 4:
        raise InputError(f"map {target}: descriptors.npy is truncated or corrupt: "
                         f"{len(data) - stream.tell()} bytes of data, {expected}")
    return np.frombuffer(data, dtype="<f4", offset=stream.tell()).reshape(count, dim)


def _places_from_bytes(target: Path, data: bytes, count: int) -> list[Place]:
    entries = parse_json(target, "places.json", data)
    if not isinstance(entries, list):
        raise InputError(f"map {target}: places.json must hold a JSON list")
    if len(entries) != count:
        raise InputError(f"map {target}: places.json holds {len(entries)} places but map.json says {count}")
    try:
        places = [Place.from_json(entry) for entry in entries]
    except (InputError, TypeError) as error:
        raise InputError(f"map {target}: places.json is invalid: {error}") from None
    for expected_id, place in enumerate(places):
        if place.place_id != expected_id:
            raise InputError(
                f"map {target}: places.json entry {expected_id} has place_id {place.place_id}; "
                "ids must be 0-based in order"
            )
    return places
