"""The evaluation at full Nordland size, as a child process whose peak memory the benchmark reads:
Recall@K, PR curve and sequence matching for Q queries against N references, through the same
`evaluate_descriptors` that `vl2spike evaluate` runs. Descriptors and frame numbers are synthetic
(a query is its place's reference descriptor, perturbed); the model only lends its fingerprint.

    python -m vl2spike_ros.benchmark.evaluate_memory --places 27592 --sequence-length 10 --out DIR
prints one JSON line: wall seconds of the evaluation, its metrics and this process's peak resident
memory (VmHWM, which exec resets, so the parent's memory at fork time is not in it; the kernel's
ru_maxrss of a forked child would include it).
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

TOLERANCE_FRAMES = 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--places", type=int, required=True, help="queries = references = this many")
    parser.add_argument("--sequence-length", type=int, default=10)
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", required=True, help="where metrics.json, matches.json and pr_curve.png go")
    args = parser.parse_args(argv)

    import faiss
    import torch

    from vl2spike_ros.benchmark.map_search import QUERY_NOISE, unit_rows
    from vl2spike_ros.benchmark.measure import peak_resident_mb
    from vl2spike_ros.core.encoder import DescriptorEncoder
    from vl2spike_ros.core.place_map import Place, PlaceMap
    from vl2spike_ros.evaluation.metrics import frame_tolerance_positives
    from vl2spike_ros.evaluation.runner import evaluate_descriptors, write_evaluation

    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    encoder = DescriptorEncoder(args.checkpoint)
    rng = np.random.default_rng(0)
    references = unit_rows(rng, args.places, encoder.dim)
    # Queries revisit the places in order, so sequence matching has a diagonal to follow.
    queries = references + rng.normal(scale=QUERY_NOISE, size=references.shape).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    frames = np.arange(args.places) * 10
    place_map = PlaceMap(encoder.dim, encoder.fingerprint, "flat")
    place_map.add(references, [Place(place_id=i, frame=int(f)) for i, f in enumerate(frames)])
    started = time.perf_counter()
    positives = frame_tolerance_positives(frames, frames, TOLERANCE_FRAMES * 10)
    result = evaluate_descriptors(encoder, place_map, queries, positives, args.sequence_length)
    write_evaluation(result, args.out, f"synthetic {args.places} x {args.places}, L={args.sequence_length}")
    wall_s = time.perf_counter() - started
    print(json.dumps({"wall_s": round(wall_s, 2), "metrics": result.metrics,
                      "peak_rss_mb": round(peak_resident_mb(), 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
