"""The FAISS index behind a map: kinds, their options, building and training them.

Kinds: flat (exact IndexFlatIP), hnsw (IndexHNSWFlat), ivfpq (IndexIVFPQ) and fastscan
(IndexIVFPQFastScan: 4-bit product codes scanned with SIMD lookup tables, lists found through an
HNSW graph of their centroids, for maps of a million places and more), all inner product.
The IVF kinds (TRAINED_KINDS) must be trained on data: until a map holds enough descriptors to train
one (`minimum_training_count`), it keeps its places in an exact flat index, so a map started empty
(mapping mode adds one keyframe at a time) accepts every add. Lists and codebooks fit the
descriptors they were trained on, so a map that has grown to IVFPQ_RETRAIN_GROWTH times that count
trains them again on all of its descriptors.
"""
from __future__ import annotations

import math
from typing import Any

import faiss
import numpy as np

from vl2spike_ros.errors import InputError
from vl2spike_ros.core.place_map.place import is_int, short_repr

INDEX_KINDS = ("flat", "hnsw", "ivfpq", "fastscan")
TRAINED_KINDS = ("ivfpq", "fastscan")
# `build-map --index auto`: exact search up to this many places, ivfpq above (docs/map_scale.md has
# the measurements behind it: on route-shaped maps of 30k and 100k places ivfpq and fastscan were
# within noise of each other at 30k and ivfpq twice as fast at 100k).
AUTO = "auto"
AUTO_FLAT_MAX_PLACES = 10_000
# Options each index kind accepts, with defaults; None means "chosen from the data at training".
INDEX_OPTION_DEFAULTS: dict[str, dict[str, int | None]] = {
    "flat": {},
    "hnsw": {"M": 32, "ef_construction": 64, "ef_search": 64},
    "ivfpq": {"nlist": None, "m": None, "nbits": 8, "nprobe": None, "rerank": 32},
    "fastscan": {"nlist": None, "m": None, "nprobe": None, "rerank": 32},
}
# Upper bounds that keep a typo (or a hostile map.json) from sizing gigabytes of index structure.
MAX_DIM = 65536
INDEX_OPTION_LIMITS = {"M": 512, "ef_construction": 65536, "ef_search": 65536,
                       "nlist": 1 << 20, "m": MAX_DIM, "nbits": 16, "nprobe": 1 << 20,
                       "rerank": 4096}
# Options that only steer search, so a built map can change them without rebuilding its index.
SEARCH_OPTIONS = {"flat": (), "hnsw": ("ef_search",), "ivfpq": ("nprobe", "rerank"),
                  "fastscan": ("nprobe", "rerank")}
FAISS_INDEX_TYPES = {"flat": faiss.IndexFlatIP, "hnsw": faiss.IndexHNSWFlat, "ivfpq": faiss.IndexIVFPQ,
                     "fastscan": faiss.IndexIVFPQFastScan}
# k-means wants ~39 points per IVF list before it stops warning; we size nlist to respect that.
IVF_POINTS_PER_LIST = 39
# fastscan: about FASTSCAN_LISTS_PER_ROOT * sqrt(count) lists (FAISS's advice for a million vectors
# and more), each centroid trained on at most FASTSCAN_TRAINING_POINTS_PER_LIST descriptors in
# FASTSCAN_KMEANS_ITERATIONS rounds: k-means on all of a million places would take an hour on one core.
FASTSCAN_LISTS_PER_ROOT = 4
FASTSCAN_TRAINING_POINTS_PER_LIST = 32
FASTSCAN_KMEANS_ITERATIONS = 10
FASTSCAN_BITS = 4  # what fast scan is built for: 16 centroids per sub-quantiser, a SIMD register of table
# Neighbours per node of the HNSW graph over the list centroids, and the fewest candidates it keeps
# while finding the nprobe nearest lists.
FASTSCAN_QUANTISER_M = 32
FASTSCAN_QUANTISER_MIN_EF = 64
# Retraining at each doubling costs about twice the last training in all; a map grown one keyframe
# at a time then has at least half the lists a batch build of the same places would get.
IVFPQ_RETRAIN_GROWTH = 2


def checked_index_options(dim: int, index_kind: str, options: dict[str, Any]) -> dict[str, int | None]:
    """All options of `index_kind` (defaults filled in), refusing unknown or out-of-range ones."""
    if not is_int(dim) or not 1 <= dim <= MAX_DIM:
        raise InputError(f"dim must be an integer in [1, {MAX_DIM}], got {short_repr(dim)}")
    if index_kind not in INDEX_KINDS:
        raise InputError(f"index kind must be one of {', '.join(INDEX_KINDS)}, got {short_repr(index_kind)}")
    defaults = INDEX_OPTION_DEFAULTS[index_kind]
    unknown = set(options) - set(defaults)
    if unknown:
        accepted = ", ".join(defaults) or "none"
        raise InputError(
            f"index kind {index_kind} does not take options {sorted(unknown)} (accepted: {accepted})"
        )
    for name, value in options.items():
        if value is not None and (not is_int(value) or not 1 <= value <= INDEX_OPTION_LIMITS[name]):
            raise InputError(f"index option {name} must be a positive integer up to "
                             f"{INDEX_OPTION_LIMITS[name]}, got {short_repr(value)}")
    checked = {**defaults, **options}
    if index_kind in TRAINED_KINDS and checked["m"] is not None and dim % checked["m"] != 0:
        raise InputError(f"index option m={checked['m']} must divide the descriptor dim {dim}")
    return checked


def options_from_data(index_kind: str) -> tuple[str, ...]:
    """The options of `index_kind` that, left unset, are chosen from the data at each training."""
    return tuple(name for name, default in INDEX_OPTION_DEFAULTS[index_kind].items() if default is None)


def index_kind_for(count: int) -> str:
    """The index kind `build-map --index auto` gives a map of `count` places."""
    return "flat" if count <= AUTO_FLAT_MAX_PLACES else "ivfpq"


def minimum_training_count(index_kind: str, options: dict[str, int | None]) -> int:
    """Descriptors an IVF map needs before it trains: one per PQ centroid, and per IVF list."""
    bits = options["nbits"] if index_kind == "ivfpq" else FASTSCAN_BITS
    return max(2**bits, options["nlist"] or 1)


def new_index(dim: int, index_kind: str, options: dict[str, int | None]) -> faiss.Index:
    """An empty index of `index_kind`; for the IVF kinds the flat index they start with (see the module doc)."""
    if index_kind != "hnsw":
        return faiss.IndexFlatIP(dim)
    index = faiss.IndexHNSWFlat(dim, options["M"], faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = options["ef_construction"]
    index.hnsw.efSearch = options["ef_search"]
    return index


def trained_index(index_kind: str, vectors: np.ndarray, options: dict[str, int | None]) -> tuple[faiss.Index, dict]:
    """An IVF index of `index_kind` trained on `vectors` (not yet added), and the options with nlist,
    m and nprobe filled in."""
    if index_kind == "fastscan":
        return _trained_fastscan_index(vectors, options)
    count, dim = vectors.shape
    nlist = options["nlist"] or max(1, min(round(math.sqrt(count)), count // IVF_POINTS_PER_LIST))
    m = options["m"] or _largest_divisor_up_to(dim, max(1, min(64, dim // 8)))
    # A tenth of the lists, at least 16: on route-shaped maps of 100k places 16 of 316 lists agreed
    # with exact search on 93.5% of revisits, 32 on 99.5% (docs/map_scale.md).
    nprobe = min(nlist, options["nprobe"] or max(16, nlist // 10))
    quantizer = faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFPQ(quantizer, dim, nlist, m, options["nbits"], faiss.METRIC_INNER_PRODUCT)
    # We train on few points on purpose (a map is small); k-means would warn on every sub-quantiser.
    index.cp.min_points_per_centroid = 1
    index.pq.cp.min_points_per_centroid = 1
    index.train(vectors)
    index.nprobe = nprobe
    return index, {**options, "nlist": nlist, "m": m, "nprobe": nprobe}


def _trained_fastscan_index(vectors: np.ndarray, options: dict[str, int | None]) -> tuple[faiss.Index, dict]:
    count, dim = vectors.shape
    nlist = options["nlist"] or max(1, min(round(FASTSCAN_LISTS_PER_ROOT * math.sqrt(count)),
                                           count // IVF_POINTS_PER_LIST))
    m = options["m"] or _largest_divisor_up_to(dim, max(1, dim // 2))
    # A tenth of the lists, as ivfpq (docs/map_scale.md has what other fractions agree).
    nprobe = min(nlist, options["nprobe"] or max(16, nlist // 10))
    quantizer = faiss.IndexHNSWFlat(dim, FASTSCAN_QUANTISER_M, faiss.METRIC_INNER_PRODUCT)
    index = faiss.IndexIVFPQFastScan(quantizer, dim, nlist, m, FASTSCAN_BITS, faiss.METRIC_INNER_PRODUCT)
    index.cp.min_points_per_centroid = 1
    index.cp.niter = FASTSCAN_KMEANS_ITERATIONS
    index.pq.cp.min_points_per_centroid = 1
    sample = FASTSCAN_TRAINING_POINTS_PER_LIST * nlist
    if count > sample:  # evenly spread over the map, so every route has its share
        vectors = vectors[np.linspace(0, count - 1, sample).astype(np.int64)]
    index.train(vectors)
    options = {**options, "nlist": nlist, "m": m, "nprobe": nprobe}
    apply_search_options(index, options)
    return index, options


def apply_search_options(index: faiss.Index, options: dict[str, int | None]) -> None:
    """Search-time settings that FAISS does not keep in the index file the way we set them."""
    if isinstance(index, faiss.IndexHNSWFlat):
        index.hnsw.efSearch = options["ef_search"]
    elif isinstance(index, (faiss.IndexIVFPQ, faiss.IndexIVFPQFastScan)) and options["nprobe"] is not None:
        index.nprobe = min(options["nprobe"], index.nlist)
        if isinstance(index, faiss.IndexIVFPQFastScan):
            # The graph must keep at least nprobe candidates to name nprobe lists.
            faiss.downcast_index(index.quantizer).hnsw.efSearch = max(FASTSCAN_QUANTISER_MIN_EF, index.nprobe)


def index_structure(index: faiss.Index) -> str:
    """Which of INDEX_KINDS' FAISS types `index` is (an ivfpq map holds a flat one until trained)."""
    return next(kind for kind, index_type in FAISS_INDEX_TYPES.items() if type(index) is index_type)


def _largest_divisor_up_to(number: int, limit: int) -> int:
    return max(d for d in range(1, limit + 1) if number % d == 0)
