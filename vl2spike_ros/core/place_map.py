"""A map of places: L2-normalised descriptors in a FAISS inner-product index, plus per-place metadata.

On disk a map is one directory:
  index.faiss      the FAISS index (flat, HNSW or IVF-PQ, inner product)
  descriptors.npy  float32 [count, dim], the exact descriptors (full similarity matrices, re-indexing)
  places.json      one object per place, in id order
  map.json         format version, model fingerprint, dim, metric, count, index kind and options
"""
from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from vl2spike_ros.errors import InputError
from vl2spike_ros.core.atomic_files import fsync_path

FORMAT_VERSION = 1
METRIC = "inner_product"
INDEX_KINDS = ("flat", "hnsw", "ivfpq")
MAP_FILES = ("index.faiss", "descriptors.npy", "places.json", "map.json")
POSE_LENGTH = 7  # x, y, z, qx, qy, qz, qw
NORM_TOLERANCE = 1e-3

# Options each index kind accepts, with defaults; None means "chosen from the data at training".
INDEX_OPTION_DEFAULTS: dict[str, dict[str, int | None]] = {
    "flat": {},
    "hnsw": {"M": 32, "ef_construction": 64, "ef_search": 64},
    "ivfpq": {"nlist": None, "m": None, "nbits": 8, "nprobe": None},
}
FAISS_INDEX_TYPES = {"flat": faiss.IndexFlatIP, "hnsw": faiss.IndexHNSWFlat, "ivfpq": faiss.IndexIVFPQ}
# k-means wants ~39 points per IVF list before it stops warning; we size nlist to respect that.
IVF_POINTS_PER_LIST = 39


@dataclass
class Place:
    """Metadata of one place: where its descriptor came from and, if known, where it is."""

    place_id: int
    source: str = ""
    frame: int | None = None
    stamp: float | None = None
    pose: list[float] | None = None

    def __post_init__(self) -> None:
        if not _is_int(self.place_id) or self.place_id < 0:
            raise InputError(f"place_id must be an integer >= 0, got {self.place_id!r}")
        if not isinstance(self.source, str):
            raise InputError(f"place {self.place_id}: source must be a string, got {self.source!r}")
        if self.frame is not None and not _is_int(self.frame):
            raise InputError(f"place {self.place_id}: frame must be an integer or None, got {self.frame!r}")
        if self.stamp is not None:
            if not _is_real(self.stamp) or not math.isfinite(self.stamp):
                raise InputError(
                    f"place {self.place_id}: stamp must be finite seconds or None, got {self.stamp!r}"
                )
            self.stamp = float(self.stamp)
        if self.pose is not None:
            pose = list(self.pose)
            if len(pose) != POSE_LENGTH or not all(_is_real(v) and math.isfinite(v) for v in pose):
                raise InputError(
                    f"place {self.place_id}: pose must be {POSE_LENGTH} finite numbers "
                    f"(x, y, z, qx, qy, qz, qw) or None, got {self.pose!r}"
                )
            self.pose = [float(v) for v in pose]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, obj: Any) -> Place:
        if not isinstance(obj, dict) or "place_id" not in obj:
            raise InputError(f"a place must be a JSON object with a place_id, got {obj!r}")
        unknown = set(obj) - {"place_id", "source", "frame", "stamp", "pose"}
        if unknown:
            raise InputError(f"place {obj['place_id']!r} has unknown fields {sorted(unknown)}")
        return cls(**obj)


class PlaceMap:
    """Places searchable by inner product of L2-normalised float32 descriptors.

    Place ids are 0-based in insertion order. Besides the FAISS index the map keeps an exact float32
    copy of every descriptor, so `similarities` is exact for every index kind and a map can be
    re-indexed with another kind.

    Index kinds:
      flat   exact search (IndexFlatIP).
      hnsw   graph search (IndexHNSWFlat); options M, ef_construction, ef_search.
      ivfpq  inverted lists with product quantisation (IndexIVFPQ); options nlist, m (sub-quantisers,
             must divide dim), nbits (bits per code, default 8), nprobe. It is trained on the first
             add, which must bring at least `ivfpq_minimum_training_count(nbits)` descriptors
             (256 with nbits=8), and never retrained. Left unset, nlist is about sqrt(count) (and at
             most count/39), m the largest divisor of dim up to min(64, dim/8), nprobe min(nlist, 16).
    """

    def __init__(self, dim: int, fingerprint: str, index_kind: str = "flat", **index_options: int) -> None:
        if not _is_int(dim) or dim < 1:
            raise InputError(f"dim must be a positive integer, got {dim!r}")
        if not isinstance(fingerprint, str) or not fingerprint:
            raise InputError(f"fingerprint must be a non-empty string, got {fingerprint!r}")
        if index_kind not in INDEX_KINDS:
            raise InputError(f"index kind must be one of {', '.join(INDEX_KINDS)}, got {index_kind!r}")
        defaults = INDEX_OPTION_DEFAULTS[index_kind]
        unknown = set(index_options) - set(defaults)
        if unknown:
            accepted = ", ".join(defaults) or "none"
            raise InputError(
                f"index kind {index_kind} does not take options {sorted(unknown)} (accepted: {accepted})"
            )
        for name, value in index_options.items():
            if value is not None and (not _is_int(value) or value < 1):
                raise InputError(f"index option {name} must be a positive integer, got {value!r}")
        options = {**defaults, **index_options}
        if index_kind == "ivfpq" and options["m"] is not None and dim % options["m"] != 0:
            raise InputError(f"index option m={options['m']} must divide the descriptor dim {dim}")
        self._dim = int(dim)
        self._fingerprint = fingerprint
        self._index_kind = index_kind
        self._index_options = options
        self._created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self._places: list[Place] = []
        self._descriptors = np.empty((0, self._dim), dtype=np.float32)
        self._count = 0
        # IVF-PQ's shape depends on the data it is trained on, so it is built on the first add.
        self._index: faiss.Index | None = None if index_kind == "ivfpq" else self._new_untrained_index()

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
    def places(self) -> list[Place]:
        return list(self._places)

    @property
    def descriptors(self) -> np.ndarray:
        """The stored descriptors, float32 [len, dim], read-only."""
        view = self._descriptors[: self._count]
        view.flags.writeable = False
        return view

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
        if self._index is None:
            self._index = self._trained_ivfpq_index(vectors)
        self._index.add(vectors)
        self._append_storage(vectors, list(places))
        return new_ids

    def search(self, queries: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k places for each query: scores float32 [Q, k] (best first) and ids int64 [Q, k].

        HNSW and IVF-PQ are approximate: where they find fewer than k places the id is -1 and the
        score -inf.
        """
        vectors = self._validated_vectors("queries", queries)
        if not _is_int(k) or k < 1:
            raise InputError(f"k must be a positive integer, got {k!r}")
        if k > self._count:
            raise InputError(f"k={k} but the map holds {self._count} places")
        scores, ids = self._index.search(vectors, int(k))
        scores = scores.astype(np.float32, copy=False)
        ids = ids.astype(np.int64, copy=False)
        scores[ids < 0] = -np.inf
        return scores, ids

    def similarities(self, queries: Any) -> np.ndarray:
        """Exact inner products float32 [Q, len] of each query with every place (for sequence matching)."""
        vectors = self._validated_vectors("queries", queries)
        return vectors @ self._descriptors[: self._count].T

    def reindexed(self, index_kind: str, **index_options: int) -> PlaceMap:
        """A copy of this map (same places, descriptors and fingerprint) under another index kind."""
        copy = PlaceMap(self._dim, self._fingerprint, index_kind, **index_options)
        copy.add(self._descriptors[: self._count], self.places)
        return copy

    # --- saving and loading -----------------------------------------------------------------------
    def save(self, directory: str | os.PathLike[str]) -> None:
        """Write the map to `directory`, replacing a map already there, atomically.

        Atomicity: the complete map is written and fsynced in a staging directory beside the target
        (same filesystem), then swapped in with two renames: target -> `.<name>.previous`, staging ->
        target; then the previous map is deleted. A crash before the first rename leaves the old
        map in place; after the second, the new one. A crash between them leaves no target but the
        intact old map at `.<name>.previous`: `load` reads it from there, and the next `save` first
        renames it back. So the target path never holds a half-written map. One writer per target
        at a time: the staging and backup names are fixed.
        """
        target = Path(directory).resolve()
        if self._index is None:
            raise InputError(
                f"cannot save map to {target}: an ivfpq map needs at least one add to be trained"
            )
        if target.exists() and not target.is_dir():
            raise InputError(f"cannot save map to {target}: it exists and is not a directory")
        target.parent.mkdir(parents=True, exist_ok=True)
        _recover_interrupted_save(target)
        if target.exists() and any(target.iterdir()) and not (target / "map.json").is_file():
            raise InputError(
                f"cannot save map to {target}: it is a non-empty directory without map.json, "
                "so it is not a map; refusing to replace it"
            )
        staging = _sibling(target, "saving")
        if staging.exists():
            shutil.rmtree(staging)  # left by a save that crashed before its swap
        staging.mkdir()
        try:
            self._write_files(staging)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        _swap_into_place(staging, target)

    @classmethod
    def load(
        cls,
        directory: str | os.PathLike[str],
        expected_fingerprint: str | None = None,
        expected_dim: int | None = None,
    ) -> PlaceMap:
        """Read a map saved by `save`, refusing one that is incomplete, corrupt or built for another model."""
        target = Path(directory).resolve()
        source = _readable_map_directory(target)
        missing = [name for name in MAP_FILES if not (source / name).is_file()]
        if missing:
            raise InputError(f"map {target} is incomplete: missing {', '.join(missing)}")
        metadata = _read_map_metadata(target, source / "map.json")
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
        except InputError as error:
            raise InputError(f"map {target}: map.json is invalid: {error}") from error
        index = _read_index(target, source / "index.faiss", metadata)
        descriptors = _read_descriptors(target, source / "descriptors.npy", count, dim)
        places = _read_places(target, source / "places.json", count)
        place_map._index = index
        place_map._apply_search_options()
        place_map._append_storage(descriptors, places)
        place_map._created = metadata["created"]
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

    def _new_untrained_index(self) -> faiss.Index:
        if self._index_kind == "flat":
            return faiss.IndexFlatIP(self._dim)
        options = self._index_options
        index = faiss.IndexHNSWFlat(self._dim, options["M"], faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = options["ef_construction"]
        index.hnsw.efSearch = options["ef_search"]
        return index

    def _trained_ivfpq_index(self, vectors: np.ndarray) -> faiss.Index:
        options = self._index_options
        count = len(vectors)
        minimum = ivfpq_minimum_training_count(options["nbits"], options["nlist"])
        if count < minimum:
            raise InputError(
                f"index kind ivfpq is trained on its first add, which needs at least {minimum} descriptors "
                f"(got {count}); add more at once, or use index kind flat or hnsw"
            )
        nlist = options["nlist"] or max(1, min(round(math.sqrt(count)), count // IVF_POINTS_PER_LIST))
        m = options["m"] or _largest_divisor_up_to(self._dim, max(1, min(64, self._dim // 8)))
        nprobe = min(nlist, options["nprobe"] or 16)
        quantizer = faiss.IndexFlatIP(self._dim)
        index = faiss.IndexIVFPQ(quantizer, self._dim, nlist, m, options["nbits"], faiss.METRIC_INNER_PRODUCT)
        # We train on few points on purpose (a map is small); k-means would warn on every sub-quantiser.
        index.cp.min_points_per_centroid = 1
        index.pq.cp.min_points_per_centroid = 1
        index.train(vectors)
        index.nprobe = nprobe
        self._index_options = {**options, "nlist": nlist, "m": m, "nprobe": nprobe}
        return index

    def _apply_search_options(self) -> None:
        if self._index_kind == "hnsw":
            self._index.hnsw.efSearch = self._index_options["ef_search"]
        elif self._index_kind == "ivfpq" and self._index_options["nprobe"] is not None:
            self._index.nprobe = self._index_options["nprobe"]

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

    def _write_files(self, directory: Path) -> None:
        index_path = directory / "index.faiss"
        faiss.write_index(self._index, str(index_path))
        fsync_path(index_path)
        written = faiss.read_index(str(index_path))
        if written.ntotal != self._count or written.d != self._dim:
            raise RuntimeError(
                f"{index_path} read back with {written.ntotal} x {written.d}, "
                f"expected {self._count} x {self._dim}"
            )
        descriptors_path = directory / "descriptors.npy"
        np.save(descriptors_path, self._descriptors[: self._count])
        fsync_path(descriptors_path)
        _write_synced_json(directory / "places.json", [place.to_json() for place in self._places])
        _write_synced_json(
            directory / "map.json",
            {
                "format_version": FORMAT_VERSION,
                "model_fingerprint": self._fingerprint,
                "dim": self._dim,
                "metric": METRIC,
                "count": self._count,
                "index_kind": self._index_kind,
                "index_options": self._index_options,
                "created": self._created,
                "saved": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            },
        )
        fsync_path(directory)


def ivfpq_minimum_training_count(nbits: int = 8, nlist: int | None = None) -> int:
    """Descriptors the first add of an ivfpq map must bring: one per PQ centroid, and per IVF list."""
    return max(2**nbits, nlist or 1)


# --- helpers -------------------------------------------------------------------------------------
def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _largest_divisor_up_to(number: int, limit: int) -> int:
    return max(d for d in range(1, limit + 1) if number % d == 0)


def _sibling(target: Path, role: str) -> Path:
    return target.with_name(f".{target.name}.{role}")


def _write_synced_json(path: Path, obj: Any) -> None:
    with open(path, "w", encoding="utf-8") as stream:
        json.dump(obj, stream, indent=2)
        stream.write("\n")
        stream.flush()
        os.fsync(stream.fileno())


def _recover_interrupted_save(target: Path) -> None:
    """Finish what a save that crashed mid-swap left behind (see `PlaceMap.save`)."""
    previous = _sibling(target, "previous")
    if not previous.exists():
        return
    if target.exists():
        shutil.rmtree(previous)  # the crash came after the new map was in place
    else:
        os.rename(previous, target)
        fsync_path(target.parent)


def _swap_into_place(staging: Path, target: Path) -> None:
    previous = _sibling(target, "previous")
    had_previous = target.exists()
    if had_previous:
        os.rename(target, previous)
    try:
        os.rename(staging, target)
    except BaseException:
        if had_previous:
            os.rename(previous, target)
        shutil.rmtree(staging, ignore_errors=True)
        raise
    fsync_path(target.parent)
    if had_previous:
        shutil.rmtree(previous)


def _readable_map_directory(target: Path) -> Path:
    if target.is_dir():
        return target
    previous = _sibling(target, "previous")
    if previous.is_dir():
        return previous  # a save crashed between its two renames; this is the intact old map
    raise InputError(f"map {target} does not exist or is not a directory")


def _read_json(target: Path, path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"map {target}: cannot read {path.name}: {error}") from error


def _read_map_metadata(target: Path, path: Path) -> dict[str, Any]:
    metadata = _read_json(target, path)
    if not isinstance(metadata, dict):
        raise InputError(f"map {target}: map.json must hold a JSON object")
    version = metadata.get("format_version")
    if version != FORMAT_VERSION:
        raise InputError(
            f"map {target} has format_version {version!r}; this version of vl2spike_ros reads "
            f"format_version {FORMAT_VERSION}; rebuild the map"
        )
    expected_types = {
        "model_fingerprint": str, "dim": int, "metric": str, "count": int,
        "index_kind": str, "index_options": dict, "created": str,
    }
    for key, expected_type in expected_types.items():
        value = metadata.get(key)
        if not isinstance(value, expected_type) or isinstance(value, bool):
            raise InputError(
                f"map {target}: map.json field {key} must be a {expected_type.__name__}, got {value!r}"
            )
    if metadata["metric"] != METRIC:
        raise InputError(f"map {target} uses metric {metadata['metric']!r}; expected {METRIC!r}")
    if metadata["count"] < 0:
        raise InputError(f"map {target}: map.json count must be >= 0, got {metadata['count']}")
    return metadata


def _read_index(target: Path, path: Path, metadata: dict[str, Any]) -> faiss.Index:
    try:
        index = faiss.read_index(str(path))
    except RuntimeError as error:
        reason = str(error).strip().splitlines()[-1] if str(error).strip() else "unreadable"
        raise InputError(f"map {target}: {path.name} is truncated or corrupt ({reason})") from error
    kind = metadata["index_kind"]
    if not isinstance(index, FAISS_INDEX_TYPES[kind]) or index.metric_type != faiss.METRIC_INNER_PRODUCT:
        raise InputError(
            f"map {target}: {path.name} holds a {type(index).__name__}, not an inner-product {kind} index"
        )
    if not index.is_trained:
        raise InputError(f"map {target}: {path.name} holds an untrained index")
    if index.d != metadata["dim"]:
        raise InputError(f"map {target}: {path.name} has dim {index.d} but map.json says {metadata['dim']}")
    if index.ntotal != metadata["count"]:
        raise InputError(
            f"map {target}: {path.name} holds {index.ntotal} places but map.json says {metadata['count']}"
        )
    return index


def _read_descriptors(target: Path, path: Path, count: int, dim: int) -> np.ndarray:
    try:
        descriptors = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:
        raise InputError(f"map {target}: {path.name} is truncated or corrupt ({error})") from error
    if descriptors.dtype != np.float32 or descriptors.shape != (count, dim):
        raise InputError(
            f"map {target}: {path.name} holds {descriptors.dtype} {list(descriptors.shape)}, "
            f"expected float32 [{count}, {dim}]"
        )
    return descriptors


def _read_places(target: Path, path: Path, count: int) -> list[Place]:
    entries = _read_json(target, path)
    if not isinstance(entries, list):
        raise InputError(f"map {target}: {path.name} must hold a JSON list")
    if len(entries) != count:
        raise InputError(f"map {target}: {path.name} holds {len(entries)} places but map.json says {count}")
    try:
        places = [Place.from_json(entry) for entry in entries]
    except (InputError, TypeError) as error:
        raise InputError(f"map {target}: {path.name} is invalid: {error}") from error
    for expected_id, place in enumerate(places):
        if place.place_id != expected_id:
            raise InputError(
                f"map {target}: {path.name} entry {expected_id} has place_id {place.place_id}; "
                "ids must be 0-based in order"
            )
    return places
