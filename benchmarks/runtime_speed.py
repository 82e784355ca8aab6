"""Runtime speed, measured against references in the same run (never in unit tests):

1. student forward per frame (batch 1): first stage once per frame vs the naive T-fold path;
2. map search per query: HNSW and IVF-PQ vs exact flat search, on a map of N places;
3. sequence matching (L=10) per query on top of the similarity row.

    .venv/bin/python benchmarks/runtime_speed.py [--checkpoint CKPT] [--places 100000] [--threads 1]
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from vl2spike_ros.benchmark.measure import sample_ms


def median_ms(function, repeats: int, warmup: int = 3) -> float:
    return statistics.median(sample_ms(function, repeats, warmup))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=None, help="student checkpoint (default: the shipped model)")
    parser.add_argument("--places", type=int, default=100_000, help="map size for the search benchmark")
    parser.add_argument("--threads", type=int, default=1, help="torch / faiss threads")
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()

    import faiss

    from vl2spike_ros.core.encoder import DescriptorEncoder
    from vl2spike_ros.core.place_map import PlaceMap
    from vl2spike_ros.core.sequence import SequenceMatcher

    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    encoder = DescriptorEncoder(args.checkpoint)
    config = encoder.config
    frame = torch.rand(1, config.in_channels, config.image_height, config.image_width)
    with torch.inference_mode():
        once = median_ms(lambda: encoder.model(frame), args.repeats)
        naive = median_ms(lambda: encoder.model.forward_naive(frame), args.repeats)
    print(f"student {encoder.fingerprint[:12]} (T={config.timesteps}, dims {config.embed_dims}, depth "
          f"{config.depths}), batch 1, {args.threads} thread(s):")
    print(f"  first stage once: {once:.2f} ms/frame   naive T-fold: {naive:.2f} ms/frame   "
          f"speed-up x{naive / once:.2f}")

    rng = np.random.default_rng(0)
    descriptors = rng.normal(size=(args.places, encoder.dim)).astype(np.float32)
    descriptors /= np.linalg.norm(descriptors, axis=1, keepdims=True)
    queries = descriptors[rng.choice(args.places, 200, replace=False)] + \
        rng.normal(scale=0.02, size=(200, encoder.dim)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    timings = {}
    exact_ids = None
    print(f"map search, {args.places} places, dim {encoder.dim}, top-5, one query at a time:")
    for kind in ("flat", "hnsw", "ivfpq"):
        place_map = PlaceMap(encoder.dim, encoder.fingerprint, kind)
        started = time.perf_counter()
        place_map.add(descriptors)
        build_s = time.perf_counter() - started
        position = iter(range(10**9))
        timings[kind] = median_ms(lambda: place_map.search(queries[next(position) % 200][None], 5),
                                  args.repeats * 4)
        ids = np.stack([place_map.search(q[None], 5)[1][0] for q in queries])
        if exact_ids is None:
            exact_ids = ids
        agreement = float(np.mean(ids[:, 0] == exact_ids[:, 0])) * 100
        print(f"  {kind:6s} {timings[kind]:8.3f} ms/query  x{timings['flat'] / timings[kind]:6.1f} vs flat  "
              f"top-1 agrees with flat {agreement:5.1f}%  (build {build_s:.1f} s)")
    matcher = SequenceMatcher(10)
    row = (descriptors @ queries[0]).astype(np.float32)
    sequence_ms = median_ms(lambda: matcher.push(row), args.repeats)
    print(f"sequence matching L=10 over {args.places} places: {sequence_ms:.2f} ms/query "
          f"(x{sequence_ms / timings['flat']:.1f} a flat search)")


if __name__ == "__main__":
    main()
