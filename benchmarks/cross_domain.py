"""Recall@1 off the training railway: each cross-domain set through `vl2spike evaluate` (the runtime
a robot runs), for patch-normalised pixels and for one or more student checkpoints, optionally under
each resize mode (how a frame of another aspect ratio is fitted to the 64x32 input).

Sets (from ../shared/data; a set whose folder is missing is skipped and said so):
- essex3in1: 210 campus places, viewpoint and appearance change, 1:1 frames; never trained on.
- spedtest_heldout: spedtest places 400-606 (webcams at another season, weather or time of day,
  mostly 4:3); places 0-399 are training places of the cross-domain recipe.
- nordland_test: the Nordland test stretch (frames > 18,200; winter against summer, ±1 place).

  python benchmarks/cross_domain.py --out results/cross_domain/NAME --checkpoint a.safetensors [--checkpoint b ...]
      [--resize-modes crop,squeeze,letterbox]

Writes results.json and results.md in --out. The resize-mode rows feed the same weights (or the
baseline) frames fitted another way: for a student, a checkpoint copy whose config names that mode
(its own fingerprint). Rows without a mode use the checkpoint's own mode, and crop for the baseline.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

from vl2spike_ros.core.atomic_files import atomic_write_bytes
from vl2spike_ros.core.checkpoint import load_checkpoint, save_checkpoint
from vl2spike_ros.model.config import DEFAULT_RESIZE_MODE, RESIZE_MODES

NORDLAND_TEST_AFTER_FRAME = 18200
SPEDTEST_FIRST_HELDOUT = 400


def linked_subset(source: Path, target: Path, keep) -> Path:
    """Symlinks to the images of `source` whose frame number `keep` accepts (no copy of the data)."""
    target.mkdir(parents=True, exist_ok=True)
    for image in sorted(source.iterdir()):
        if image.suffix == ".png" and keep(int(image.stem.rsplit("-", 1)[1])):
            (target / image.name).symlink_to(image.resolve())
    return target


def cross_domain_sets(data: Path, scratch: Path) -> dict[str, tuple[Path, Path, int]]:
    """name -> (reference folder, query folder, tolerance in frame numbers)."""
    sets = {}
    if (data / "essex3in1").is_dir():
        sets["essex3in1"] = (data / "essex3in1" / "ref", data / "essex3in1" / "query", 0)
    if (data / "spedtest").is_dir():
        heldout = lambda number: number >= SPEDTEST_FIRST_HELDOUT  # noqa: E731
        sets["spedtest_heldout"] = (linked_subset(data / "spedtest" / "ref", scratch / "sped_ref", heldout),
                                    linked_subset(data / "spedtest" / "query", scratch / "sped_query", heldout), 0)
    if (data / "nordland64").is_dir():
        stretch = lambda number: number > NORDLAND_TEST_AFTER_FRAME  # noqa: E731
        sets["nordland_test"] = (linked_subset(data / "nordland64" / "summer", scratch / "nl_summer", stretch),
                                 linked_subset(data / "nordland64" / "winter", scratch / "nl_winter", stretch), 10)
    return sets


def evaluate(reference: Path, query: Path, tolerance: int, out: Path, extra: list[str]) -> float:
    command = [sys.executable, "-m", "vl2spike_ros.cli", "evaluate", "--reference", str(reference), "--query",
               str(query), "--tolerance", str(tolerance), "--out", str(out), "--overwrite", *extra]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if done.returncode:
        raise SystemExit(f"cross_domain: {' '.join(command)} failed: {done.stderr.strip().splitlines()[-1]}")
    return json.loads((out / "metrics.json").read_text())["recall@1"]


def with_resize_mode(checkpoint: str, mode: str, folder: Path) -> Path:
    model, info = load_checkpoint(checkpoint)
    if model.config.resize_mode == mode:
        return Path(info.path)
    model.config = replace(model.config, resize_mode=mode)
    path = folder / f"{Path(checkpoint).stem}-{mode}.safetensors"
    save_checkpoint(path, model, {**info.provenance, "resize_mode_changed_from": info.config.resize_mode})
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--checkpoint", action="append", default=[],
                        help="student checkpoint (repeatable; default: the shipped model)")
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--resize-modes", default="",
                        help=f"comma-separated of {RESIZE_MODES}: also evaluate each checkpoint under these")
    args = parser.parse_args(argv)
    checkpoints = args.checkpoint or [str(Path(load_checkpoint(None)[1].path))]
    modes = [mode for mode in args.resize_modes.split(",") if mode]
    unknown = sorted(set(modes) - set(RESIZE_MODES))
    if unknown:
        parser.error(f"--resize-modes: {unknown} unknown; expected some of {RESIZE_MODES}")
    args.out.mkdir(parents=True, exist_ok=True)
    rows: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as scratch_name:
        scratch = Path(scratch_name)
        sets = cross_domain_sets(args.data, scratch)
        if not sets:
            parser.error(f"--data {args.data}: none of essex3in1, spedtest, nordland64 is there")
        models = {"patch-normalised pixels": ["--baseline", "patchnorm"]}
        for mode in modes:
            if mode != DEFAULT_RESIZE_MODE:
                models[f"patch-normalised pixels ({mode})"] = ["--baseline", "patchnorm", "--baseline-resize-mode",
                                                                mode]
        for checkpoint in checkpoints:
            label = Path(checkpoint).stem
            own_mode = load_checkpoint(checkpoint)[0].config.resize_mode
            models[label] = ["--checkpoint", checkpoint, "--backend", "torch"]
            for mode in modes:
                if mode != own_mode:
                    variant = with_resize_mode(checkpoint, mode, scratch)
                    models[f"{label} ({mode})"] = ["--checkpoint", str(variant), "--backend", "torch"]
        for label, extra in models.items():
            rows[label] = {}
            for name, (reference, query, tolerance) in sets.items():
                rows[label][name] = round(evaluate(reference, query, tolerance, scratch / "eval", extra), 2)
                print(f"{label:40s} {name:18s} R@1 {rows[label][name]:6.2f}%", flush=True)
    names = list(next(iter(rows.values())))
    lines = ["| model | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    lines += [f"| {label} | " + " | ".join(f"{row[name]:.1f}" for name in names) + " |" for label, row in rows.items()]
    atomic_write_bytes(args.out / "results.md", ("\n".join(lines) + "\n").encode())
    atomic_write_bytes(args.out / "results.json", json.dumps(
        {"recall@1": rows, "checkpoints": checkpoints, "command": sys.argv}, indent=2).encode())
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
