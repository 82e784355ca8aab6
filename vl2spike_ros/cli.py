"""The `vl2spike` command: build maps, evaluate traverses, estimate energy, make test checkpoints."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from vl2spike_ros.errors import InputError
from vl2spike_ros.ros.bag_tools import add_replay_commands

INDEX_CHOICES = ("flat", "hnsw", "ivfpq")
ENERGY_SAMPLE_FRAMES = 32


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", default=None,
                        help="student checkpoint (.safetensors); default: the model the package ships")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default cpu)")
    parser.add_argument("--batch-size", type=_positive_int, default=32, help="images per batch (default 32)")


def _encoder(args: argparse.Namespace):
    from vl2spike_ros.core.encoder import DescriptorEncoder

    return DescriptorEncoder(args.checkpoint, device=args.device, batch_size=args.batch_size)


def _refuse_existing(path: Path, overwrite: bool, what: str) -> None:
    if path.exists() and not overwrite:
        raise InputError(f"{what} {path} already exists; pass --overwrite to replace it")


def cmd_build_map(args: argparse.Namespace) -> int:
    from vl2spike_ros.evaluation.runner import build_map, open_checked_sequence
    from vl2spike_ros.sources.poses import poses_for, read_poses

    out = Path(args.out)
    _refuse_existing(out, args.overwrite, "map")
    sequence = open_checked_sequence(args.images, args.topic)
    poses = poses_for(sequence.frames, read_poses(args.poses), args.poses) if args.poses else None
    encoder = _encoder(args)
    place_map = build_map(encoder, sequence, args.index, poses=poses)
    place_map.save(out)
    print(f"map: {len(place_map)} places, dim {place_map.dim}, index {args.index}, "
          f"model {encoder.fingerprint[:12]} -> {out}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from vl2spike_ros.evaluation.runner import (build_map, evaluate_against_map, open_checked_sequence,
                          require_enough_references, write_evaluation)
    from vl2spike_ros.core.place_map import PlaceMap
    from vl2spike_ros.sources.poses import poses_for, read_poses

    if args.tolerance < 0:
        raise InputError(f"--tolerance must be >= 0 frames, got {args.tolerance}")
    if args.radius is not None and (args.radius < 0 or not args.query_poses):
        raise InputError("--radius must be >= 0 metres and needs --query-poses")
    query = open_checked_sequence(args.query, args.query_topic)
    query_poses = (poses_for(query.frames, read_poses(args.query_poses), args.query_poses)
                   if args.query_poses else None)
    reference = open_checked_sequence(args.reference, args.reference_topic) if args.reference else None
    reference_poses = None
    if reference is not None:
        require_enough_references(len(reference))
        if args.reference_poses:
            reference_poses = poses_for(reference.frames, read_poses(args.reference_poses), args.reference_poses)
    if args.baseline == "patchnorm":  # the hand-made reference figure: no model, no map
        from vl2spike_ros.evaluation.baselines import evaluate_patchnorm

        if reference is None or args.radius is not None:
            raise InputError("--baseline patchnorm needs --reference (a traverse, not --map) and --tolerance (not --radius)")
        result = evaluate_patchnorm(reference, query, args.tolerance, args.sequence_length)
    else:
        encoder = _encoder(args)
        if reference is None:
            place_map = PlaceMap.load(args.map, expected_fingerprint=encoder.fingerprint, expected_dim=encoder.dim)
        else:
            place_map = build_map(encoder, reference, args.index, poses=reference_poses)
        result = evaluate_against_map(encoder, place_map, query, args.tolerance, args.sequence_length,
                                      radius=args.radius, query_poses=query_poses)
    title = (f"{Path(args.query).name} vs {Path(args.reference or args.map).name}, "
             f"±{args.tolerance} frames, L={args.sequence_length}")
    write_evaluation(result, args.out, title)
    metrics = result.metrics
    print("  ".join(f"R@{k} {metrics[f'recall@{k}']:.2f}%" for k in (1, 5, 10, 20))
          + f"  PR-AUC {metrics['pr_auc']:.3f}  R@100%P {metrics['recall@100p']:.2f}%"
          + f"  ({metrics['num_queries']} queries, {metrics['num_references']} references)")
    print(f"wrote {Path(args.out) / 'metrics.json'} and {Path(args.out) / 'pr_curve.png'}")
    return 0


def cmd_energy(args: argparse.Namespace) -> int:
    from vl2spike_ros.core.energy import estimate_energy
    from vl2spike_ros.evaluation.runner import open_checked_sequence

    encoder = _encoder(args)
    if args.images:
        sequence = open_checked_sequence(args.images, args.topic)
        frames = [sequence.read(i) for i in range(min(len(sequence), args.frames))]
    else:
        from vl2spike_ros.demo.route import build_demo_route

        frames = build_demo_route()[0][:args.frames]  # reference frames, in memory: nothing on disk
    count = len(frames)
    images = encoder.preprocess(frames).to(encoder.device)
    report = estimate_energy(encoder.model, images)
    if args.json:
        print(json.dumps({**report.to_dict(), "checkpoint_fingerprint": encoder.fingerprint}, indent=2))
    else:
        print(report.format_table())
        print(f"frames used for firing rates: {count}; model {encoder.fingerprint[:12]}")
    return 0


def cmd_init_checkpoint(args: argparse.Namespace) -> int:
    import torch

    from vl2spike_ros.core.checkpoint import save_checkpoint
    from vl2spike_ros.model import SpikformerStudent, StudentConfig

    out = Path(args.out)
    _refuse_existing(out, args.overwrite, "checkpoint")
    overrides = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise InputError(f"--set {item!r}: expected key=value")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    torch.manual_seed(args.seed)
    config = StudentConfig.from_dict({**StudentConfig().to_dict(), **overrides})
    model = SpikformerStudent(config).eval()
    fingerprint = save_checkpoint(out, model, {"kind": "untrained", "seed": args.seed})
    print(f"wrote untrained student {fingerprint[:12]} to {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vl2spike", description="Visual place recognition with a distilled spiking transformer.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    build = commands.add_parser("build-map", help="encode a reference traverse into a place map",
                                description="Encode a folder or rosbag2 of images into a place map "
                                            "directory; place ids are 0-based in file-name order.")
    build.add_argument("--images", required=True, help="image folder (Nordland layout) or rosbag2")
    build.add_argument("--topic", default=None, help="image topic when --images is a bag with several")
    build.add_argument("--out", required=True, help="map directory to write")
    build.add_argument("--index", choices=INDEX_CHOICES, default="flat", help="FAISS index kind (default flat)")
    build.add_argument("--poses", default=None,
                       help="CSV of per-image poses (columns source,x,y[,z,qx,qy,qz,qw]); the node then publishes ~/pose")
    build.add_argument("--overwrite", action="store_true", help="replace an existing map directory")
    _add_model_options(build)
    build.set_defaults(func=cmd_build_map)

    evaluate = commands.add_parser("evaluate", help="Recall@K and PR curve of a query traverse",
                                   description="Match every query frame against a map of the "
                                               "reference traverse and write metrics.json and pr_curve.png.")
    reference = evaluate.add_mutually_exclusive_group(required=True)
    reference.add_argument("--reference", help="reference (map) folder or rosbag2")
    reference.add_argument("--map", help="an existing map directory (from build-map) instead of --reference")
    evaluate.add_argument("--query", required=True, help="query folder or rosbag2")
    evaluate.add_argument("--reference-topic", default=None, help="image topic in a reference bag")
    evaluate.add_argument("--query-topic", default=None, help="image topic in a query bag")
    evaluate.add_argument("--tolerance", type=int, default=10,
                          help="a reference within this many frame numbers is correct (default 10: "
                               "±1 place on Nordland64)")
    evaluate.add_argument("--radius", type=float, default=None,
                          help="metric ground truth instead of frames: a reference within this many metres "
                               "is correct (needs --query-poses and reference poses)")
    evaluate.add_argument("--query-poses", default=None, help="CSV of query poses (see build-map --poses)")
    evaluate.add_argument("--reference-poses", default=None, help="CSV of reference poses (with --reference)")
    evaluate.add_argument("--sequence-length", type=_positive_int, default=1,
                          help="SeqSLAM-style sequence matching over the last L frames (default 1: single frame)")
    evaluate.add_argument("--index", choices=INDEX_CHOICES, default="flat", help="FAISS index kind (default flat)")
    evaluate.add_argument("--out", required=True, help="output directory for metrics.json and pr_curve.png")
    evaluate.add_argument("--baseline", choices=("patchnorm",), default=None,
                          help="evaluate a hand-made baseline instead of the model: patchnorm = patch-normalised "
                               "pixels (64x32, 8x8 patches, sum of absolute differences)")
    _add_model_options(evaluate)
    evaluate.set_defaults(func=cmd_evaluate)

    energy = commands.add_parser("energy", help="synaptic operations and energy per frame",
                                 description="Energy per frame (45 nm, compute only) of the student "
                                             "and of an ANN of the same shape, per layer.")
    energy.add_argument("--images", default=None,
                        help="folder or bag whose frames set the firing rates (default: the embedded demo route)")
    energy.add_argument("--topic", default=None, help="image topic when --images is a bag")
    energy.add_argument("--frames", type=_positive_int, default=ENERGY_SAMPLE_FRAMES,
                        help=f"frames to average firing rates over (default {ENERGY_SAMPLE_FRAMES})")
    energy.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _add_model_options(energy)
    energy.set_defaults(func=cmd_energy)

    init = commands.add_parser("init-checkpoint", help="write an untrained student (for tests)",
                               description="Write a randomly initialised student checkpoint.")
    init.add_argument("--out", required=True, help="checkpoint file to write (.safetensors)")
    init.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="override a StudentConfig field, e.g. --set embed_dims=64 (repeatable)")
    init.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    init.add_argument("--overwrite", action="store_true", help="replace an existing file")
    init.set_defaults(func=cmd_init_checkpoint)

    add_replay_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TQDM_MININTERVAL", "1")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except InputError as error:
        print(f"vl2spike {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"vl2spike {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
