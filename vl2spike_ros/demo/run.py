"""`make demo`: map a reference traverse, localise a query traverse of the same route under
changed appearance, and report Recall@K and the PR curve; then start `vpr_node` as its own process
with that map, replay the query traverse to it as a rosbag2 over DDS on loopback, and report the
live Recall@K, latency percentiles and drops.

Default data: the embedded route built from photographs that scikit-image ships (no download);
``--data DIR`` takes a Nordland-layout folder (``summer/`` + ``winter/``, or ``reference/`` + ``query/``).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vl2spike_ros.demo.live import SUMMARY_KS
from vl2spike_ros.errors import InputError

TRAVERSE_PAIRS = (("summer", "winter"), ("reference", "query"))


def find_traverses(data: Path) -> tuple[Path, Path]:
    for reference, query in TRAVERSE_PAIRS:
        if (data / reference).is_dir() and (data / query).is_dir():
            return data / reference, data / query
    expected = " or ".join(f"{r}/ + {q}/" for r, q in TRAVERSE_PAIRS)
    raise InputError(f"--data {data}: expected sub-folders {expected}")


def run(data: Path | None, out: Path, checkpoint: str | None, tolerance: int, live: bool = True,
        rate_hz: float = 20.0) -> dict:
    from vl2spike_ros.core.encoder import DescriptorEncoder
    from vl2spike_ros.evaluation.runner import build_map, evaluate_against_map, open_checked_sequence, write_evaluation

    if data is None:
        from vl2spike_ros.demo.route import write_demo_route

        reference_dir, query_dir = write_demo_route(out / "route")
        print(f"embedded demo route (scikit-image photographs): {reference_dir.parent}")
    else:
        reference_dir, query_dir = find_traverses(data)
    reference = open_checked_sequence(reference_dir)
    query = open_checked_sequence(query_dir)
    encoder = DescriptorEncoder(checkpoint)
    print(f"model {encoder.fingerprint[:12]} ({encoder.info.path.name}); "
          f"{len(reference)} reference frames, {len(query)} query frames, tolerance ±{tolerance} frames")

    place_map = build_map(encoder, reference)
    place_map.save(out / "map")  # atomic; replaces the map of an earlier demo run
    result = evaluate_against_map(encoder, place_map, query, tolerance)
    write_evaluation(result, out / "offline", f"{query_dir.name} vs {reference_dir.name}, ±{tolerance} frames")
    metrics = result.metrics
    print("offline, single frame: " + "  ".join(
        f"Recall@{k} {metrics[f'recall@{k}']:.1f}%" for k in SUMMARY_KS)
        + f"  PR-AUC {metrics['pr_auc']:.3f}")
    print(f"map: {out / 'map'}  metrics: {out / 'offline' / 'metrics.json'}  "
          f"PR plot: {out / 'offline' / 'pr_curve.png'}")
    if not live:
        return metrics
    from vl2spike_ros.demo.live import format_summary, run_live_demo

    live_metrics = run_live_demo(checkpoint, out / "map", query_dir, tolerance=tolerance,
                                 work_dir=out / "live", rate_hz=rate_hz)
    print(format_summary(live_metrics))
    print(f"live metrics: {out / 'live' / 'live_metrics.json'}")
    return {"offline": metrics, "live": live_metrics}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vl2spike_ros.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=None, help="Nordland-layout folder (default: embedded route)")
    parser.add_argument("--out", type=Path, default=Path("demo_output"), help="output folder (default demo_output)")
    parser.add_argument("--checkpoint", default=None, help="student checkpoint (default: the shipped model)")
    parser.add_argument("--tolerance", type=int, default=10, help="frame tolerance (default 10 = ±1 place)")
    parser.add_argument("--rate", type=float, default=20.0,
                        help="replay rate of the query bag in frames per second (default 20)")
    parser.add_argument("--offline-only", action="store_true", help="skip the live node part")
    args = parser.parse_args(argv)
    try:
        run(args.data, args.out, args.checkpoint, args.tolerance, not args.offline_only, args.rate)
    except InputError as error:
        print(f"demo: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
