"""Map search at scale on synthetic unit descriptors of the model's dimension: each index kind of
`PlaceMap` (with its defaults, as `build-map --index` builds it) against exact flat search."""
from __future__ import annotations

import gc
import time

import numpy as np

from vl2spike_ros.benchmark.measure import percentile_summary, resident_mb, sample_ms
from vl2spike_ros.core.place_map import PlaceMap

INDEX_KINDS = ("flat", "hnsw", "ivfpq")
# IVF lists probed per query, swept on the one built ivfpq map (16 is the default). Re-ranking a
# longer IVF-PQ shortlist with the exact descriptors did not raise top-1 agreement at any of these
# (measured at 100k and 1M: a shortlist of 5 and of 160 agreed equally): on these queries the misses
# are places whose IVF list was not probed, so nprobe is the knob.
IVFPQ_NPROBES = (16, 32, 64, 128, 256)
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


def search_at_size(places: int, dim: int, fingerprint: str, num_queries: int, repeats: int,
                   kinds: tuple[str, ...] = INDEX_KINDS, seed: int = 0, progress=print) -> list[dict]:
    """One row per index kind (ivfpq: per nprobe of IVFPQ_NPROBES): build seconds, resident MiB the map added, single-query latency
    (top-5, one query per call), top-1 agreement with exact search on `num_queries` revisits."""
    rng = np.random.default_rng(seed)
    descriptors = unit_rows(rng, places, dim)
    queries = revisits(rng, descriptors, num_queries)
    exact_top1 = None
    rows = []
    for kind in ("flat",) + tuple(k for k in kinds if k != "flat"):
        gc.collect()
        before = resident_mb()
        started = time.perf_counter()
        place_map = PlaceMap(dim, fingerprint, kind)
        place_map.add(descriptors)
        build_s = time.perf_counter() - started
        added_mb = resident_mb() - before
        settings = ([{"nprobe": n} for n in sorted({min(n, place_map.index_options["nlist"]) for n in IVFPQ_NPROBES})]
                    if kind == "ivfpq" and place_map.index_structure == "ivfpq" else [{}])
        for setting in settings:
            place_map.set_search_options(**setting)
            _, ids = place_map.search(queries, 5)
            if exact_top1 is None:
                exact_top1 = ids[:, 0].copy()
            position = iter(range(10**12))
            latency = sample_ms(lambda: place_map.search(queries[next(position) % num_queries][None], 5),
                                repeats, warmup=3)
            row = {"places": places, "index": kind, "build_s": round(build_s, 2),
                   "resident_mb": round(added_mb, 1), "query_ms": percentile_summary(latency),
                   "top1_agreement": round(float(np.mean(ids[:, 0] == exact_top1)), 4),
                   "options": place_map.index_options}
            if kind in kinds:
                rows.append(row)
                setting_text = " ".join(f"{name}={value}" for name, value in setting.items())
                progress(f"  map {places:>9,} {kind:6s} {setting_text:11s} query p50 {row['query_ms']['p50']:8.3f} ms  "
                         f"top-1 agreement {row['top1_agreement']:.4f}  build {build_s:7.1f} s  "
                         f"+{added_mb:,.0f} MiB")
        del place_map
    return rows
