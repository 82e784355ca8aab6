"""The `vl2spike` command: build maps, evaluate traverses, estimate energy, make test checkpoints."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from vl2spike_ros.core.backends import AUTO, backend_names
from vl2spike_ros.model.config import DEFAULT_RESIZE_MODE, RESIZE_MODES
from vl2spike_ros.cli_arguments import OneLineArgumentParser, bounded_float, bounded_int, require_writable_folder
from vl2spike_ros.errors import InputError
from vl2spike_ros.ros.bag_tools import add_replay_commands

INDEX_CHOICES = ("auto", "flat", "hnsw", "ivfpq", "fastscan")
ENERGY_SAMPLE_FRAMES = 32


# Bounds of the size options: generous for real use, far below what exhausts memory.
MAX_BATCH_SIZE = 4096
MAX_SEQUENCE_LENGTH = 100  # as the node's sequence_length parameter
MAX_TOLERANCE_FRAMES = 10**7
MAX_RADIUS_M = 1e7
MAX_ENERGY_FRAMES = 100_000
EVALUATION_OUTPUTS = ("metrics.json", "pr_curve.png", "matches.json")
ADAPT_STEPS = 120
MAX_ADAPT_STEPS = 1_000_000
MAX_ADAPT_MINUTES = 24 * 60.0


def _add_model_options(parser: argparse.ArgumentParser, backend: bool = True) -> None:
    parser.add_argument("--checkpoint", default=None,
                        help="student checkpoint (.safetensors); default: the model the package ships")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default cpu)")
    parser.add_argument("--batch-size", type=bounded_int(1, MAX_BATCH_SIZE), default=32,
                        help=f"images per batch, 1-{MAX_BATCH_SIZE} (default 32)")
    if not backend:
        return
    parser.add_argument("--backend", choices=backend_names(), default=AUTO,
                        help="where the student runs; either serves the other's maps (default auto: ONNX Runtime, "
                             "exported on first use into $XDG_CACHE_HOME/vl2spike_ros, or PyTorch where that "
                             "cannot start)")


def _encoder(args: argparse.Namespace):
    from vl2spike_ros.core.encoder import DescriptorEncoder

    return DescriptorEncoder(args.checkpoint, device=args.device, batch_size=args.batch_size,
                             backend=args.backend)


def _refuse_existing(path: Path, overwrite: bool, what: str) -> None:
    if path.exists() and not overwrite:
        raise InputError(f"{what} {path} already exists; pass --overwrite to replace it")


def _refuse_foreign_output_folder(out: Path, overwrite: bool) -> None:
    """An evaluation writes into `out`: only into a new or empty folder, or an earlier evaluation's."""
    if out.exists() and not out.is_dir():
        raise InputError(f"evaluation output {out}: exists and is not a folder")
    if not out.is_dir() or overwrite:
        return
    entries = sorted(entry.name for entry in out.iterdir())
    foreign = [name for name in entries if name not in EVALUATION_OUTPUTS]
    if entries and (foreign or not _is_evaluation_metrics(out / "metrics.json")):
        shown = ", ".join(foreign[:3]) or ", ".join(entries[:3])
        raise InputError(f"evaluation output {out}: a non-empty folder that is not an earlier evaluation "
                         f"output (it holds {shown}); choose a new folder or pass --overwrite")


def _is_evaluation_metrics(path: Path) -> bool:
    if not path.is_file():  # a FIFO would block the read
        return False
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return False
    return isinstance(metrics, dict) and "recall@1" in metrics and "checkpoint_fingerprint" in metrics


def cmd_build_map(args: argparse.Namespace) -> int:
    from vl2spike_ros.core.place_map import PlaceMap
    from vl2spike_ros.evaluation.runner import build_map, open_checked_sequence
    from vl2spike_ros.sources.poses import poses_for, read_poses

    out = Path(args.out)
    _refuse_existing(out, args.overwrite, "map")
    PlaceMap.check_replaceable(out)  # --overwrite replaces a map, never another folder
    require_writable_folder(out, "map")
    sequence = open_checked_sequence(args.images, args.topic)
    poses = poses_for(sequence.frames, read_poses(args.poses), args.poses) if args.poses else None
    encoder = _encoder(args)
    place_map = build_map(encoder, sequence, args.index, poses=poses)
    place_map.save(out)
    print(f"map: {len(place_map)} places, dim {place_map.dim}, index {place_map.index_kind}, "
          f"model {encoder.fingerprint[:12]} -> {out}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from vl2spike_ros.evaluation.runner import (build_map, evaluate_against_map, open_checked_sequence,
                          require_enough_references, write_evaluation)
    from vl2spike_ros.core.place_map import PlaceMap
    from vl2spike_ros.sources.poses import poses_for, read_poses

    if args.radius is not None and not args.query_poses:
        raise InputError("--radius needs --query-poses")
    out = Path(args.out)
    _refuse_foreign_output_folder(out, args.overwrite)
    require_writable_folder(out, "evaluation output")
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
        result = evaluate_patchnorm(reference, query, args.tolerance, args.sequence_length,
                                    args.baseline_resize_mode)
    else:
        encoder = _encoder(args)
        if reference is None:
            place_map = PlaceMap.load(args.map, expected_fingerprint=encoder.fingerprint, expected_dim=encoder.dim)
        else:
            place_map = build_map(encoder, reference, args.index, poses=reference_poses)
        result = evaluate_against_map(encoder, place_map, query, args.tolerance, args.sequence_length,
                                      radius=args.radius, query_poses=query_poses, centre=args.centre)
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
    from vl2spike_ros.core.encoder import DescriptorEncoder
    from vl2spike_ros.core.energy import estimate_energy
    from vl2spike_ros.evaluation.runner import open_checked_sequence

    # The count runs the PyTorch student whatever the backend: no ONNX export into the user cache.
    encoder = DescriptorEncoder(args.checkpoint, device=args.device, batch_size=args.batch_size, backend="torch")
    if args.images:
        sequence = open_checked_sequence(args.images, args.topic)
        frames = [sequence.read(i) for i in range(min(len(sequence), args.frames))]
    else:
        from vl2spike_ros.demo.route import build_demo_route

        frames = build_demo_route()[0][:args.frames]  # reference frames, in memory: nothing on disk
    count = len(frames)
    images = encoder.preprocess(frames).to(encoder.model_device)
    report = estimate_energy(encoder.model, images)
    if args.json:
        print(json.dumps({**report.to_dict(), "checkpoint_fingerprint": encoder.fingerprint}, indent=2))
    else:
        print(report.format_table())
        print(f"frames used for firing rates: {count}; model {encoder.fingerprint[:12]}")
    return 0


def _checkpoint_output(path: str, overwrite: bool, example: str) -> Path:
    """A checkpoint file to write, refused before any work (not after minutes of adapting)."""
    out = Path(path)
    _refuse_existing(out, overwrite, "checkpoint")
    if out.is_dir():
        raise InputError(f"checkpoint output {out}: is a folder; expected a file path such as {out / example}")
    if not out.parent.is_dir():
        raise InputError(f"checkpoint output {out}: its folder {out.parent} does not exist")
    require_writable_folder(out, "checkpoint output")
    return out


def cmd_init_checkpoint(args: argparse.Namespace) -> int:
    import torch

    from vl2spike_ros.core.checkpoint import save_checkpoint
    from vl2spike_ros.model import SpikformerStudent, StudentConfig

    out = _checkpoint_output(args.out, args.overwrite, "student.safetensors")
    overrides = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise InputError(f"--set {item[:60]!r}: expected key=value")
        try:
            overrides[key] = json.loads(value)
        except (json.JSONDecodeError, RecursionError):  # not JSON: the text itself (checked as a config value)
            overrides[key] = value
    torch.manual_seed(args.seed)
    config = StudentConfig.from_dict({**StudentConfig().to_dict(), **overrides})
    model = SpikformerStudent(config).eval()
    fingerprint = save_checkpoint(out, model, {"kind": "untrained", "seed": args.seed})
    print(f"wrote untrained student {fingerprint[:12]} to {out}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from vl2spike_ros.core.checkpoint import load_checkpoint
    from vl2spike_ros.core.onnx_export import export_onnx

    out = Path(args.out)
    _refuse_existing(out, args.overwrite, "ONNX model")
    model, info = load_checkpoint(args.checkpoint)
    export_onnx(model, info, out)
    config = info.config
    print(f"exported model {info.fingerprint[:12]} to {out}: uint8 [B, {config.image_height}, "
          f"{config.image_width}, {config.in_channels}] RGB in, float32 [B, {config.descriptor_dim}] out")
    return 0


def cmd_adapt(args: argparse.Namespace) -> int:
    import torch

    from vl2spike_ros.adaptation.loop import AdaptationSettings, adapt
    from vl2spike_ros.adaptation.provenance import adaptation_provenance, write_adapted
    from vl2spike_ros.adaptation.traverse import read_traverse
    from vl2spike_ros.core.checkpoint import load_checkpoint
    from vl2spike_ros.evaluation.runner import open_checked_sequence

    out = _checkpoint_output(args.out, args.overwrite, "adapted.safetensors")
    torch.set_num_threads(args.threads)
    base, info = load_checkpoint(args.checkpoint)
    sequence = open_checked_sequence(args.images, args.topic)
    traverse = read_traverse(sequence, info.config, args.positives, args.images)
    settings = AdaptationSettings(steps=None if args.minutes is not None else args.steps,
                                  minutes=args.minutes, seed=args.seed)
    print(f"adapting model {info.fingerprint[:12]} on {len(traverse)} frames of {args.images} "
          f"({len(traverse.training)} to adapt on, {len(traverse.held_out)} held out; positives: {args.positives})")
    result = adapt(base, traverse, settings)
    provenance = adaptation_provenance(result, info, str(args.images), len(traverse), args.positives, settings)
    fingerprint = write_adapted(out, result, provenance)
    check = result.self_check
    print(f"self-check ({check['queries']} changed views of {check['held_out_frames']} held-out frames): "
          f"{result.reason}; kept the {result.kept} weights")
    print(f"energy per frame: {result.energy_before.snn_energy_pj * 1e-6:.2f} µJ before, "
          f"{result.energy_after.snn_energy_pj * 1e-6:.2f} µJ after "
          f"({result.energy_before.ratio:.3f} -> {result.energy_after.ratio:.3f} of the ANN)")
    print(f"{result.steps} steps in {result.seconds:.0f} s, final loss {result.final_loss:.4f}; "
          f"wrote model {fingerprint[:12]} to {out}")
    return 0


def cmd_benchmark(args: argparse.Namespace) -> int:
    from vl2spike_ros.benchmark.run import run_benchmark

    run_benchmark(args)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(
        prog="vl2spike", description="Visual place recognition with a distilled spiking transformer.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    build = commands.add_parser("build-map", help="encode a reference traverse into a place map",
                                description="Encode a folder or rosbag2 of images into a place map "
                                            "directory; place ids are 0-based in frame-number order "
                                            "(file-name order where not every name ends in a number).")
    build.add_argument("--images", required=True, help="image folder (Nordland layout) or rosbag2")
    build.add_argument("--topic", default=None, help="image topic when --images is a bag with several")
    build.add_argument("--out", required=True, help="map directory to write")
    build.add_argument("--index", choices=INDEX_CHOICES, default="auto", help="FAISS index kind (default auto: by the map's size, docs/map_scale.md)")
    build.add_argument("--poses", default=None,
                       help="CSV of per-image poses (columns source,x,y[,z,qx,qy,qz,qw]); the node then publishes ~/pose")
    build.add_argument("--overwrite", action="store_true",
                       help="replace an existing map directory (only a map; any other folder is refused)")
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
    evaluate.add_argument("--tolerance", type=bounded_int(0, MAX_TOLERANCE_FRAMES), default=10,
                          help="a reference within this many frame numbers is correct (default 10: "
                               "±1 place on Nordland64)")
    evaluate.add_argument("--radius", type=bounded_float(0.0, MAX_RADIUS_M), default=None,
                          help="metric ground truth instead of frames: a reference within this many metres "
                               "is correct (needs --query-poses and reference poses)")
    evaluate.add_argument("--query-poses", default=None, help="CSV of query poses (see build-map --poses)")
    evaluate.add_argument("--reference-poses", default=None, help="CSV of reference poses (with --reference)")
    evaluate.add_argument("--sequence-length", type=bounded_int(1, MAX_SEQUENCE_LENGTH), default=1,
                          help=f"SeqSLAM-style sequence matching over the last L frames, 1-{MAX_SEQUENCE_LENGTH} "
                               "(default 1: single frame)")
    evaluate.add_argument("--index", choices=INDEX_CHOICES, default="flat", help="FAISS index kind (default flat)")
    evaluate.add_argument("--centre", action="store_true",
                          help="centre the map on its mean and each query on the running mean of the queries so far "
                               "(per-traverse standardisation; as the node's centre parameter)")
    evaluate.add_argument("--out", required=True,
                          help="output folder for metrics.json, matches.json and pr_curve.png: new, empty "
                               "or an earlier evaluation's")
    evaluate.add_argument("--overwrite", action="store_true",
                          help="write into an existing folder even if it holds other files (they are kept)")
    evaluate.add_argument("--baseline", choices=("patchnorm",), default=None,
                          help="evaluate a hand-made baseline instead of the model: patchnorm = patch-normalised "
                               "pixels (64x32, 8x8 patches, sum of absolute differences)")
    evaluate.add_argument("--baseline-resize-mode", choices=RESIZE_MODES, default=DEFAULT_RESIZE_MODE,
                          help="how the baseline fits a frame of another aspect ratio to 64x32 (a model "
                               f"uses its checkpoint's own; default {DEFAULT_RESIZE_MODE})")
    _add_model_options(evaluate)
    evaluate.set_defaults(func=cmd_evaluate)

    energy = commands.add_parser("energy", help="synaptic operations and energy per frame",
                                 description="Energy per frame (45 nm, compute only) of the student "
                                             "and of an ANN of the same shape, per layer, at 32-bit float "
                                             "and at 8-bit integer precision; runs the PyTorch student.")
    energy.add_argument("--images", default=None,
                        help="folder or bag whose frames set the firing rates (default: the embedded demo route)")
    energy.add_argument("--topic", default=None, help="image topic when --images is a bag")
    energy.add_argument("--frames", type=bounded_int(1, MAX_ENERGY_FRAMES), default=ENERGY_SAMPLE_FRAMES,
                        help=f"frames to average firing rates over (default {ENERGY_SAMPLE_FRAMES})")
    energy.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _add_model_options(energy, backend=False)
    energy.set_defaults(func=cmd_energy)

    init = commands.add_parser("init-checkpoint", help="write an untrained student (for tests)",
                               description="Write a randomly initialised student checkpoint.")
    init.add_argument("--out", required=True, help="checkpoint file to write (.safetensors)")
    init.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="override a StudentConfig field, e.g. --set embed_dims=64 (repeatable)")
    init.add_argument("--seed", type=bounded_int(0, 2**32 - 1), default=0, help="random seed (default 0)")
    init.add_argument("--overwrite", action="store_true", help="replace an existing file")
    init.set_defaults(func=cmd_init_checkpoint)

    export = commands.add_parser("export", help="export the student as an ONNX model",
                                 description="Write the whole student as one ONNX graph (uint8 RGB frames "
                                             "at the input size in, unit descriptors out) with the "
                                             "checkpoint's fingerprint and config in its metadata.")
    export.add_argument("--checkpoint", default=None, help="student checkpoint (default: the shipped model)")
    export.add_argument("--format", choices=("onnx",), default="onnx", help="export format (default onnx)")
    export.add_argument("--out", required=True, help="file to write (.onnx)")
    export.add_argument("--overwrite", action="store_true", help="replace an existing file")
    export.set_defaults(func=cmd_export)

    adapt_command = commands.add_parser(
        "adapt", help="fit the student to a reference traverse (self-supervised, CPU)",
        description="Adapt the student to one reference traverse, from that traverse alone: changed-condition "
                    "views of neighbouring frames (or of each image) as positives, distilled from the base model, "
                    "kept only if a self-check on held-out frames improves and the energy per frame holds.")
    adapt_command.add_argument("--images", required=True, help="reference traverse: image folder or rosbag2")
    adapt_command.add_argument("--topic", default=None, help="image topic when --images is a bag with several")
    adapt_command.add_argument("--out", required=True, help="checkpoint file to write (.safetensors)")
    adapt_command.add_argument("--checkpoint", default=None, help="base student (default: the shipped model)")
    length = adapt_command.add_mutually_exclusive_group()
    length.add_argument("--steps", type=bounded_int(1, MAX_ADAPT_STEPS), default=ADAPT_STEPS,
                        help=f"training steps of 32 pairs (default {ADAPT_STEPS})")
    length.add_argument("--minutes", type=bounded_float(0.0, MAX_ADAPT_MINUTES, low_inclusive=False), default=None,
                        help="train for this many minutes instead of a number of steps")
    adapt_command.add_argument("--positives", choices=("neighbours", "views"), default="neighbours",
                               help="neighbours: the traverse is a route, nearby frames show one place (default); "
                                    "views: separate places, two views of one image are the positives")
    adapt_command.add_argument("--seed", type=bounded_int(0, 2**32 - 1), default=0, help="random seed (default 0)")
    adapt_command.add_argument("--threads", type=bounded_int(1, 256), default=1, help="CPU threads (default 1)")
    adapt_command.add_argument("--overwrite", action="store_true", help="replace an existing file")
    adapt_command.set_defaults(func=cmd_adapt)

    from vl2spike_ros.benchmark.options import add_benchmark_command

    add_benchmark_command(commands, cmd_benchmark)
    add_replay_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TQDM_MININTERVAL", "1")
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_request:  # --help (0) or a one-line argument error (2)
        return exit_request.code if isinstance(exit_request.code, int) else 2
    try:
        return args.func(args)
    except InputError as error:
        _clear_progress_bars()
        print(f"vl2spike {args.command}: error: {_one_line(str(error))}", file=sys.stderr)
        return 2
    except OSError as error:  # a full disk, a read-only folder, a path that vanished mid-run
        _clear_progress_bars()
        what = error.filename or "a file"
        print(f"vl2spike {args.command}: error: cannot read or write {what}: {error.strerror or error}",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"vl2spike {args.command}: interrupted", file=sys.stderr)
        return 130


def _clear_progress_bars() -> None:
    """Erase a progress bar the error interrupted, so the error is the one line left on the terminal."""
    from tqdm import tqdm

    for bar in list(getattr(tqdm, "_instances", ())):
        bar.leave = False
        bar.close()


def _one_line(text: str) -> str:
    return " ".join(text.split())


if __name__ == "__main__":
    sys.exit(main())
