"""The cross-domain table: on each set, patch-normalised pixels, the student out of the box and the
student after `vl2spike adapt` on the map's traverse (and each with `--centre`), Recall@1 of single
frames through `vl2spike evaluate`, and the seconds adaptation took. Every figure comes from the
`vl2spike` commands it runs, one at a time; their outputs stay under --work.

Sets (from ../shared/data; subsets are folders of symlinks under --work, never in the repository):
- nordland: adapt on the summer frames of the test stretch (frame > 18200), map summer, query winter
  of the same stretch, tolerance 10 frames (±1 place); positives: neighbours.
- spedtest, essex3in1: map ref/, queries query/, tolerance 0; positives: views (not routes).
  spedtest_heldout: spedtest's places 400-606 (the shipped recipe trains on places 0-399).
- ietower: the authors' gallery/query split of one walk-through; frames renumbered clip * 100 + second,
  so tolerance 1 is the next second of the same clip; positives: neighbours.

    .venv/bin/python benchmarks/cross_domain_adapt.py [--checkpoint CKPT] [--sets nordland,essex3in1]
        [--data ../shared/data] [--work /tmp/vl2spike_cross_domain] [--seed 0] [--out results.md]
"""
from __future__ import annotations

import argparse
import csv
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

NORDLAND_TEST_AFTER = 18200
SPEDTEST_FIRST_HELDOUT = 400
SETS = {  # name: (reference, query, tolerance, positives)
    "nordland": ("nordland_test/summer", "nordland_test/winter", 10, "neighbours"),
    "spedtest": ("spedtest/ref", "spedtest/query", 0, "views"),
    # spedtest's places 400-606: the shipped recipe trains on places 0-399
    "spedtest_heldout": ("spedtest_heldout/ref", "spedtest_heldout/query", 0, "views"),
    "essex3in1": ("essex3in1/ref", "essex3in1/query", 0, "views"),
    "ietower": ("ietower/gallery", "ietower/query", 1, "neighbours"),
}


def link_folder(folder: Path, links: dict[str, Path]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, target in links.items():
        link = folder / name
        if not link.is_symlink():
            link.symlink_to(target.resolve())


def prepare(data: Path, work: Path) -> Path:
    """Subset folders under work/sets: symlinks to data's images, the rest links to data's folders."""
    sets = work / "sets"
    for season in ("summer", "winter"):
        source = data / "nordland64" / season
        link_folder(sets / "nordland_test" / season, {path.name: path for path in sorted(source.glob("images-*.png"))
                                                    if int(path.stem.split("-")[1]) > NORDLAND_TEST_AFTER})
    for name in ("spedtest", "essex3in1"):
        for part in ("ref", "query"):
            link_folder(sets / name / part, {path.name: path for path in sorted((data / name / part).glob("*.png"))})
    for part in ("ref", "query"):
        link_folder(sets / "spedtest_heldout" / part, {path.name: path for path in sorted((data / "spedtest" / part).glob("*.png"))
                                                       if int(path.stem.split("-")[1]) >= SPEDTEST_FIRST_HELDOUT})
    clips: dict[str, int] = {}
    links: dict[str, dict[str, Path]] = {"gallery": {}, "query": {}}
    with open(data / "ietower" / "labels.csv", newline="") as labels:
        for row in csv.DictReader(labels):
            clip = clips.setdefault(row["clip"], len(clips))
            name = f"images-{clip * 100 + int(row['frame']):05d}.png"
            links[row["split"]][name] = data / "ietower" / "frames" / f"images-{int(row['index']):05d}.png"
    for split, split_links in links.items():
        link_folder(sets / "ietower" / split, split_links)
    return sets


def vl2spike(*arguments: str) -> None:
    command = [sys.executable, "-m", "vl2spike_ros.cli", *arguments]
    print("$ vl2spike " + " ".join(arguments), flush=True)
    subprocess.run(command, check=True)


def recall_at_1(out: Path) -> float:
    return json.loads((out / "metrics.json").read_text())["recall@1"]


def measure(name: str, sets: Path, work: Path, checkpoint: list[str], seed: int) -> dict:
    reference, query, tolerance, positives = SETS[name]
    runs = work / "runs" / name
    runs.mkdir(parents=True, exist_ok=True)
    common = ["--reference", str(sets / reference), "--query", str(sets / query), "--tolerance", str(tolerance),
              "--overwrite"]
    row = {"set": name, "references": len(list((sets / reference).iterdir())),
           "queries": len(list((sets / query).iterdir())), "tolerance": tolerance, "positives": positives}
    vl2spike("evaluate", *common, "--baseline", "patchnorm", "--out", str(runs / "patchnorm"))
    row["patchnorm"] = recall_at_1(runs / "patchnorm")
    adapted = runs / "adapted.safetensors"
    started, cpu_before = time.perf_counter(), _children_cpu_seconds()
    vl2spike("adapt", "--images", str(sets / reference), "--out", str(adapted), "--positives", positives,
             "--seed", str(seed), "--overwrite", *checkpoint)
    row["adapt_seconds"] = round(time.perf_counter() - started, 1)
    row["adapt_cpu_seconds"] = round(_children_cpu_seconds() - cpu_before, 1)  # a shared machine stretches the wall time
    provenance = json.loads(_metadata(adapted)["provenance"])
    row["kept"] = provenance["kept"]
    row["self_check"] = (provenance["self_check"]["base_recall@1"], provenance["self_check"]["adapted_recall@1"])
    row["energy_uj"] = (provenance["energy_uj_per_frame"]["base"], provenance["energy_uj_per_frame"]["written"])
    for label, model in (("out_of_the_box", checkpoint), ("adapted", ["--checkpoint", str(adapted)])):
        for centre in (False, True):
            out = runs / (label + ("_centred" if centre else ""))
            vl2spike("evaluate", *common, *model, *(["--centre"] if centre else []), "--out", str(out))
            row[label + ("_centred" if centre else "")] = recall_at_1(out)
    return row


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _metadata(path: Path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as handle:
        return handle.metadata()


def table(rows: list[dict]) -> str:
    lines = ["| set | refs / queries, tolerance | patch-normalised pixels | out of the box | adapted "
             "| adaptation s, wall / CPU (kept) | out of the box, centred | adapted, centred | energy µJ/frame before → after |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['set']} | {row['references']} / {row['queries']}, ±{row['tolerance']} | "
                     f"{row['patchnorm']:.2f} | {row['out_of_the_box']:.2f} | {row['adapted']:.2f} | "
                     f"{row['adapt_seconds']:.0f} / {row['adapt_cpu_seconds']:.0f} ({row['kept']}) | {row['out_of_the_box_centred']:.2f} | "
                     f"{row['adapted_centred']:.2f} | {row['energy_uj'][0]:.2f} → {row['energy_uj'][1]:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[1].parent / "shared" / "data"))
    parser.add_argument("--work", default="/tmp/vl2spike_cross_domain")
    parser.add_argument("--checkpoint", default=None, help="student (default: the shipped model)")
    parser.add_argument("--sets", default=",".join(SETS), help=f"comma-separated, of {', '.join(SETS)}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="also write the table and the rows (JSON) here")
    args = parser.parse_args()
    names = [name for name in args.sets.split(",") if name]
    unknown = sorted(set(names) - set(SETS))
    if unknown:
        parser.error(f"--sets: unknown {unknown}; expected names from {list(SETS)}")
    work = Path(args.work)
    sets = prepare(Path(args.data), work)
    checkpoint = ["--checkpoint", args.checkpoint] if args.checkpoint else []
    rows = [measure(name, sets, work, checkpoint, args.seed) for name in names]
    print(table(rows))
    if args.out:
        Path(args.out).write_text(table(rows) + "\n\n```json\n" + json.dumps(rows, indent=2) + "\n```\n")


if __name__ == "__main__":
    main()
