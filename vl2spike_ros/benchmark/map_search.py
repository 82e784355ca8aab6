"""Map search at scale on synthetic unit descriptors of the model's dimension: each index kind of
`PlaceMap` (with its defaults, as `build-map --index` builds it) against exact flat search.

Two kinds of descriptors: isotropic random vectors (the worst case: no structure for an index to
use) and route-shaped ones (route_shape.py: random walks calibrated on the model's descriptors of
a real route). HNSW maps can be kept in a cache folder, keyed by their content, because building
one at a million places takes far longer than loading it.
"""
from __future__ import annotations

import gc
import hashlib
import json
import time
from pathlib import Path

import faiss
import numpy as np

from vl2spike_ros.benchmark.measure import percentile_summary, resident_mb, sample_ms
from vl2spike_ros.benchmark.route_shape import route_cosines, route_revisits, route_rows
from vl2spike_ros.core.atomic_files import write_json_atomic
from vl2spike_ros.core.place_map import PlaceMap
from vl2spike_ros.core.place_map.index_factory import INDEX_OPTION_DEFAULTS

INDEX_KINDS = ("flat", "hnsw", "ivfpq", "fastscan")
DESCRIPTOR_KINDS = ("isotropic", "route")
# HNSW candidates kept per query, swept on the one built hnsw map (64 is the default).
HNSW_EF_SEARCHES = (16, 32, 64, 128, 256)
# IVF lists probed per query, swept on the one built ivfpq map (16 is the default). Re-ranking a
# longer IVF-PQ shortlist with the exact descriptors did not raise top-1 agreement at any of these
# (measured at 100k and 1M: a shortlist of 5 and of 160 agreed equally): on these queries the misses
# are places whose IVF list was not probed, so nprobe is the knob.
IVFPQ_NPROBES = (16, 32, 64, 128, 256)
# The same for fastscan, whose default is a tenth of its lists (about 400 at 1M places); its sweep
# runs up to a fifth of them.
FASTSCAN_NPROBE_FRACTIONS = (0.025, 0.05, 0.1, 0.2)
QUERY_NOISE = 0.05  # per dimension: a query is a revisited place's descriptor, perturbed (cos ~0.78)


def unit_rows(rng: np.random.Generator, count: int, dim: int, chunk: int = 65536) -> np.ndarray:
    """float32 [count, dim] unit rows, generated in chunks (1M x 256 in float64 at once is 2 GB)."""
    rows = np.empty((count, dim), dtype=np.float32)
    for start in range(0, count, chunk):
        block = rng.standard_normal((min(chunk, count - start), dim), dtype=np.float32)
        rows[start:start + len(block)] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return rows


def revisits(rng: np.random.Generator, places: np.ndarray, count: int) -> np.ndarray:
    queries = places[rng.choice(len(places), count, replace=False)]
    queries = queries + rng.normal(scale=QUERY_NOISE, size=queries.shape).astype(np.float32)
    return queries / np.linalg.norm(queries, axis=1, keepdims=True)


def synthetic_map(kind: str, places: int, dim: int, num_queries: int, route: dict | None = None,
                  seed: int = 0) -> tuple[np.ndarray, np.ndarray, dict]:
    """(descriptors [places, dim], revisit queries [num_queries, dim], what was generated) of one
    descriptor kind. `route` (kind "route"): route_length, consecutive_cosine, revisit_cosine."""
    rng = np.random.default_rng(seed)
    if kind == "isotropic":
        descriptors = unit_rows(rng, places, dim)
        return descriptors, revisits(rng, descriptors, num_queries), {"query_noise_per_dim": QUERY_NOISE}
    descriptors = route_rows(rng, places, dim, route["route_length"], route["consecutive_cosine"])
    queries, revisited = route_revisits(rng, descriptors, num_queries, route["revisit_cosine"])
    return descriptors, queries, {"route_length": route["route_length"],
                                  **route_cosines(descriptors, route["route_length"], queries, revisited)}


def search_at_size(descriptors: np.ndarray, queries: np.ndarray, fingerprint: str, repeats: int,
                   kinds: tuple[str, ...] = INDEX_KINDS, hnsw_cache: Path | None = None,
                   progress=print) -> list[dict]:
    """One row per index kind (hnsw: per ef_search of HNSW_EF_SEARCHES; ivfpq: per nprobe of
    IVFPQ_NPROBES): build seconds, resident MiB the map added, single-query latency (top-5, one
    query per call), top-1 agreement with exact search on the revisit `queries`."""
    places, dim = descriptors.shape
    exact_top1 = None
    rows = []
    for kind in ("flat",) + tuple(k for k in kinds if k != "flat"):
        gc.collect()
        before = resident_mb()
        place_map, build_s, origin = _built_map(kind, descriptors, fingerprint, hnsw_cache)
        added_mb = resident_mb() - before
        for setting in _search_settings(place_map):
            place_map.set_search_options(**setting)
            _, ids = place_map.search(queries, 5)
            if exact_top1 is None:
                exact_top1 = ids[:, 0].copy()
            position = iter(range(10**12))
            latency = sample_ms(
                lambda searched=place_map: searched.search(queries[next(position) % len(queries)][None], 5),
                repeats, warmup=3)
            row = {"places": places, "index": kind, "build_s": round(build_s, 2), **origin,
                   "resident_mb": round(added_mb, 1),
                   "bytes_per_place": round(added_mb * 2**20 / places),
                   "query_ms": percentile_summary(latency),
                   "top1_agreement": round(float(np.mean(ids[:, 0] == exact_top1)), 4),
                   "options": place_map.index_options}
            if kind in kinds:
                rows.append(row)
                setting_text = " ".join(f"{name}={value}" for name, value in setting.items())
                built = f"loaded in {origin['load_s']:.1f} s, built in" if origin.get("cached") else "build"
                progress(f"  map {places:>9,} {kind:6s} {setting_text:13s} query p50 {row['query_ms']['p50']:8.3f} ms  "
                         f"top-1 agreement {row['top1_agreement']:.4f}  {built} {build_s:7.1f} s  "
                         f"+{added_mb:,.0f} MiB")
        del place_map
    return rows


def _search_settings(place_map: PlaceMap) -> list[dict]:
    if place_map.index_kind == "hnsw":
        return [{"ef_search": n} for n in HNSW_EF_SEARCHES]
    if place_map.index_kind == "ivfpq" and place_map.index_structure == "ivfpq":
        return [{"nprobe": n} for n in sorted({min(n, place_map.index_options["nlist"]) for n in IVFPQ_NPROBES})]
    if place_map.index_kind == "fastscan" and place_map.index_structure == "fastscan":
        nlist = place_map.index_options["nlist"]
        return [{"nprobe": n} for n in sorted({max(1, round(f * nlist)) for f in FASTSCAN_NPROBE_FRACTIONS})]
    return [{}]


def _built_map(kind: str, descriptors: np.ndarray, fingerprint: str,
               hnsw_cache: Path | None) -> tuple[PlaceMap, float, dict]:
    """(map, seconds its index took to build, {"cached", "load_s"} for hnsw with a cache)."""
    dim = descriptors.shape[1]
    if kind == "hnsw" and hnsw_cache is not None:
        key = hnsw_cache_key(descriptors, fingerprint)
        directory, record = hnsw_cache / f"hnsw-{key}", hnsw_cache / f"hnsw-{key}.json"
        if record.is_file():
            started = time.perf_counter()
            place_map = PlaceMap.load(directory, expected_fingerprint=fingerprint, expected_dim=dim)
            return place_map, json.loads(record.read_text())["build_s"], {
                "cached": True, "load_s": round(time.perf_counter() - started, 2)}
    started = time.perf_counter()
    place_map = PlaceMap(dim, fingerprint, kind)
    place_map.add(descriptors)
    build_s = time.perf_counter() - started
    if kind != "hnsw" or hnsw_cache is None:
        return place_map, build_s, {}
    place_map.save(directory)
    # Written after the map, so a record always names a complete map.
    write_json_atomic(record, {"build_s": round(build_s, 2), "places": len(descriptors), "dim": dim,
                               "faiss": faiss.__version__, "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    return place_map, build_s, {"cached": False}


def hnsw_cache_key(descriptors: np.ndarray, fingerprint: str) -> str:
    """What decides an HNSW map: the exact descriptors, the index options, FAISS and the model."""
    digest = hashlib.sha256()
    digest.update(json.dumps({"faiss": faiss.__version__, "fingerprint": fingerprint, "shape": descriptors.shape,
                              "options": INDEX_OPTION_DEFAULTS["hnsw"]}, sort_keys=True).encode())
    digest.update(np.ascontiguousarray(descriptors, dtype=np.float32).data)
    return digest.hexdigest()[:24]
