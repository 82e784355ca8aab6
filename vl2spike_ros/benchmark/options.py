"""The `benchmark` command's arguments; `--quick` swaps in the smaller sizes below."""
from __future__ import annotations

import argparse

# HNSW is built one point at a time: 100k places took 201 s on one busy core here, so 1M takes over
# half an hour, once: built maps are kept in --map-cache. Above hnsw_max_places its row records that
# it was not built.
FULL = {"map_sizes": "10000,100000,1000000", "hnsw_max_places": 1_000_000, "node_places": 27592,
        "node_frames": 900, "eval_places": 27592, "repeats": 300, "vit_repeats": 20, "batch_repeats": 3}
QUICK = {"map_sizes": "5000,10000,20000", "hnsw_max_places": 20_000, "node_places": 27592,
         "node_frames": 300, "eval_places": 3000, "repeats": 60, "vit_repeats": 5, "batch_repeats": 1}
DEFAULT_SOAK_FRAMES = 100_000
DEFAULT_ROUTE_LENGTH = 1000
NORDLAND_PLACES = 27592
PARTS = ("encode", "map", "node", "evaluate")


# --backend's names for several backends at once.
BACKEND_SETS = {"all": ("torch", "onnxruntime", "onnxruntime-int8"), "both": ("torch", "onnxruntime")}


def _map_sizes(text: str) -> list[int]:
    try:
        sizes = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected three comma-separated place counts, got {text!r}") from None
    if len(sizes) != 3 or any(size < 1000 for size in sizes):
        raise argparse.ArgumentTypeError(f"expected three comma-separated place counts >= 1000 "
                                         f"(the 10k, 100k and 1M rows), got {text!r}")
    return sizes


def _descriptor_kinds(text: str) -> tuple[str, ...]:
    from vl2spike_ros.benchmark.map_search import DESCRIPTOR_KINDS

    kinds = tuple(kind.strip() for kind in text.split(","))
    if not kinds or any(kind not in DESCRIPTOR_KINDS for kind in kinds):
        raise argparse.ArgumentTypeError(f"expected comma-separated descriptor kinds from "
                                         f"{','.join(DESCRIPTOR_KINDS)}, got {text!r}")
    return tuple(kind for kind in DESCRIPTOR_KINDS if kind in kinds)


def _parts(text: str) -> tuple[str, ...]:
    parts = tuple(part.strip() for part in text.split(","))
    if not parts or any(part not in PARTS for part in parts):
        raise argparse.ArgumentTypeError(f"expected comma-separated parts from {','.join(PARTS)}, got {text!r}")
    return tuple(part for part in PARTS if part in parts)


def add_benchmark_command(commands, handler) -> None:
    from vl2spike_ros.cli_arguments import bounded_int  # the CLI's own check, for the same error text

    threads, frames, places, repeats = (bounded_int(1, 256), bounded_int(1, 10**8), bounded_int(1, 10**7),
                                        bounded_int(1, 10**6))
    bench = commands.add_parser(
        "benchmark", help="speed, energy, map search, node latency and memory in one run",
        description="Measure encode speed against a CLIP ViT-B/32 image tower in the same runtime, energy per "
                    "frame (32-bit float and int8), map "
                    "search at 10k/100k/1M places, the latency of a running vpr_node with a "
                    f"{NORDLAND_PLACES}-place map and the peak memory of a full-Nordland evaluation; "
                    "print a table and write OUT/benchmark.json and OUT/benchmark.md.")
    bench.add_argument("--out", required=True, help="directory for benchmark.json, benchmark.md and work files")
    bench.add_argument("--quick", action="store_true",
                       help="smaller repeats and sizes (a few minutes); the JSON records the sizes used")
    bench.add_argument("--threads", type=threads, default=1,
                       help="torch, onnxruntime and FAISS threads (default 1)")
    bench.add_argument("--backend", choices=(*BACKEND_SETS, "torch", "onnxruntime", "onnxruntime-int8"), default="all",
                       help="student backends to time, each against the ViT-B/32 in the same runtime where it "
                            "has one: all (torch, onnxruntime, onnxruntime-int8), both (torch, onnxruntime) or "
                            "one; the encode keys report the fastest (default all)")
    bench.add_argument("--device", default="cpu", help="torch device for the student and the ViT (default cpu)")
    bench.add_argument("--checkpoint", default=None, help="student checkpoint (default: the shipped model)")
    bench.add_argument("--parts", type=_parts, default=PARTS, metavar="LIST",
                       help=f"run only these parts, comma-separated (default all: {','.join(PARTS)}); "
                            "keys of the others are reported as not run")
    bench.add_argument("--soak", type=frames, nargs="?", const=DEFAULT_SOAK_FRAMES, default=None,
                       metavar="FRAMES", help=f"also stream FRAMES frames through the node and check its "
                                              f"memory (default {DEFAULT_SOAK_FRAMES:,} when given bare)")
    maps = bench.add_argument_group("map search")
    maps.add_argument("--map-kinds", type=_descriptor_kinds, default=None, metavar="LIST",
                      help="synthetic descriptors to search: isotropic (the worst case) and/or route (random "
                           "walks calibrated on --route-data; default both with --route-data, else isotropic)")
    maps.add_argument("--route-data", default=None, metavar="DIR",
                      help="two frame-aligned traverses DIR/summer and DIR/winter (e.g. nordland64) on which the "
                           "model's consecutive-place and cross-season cosines are measured (needed for route)")
    maps.add_argument("--route-places", type=places, default=None, metavar="N",
                      help="calibrate on the first N places of --route-data (default all)")
    maps.add_argument("--route-length", type=places, default=DEFAULT_ROUTE_LENGTH, metavar="N",
                      help=f"places per synthetic route (default {DEFAULT_ROUTE_LENGTH})")
    maps.add_argument("--map-cache", default=None, metavar="DIR",
                      help="folder keeping built HNSW maps between runs, by content (default OUT/work/map_cache)")
    sizes = bench.add_argument_group("sizes (default: full, or --quick's smaller ones)")
    sizes.add_argument("--map-sizes", type=_map_sizes, default=None, metavar="A,B,C",
                       help=f"the three map sizes (full {FULL['map_sizes']}, quick {QUICK['map_sizes']})")
    sizes.add_argument("--hnsw-max-places", type=places, default=None,
                       help=f"largest map built as HNSW (full {FULL['hnsw_max_places']:,}, quick "
                            f"{QUICK['hnsw_max_places']:,}; its build is the slowest part)")
    sizes.add_argument("--node-places", type=places, default=None,
                       help=f"places in the node's map (default {NORDLAND_PLACES})")
    sizes.add_argument("--node-frames", type=frames, default=None,
                       help=f"frames streamed at 30 Hz (full {FULL['node_frames']}, quick {QUICK['node_frames']})")
    sizes.add_argument("--eval-places", type=places, default=None,
                       help=f"queries = references in the evaluation (full {FULL['eval_places']}, "
                            f"quick {QUICK['eval_places']})")
    sizes.add_argument("--repeats", type=repeats, default=None, help="timed batch-1 calls per model")
    sizes.add_argument("--vit-repeats", type=repeats, default=None, help="timed batch-1 calls of the ViT")
    sizes.add_argument("--batch-repeats", type=repeats, default=None, help="timed batch-32 calls per model")
    bench.set_defaults(func=handler)


ROUTE_DATA_HINT = ("map search: isotropic descriptors only; add --route-data DIR (two frame-aligned traverses "
                   "DIR/summer and DIR/winter, e.g. nordland64) for the route-shaped maps too")


def resolved_map_kinds(args: argparse.Namespace) -> tuple[str, ...]:
    """--map-kinds, or by default both kinds where --route-data can calibrate the route shape, else
    the isotropic maps alone (the caller says how to add the route-shaped ones)."""
    if args.map_kinds is not None:
        return args.map_kinds
    return ("isotropic", "route") if args.route_data else ("isotropic",)


def resolved_sizes(args: argparse.Namespace) -> dict:
    """The sizes this run uses: explicit options over the --quick or full defaults."""
    base = QUICK if args.quick else FULL
    sizes = {key: getattr(args, key) if getattr(args, key) is not None else value for key, value in base.items()}
    if isinstance(sizes["map_sizes"], str):
        sizes["map_sizes"] = _map_sizes(sizes["map_sizes"])
    return sizes
