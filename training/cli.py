"""`vl2spike-train`: train a student (optionally its ANN teacher first) or run the ablation set.

    vl2spike-train train  --config configs/training/default_student.yaml [--set optim.epochs=3 ...]
    torchrun --nproc_per_node N --no-python vl2spike-train train --config ...  (distributed.py)
    vl2spike-train ablate --config configs/training/default_student.yaml [--set ...]
    vl2spike-train report --config CONFIG.yaml --checkpoint CKPT [--teacher ann:FILE] [--out FILE.json]
    vl2spike-train compare RUN_DIR [RUN_DIR ...] [--test] [--mean] [--out FILE.md]
"""
from __future__ import annotations

import argparse
import sys

from vl2spike_ros.errors import InputError

from .config import load_config


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vl2spike-train", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in (("train", "train one student (and its teacher first when teacher.spec is "
                                 "train-cnn); exports it when run.export is set"),
                       ("ablate", "student alone, + SVS, + SVS + SPL on the same data, epochs and seeds; "
                                  "writes report.json, report.md and report.png"),
                       ("report", "figures of a trained checkpoint on each split of the config's place data "
                                  "(validation, test stretch, whole route; beside teacher.spec and patchnorm)")):
        command = commands.add_parser(name, help=text, description=text)
        command.add_argument("--config", help="YAML training config (keys: see training/config.py)")
        command.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                             help="override one config key, e.g. --set optim.epochs=3 (repeatable)")
        if name == "report":
            command.add_argument("--checkpoint", required=True, help="runtime student checkpoint (.safetensors)")
            command.add_argument("--out", default=None, help="also write the figures to this JSON file")
    compare = commands.add_parser("compare", help="one markdown table of finished runs (validation figures; "
                                                  "the test stretch with --test)")
    compare.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories holding summary.json")
    compare.add_argument("--test", action="store_true", help="add the test stretch's figures")
    compare.add_argument("--mean", action="store_true", help="add a row of mean ± sample standard deviation (seeds)")
    compare.add_argument("--out", default=None, help="also write the table to this file")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = _parser().parse_args(argv)
    command_line = ["vl2spike-train", *argv]
    try:
        if args.command == "compare":
            from .compare import write_comparison

            print(write_comparison(args.runs, args.test, args.out, args.mean), end="")
            return 0
        config = load_config(args.config, args.overrides)
        if args.command == "train":
            from .distributed import leave_workers
            from .trainer import train_student

            try:
                summary = train_student(config, command_line)
            finally:
                leave_workers()
            if summary:  # empty on the ranks of a torchrun other than rank 0
                print(f"{summary['metric']}: {summary['final'][summary['metric']]:.2f}% "
                      f"(run directory {config['run']['out_dir']})")
        elif args.command == "report":
            from .split_report import report_checkpoint

            report_checkpoint(config, args.checkpoint, args.out)
        else:
            from .ablation import run_ablation
            from .distributed import launched_by_torchrun

            if launched_by_torchrun():
                raise InputError("ablate: expected a single process; start it without torchrun "
                                 "(train runs under torchrun)")
            report = run_ablation(config, command_line)
            print(f"ablation report: {report['paths']['markdown']}")
    except InputError as error:
        print(f"vl2spike-train: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
