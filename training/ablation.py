"""The ablation set in one command: student alone, + SVS, + SVS + SPL, with the same data, epochs
and student, each trained once per seed in run.seeds (default: run.seed alone); the config's distill
weights are those of the full (+ SVS + SPL) variant. With optim.twin_epochs > 0 the rows
student + twin and student + SVS + twin join them (started from the ANN twin, one per seed,
training/twin_stage.py), and the SPL row starts from the twin too.

Writes <out_dir>/report.json, report.md and report.png: per variant, the mean and standard
deviation over seeds of the task metric on validation, of Recall@1/5/10 on the test stretch (place
task with the route_tail split; single frame and with sequence matching), and of energy per frame,
the teacher's figures beside them. A gain counts when it is larger than the spread.
"""
from __future__ import annotations

import copy
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen before pyplot loads)

from vl2spike_ros.core.atomic_files import atomic_path, atomic_write_bytes, write_json_atomic  # noqa: E402
from vl2spike_ros.core.energy import E_MAC_PJ  # noqa: E402

from .config import feature_cache_dir  # noqa: E402
from .loop import log_line  # noqa: E402
from .teacher_training import TRAIN_CNN, resolve_teacher  # noqa: E402
from .trainer import train_student  # noqa: E402
from .twin_stage import train_twin_first  # noqa: E402

SVS_KEYS = ("align_weight", "relation_weight", "temporal_weight")
SPL_KEYS = ("prototype_weight", "logit_kd_weight")


def spl_unavailable_reason(config: dict, teacher) -> str | None:
    """Why SPL cannot run with this teacher and task, or None when it can."""
    if teacher is None:
        return "no teacher"
    if teacher.embed_texts(["a photo."]) is None:
        return (f"the teacher ({teacher.description}) has no text side; SPL needs text embeddings "
                "(use a CLIP/SigLIP teacher, with teacher.place_prompts for places)")
    if config["task"] == "place" and not config["teacher"]["place_prompts"]:
        return "places have no class names and teacher.place_prompts is empty"
    return None


def _variant(config: dict, name: str, keep: tuple[str, ...], out_dir: Path, teacher_spec: str, seed: int,
             init_checkpoint: str = "") -> dict:
    variant = copy.deepcopy(config)
    variant["optim"]["twin_epochs"] = 0
    variant["run"]["init_checkpoint"] = init_checkpoint
    for key in SVS_KEYS + SPL_KEYS:
        if key not in keep:
            variant["distill"][key] = 0.0
    variant["teacher"]["spec"] = teacher_spec if keep else "none"
    variant["teacher"]["feature_cache"] = feature_cache_dir(config)
    variant["run"]["out_dir"] = str(out_dir / f"{name}-seed{seed}")
    variant["run"]["seed"] = seed
    variant["run"]["export"] = ""
    return variant


def _seed_figures(summary: dict) -> dict[str, float]:
    """The figures averaged over seeds: validation metric(s), test-stretch recalls, energy (µJ)."""
    final = summary["final"]
    figures = {f"validation {key}": value for key, value in final.items()
               if key.startswith("recall@") or key == "accuracy"}
    test = summary.get("splits", {}).get("test", {}).get("student")
    if test:
        for length, values in test.items():
            keys = ("recall@1", "recall@5", "recall@10") if length == "L1" else ("recall@1",)
            figures.update({f"test {key} {length}": values[key] for key in keys})
    if "snn_energy_pj" in summary["energy"]:
        figures["energy µJ"] = summary["energy"]["snn_energy_pj"] * 1e-6
    figures["eval spike rate"] = final["eval_spike_rate"]
    return figures


def _row(name: str, summaries: list[dict]) -> dict:
    per_seed = [_seed_figures(summary) for summary in summaries]
    keys = list(per_seed[0])
    values = {key: np.array([figures[key] for figures in per_seed]) for key in keys}
    return {"variant": name, "seeds": [summary["config"]["run"]["seed"] for summary in summaries],
            "per_seed": per_seed,
            "mean": {key: float(values[key].mean()) for key in keys},
            # sample standard deviation (ddof=1) over seeds; 0 for a single seed
            "std": {key: float(values[key].std(ddof=1)) if len(summaries) > 1 else 0.0 for key in keys},
            "energy": summaries[0]["energy"],
            "train_seconds": round(sum(record["train_seconds"] for summary in summaries
                                       for record in summary["epochs"]), 1),
            "distillation": summaries[0]["distillation"]}


def _markdown(report: dict) -> str:
    rows = report["rows"]
    keys = list(rows[0]["mean"]) if rows else []
    seeds = ", ".join(str(seed) for seed in report["seeds"])
    lines = [f"# Ablation: {report['task']} ({report['data']})", "",
             f"Same data, {report['epochs']} epochs, seeds {seeds}, student {report['student']}; "
             "mean ± standard deviation over seeds (sample std).", "",
             "| variant | " + " | ".join(keys) + " |", "| --- |" + " --- |" * len(keys)]
    for row in rows:
        cells = [f"{row['mean'][key]:.2f} ± {row['std'][key]:.2f}" if "rate" not in key else
                 f"{row['mean'][key]:.3f} ± {row['std'][key]:.3f}" for key in keys]
        lines.append(f"| {row['variant']} | " + " | ".join(cells) + " |")
    for name, reason in report["skipped"].items():
        lines.append(f"| {name} | skipped: {reason} |" + " |" * max(0, len(keys) - 1))
    teacher = report["teacher"]
    figures = ", ".join(f"{key} {value:.2f}%" for key, value in teacher.get("metrics", {}).items())
    energy = teacher.get("energy")
    energy_text = f"; energy/frame {energy['ann_energy_pj'] * 1e-6:.4f} µJ (ANN, {E_MAC_PJ} pJ/MAC)" if energy else ""
    lines += ["", f"Teacher (validation): {teacher.get('description', teacher['spec'])}: "
                  f"{figures or 'no figures'}{energy_text}."]
    test = teacher.get("splits", {}).get("test", {})
    if "teacher" in test:
        lines.append("Test stretch, single frame: teacher R@1 {:.2f}%, patch-normalised pixels R@1 {:.2f}%.".format(
            test["teacher"]["L1"]["recall@1"], test["patchnorm"]["L1"]["recall@1"]))
    lines += [f"SPL: {report['spl']}", ""]
    return "\n".join(lines)


def _plot(report: dict, path: Path) -> None:
    rows = report["rows"]
    key = next((key for key in rows[0]["mean"] if key.startswith("test recall@1")), None) or \
        next(key for key in rows[0]["mean"] if key.startswith("validation"))
    names = [row["variant"] for row in rows]
    figure, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
    left.bar(names, [row["mean"][key] for row in rows], yerr=[row["std"][key] for row in rows],
             color="tab:blue", capsize=4)
    left.set_ylabel(f"{key} (%)")
    right.bar(names, [row["mean"].get("energy µJ", 0.0) for row in rows],
              yerr=[row["std"].get("energy µJ", 0.0) for row in rows], color="tab:green", capsize=4)
    right.set_ylabel("energy per frame (µJ)")
    figure.suptitle(f"Ablation ({report['task']}), mean ± std over seeds {report['seeds']}")
    figure.tight_layout()
    with atomic_path(path) as temporary:
        figure.savefig(temporary, dpi=120)
    plt.close(figure)


def run_ablation(config: dict, command: list[str] | None = None, log=log_line) -> dict:
    out_dir = Path(config["run"]["out_dir"])
    out_dir.mkdir(parents=True, exist_ok=True)
    seeds = config["run"]["seeds"] or [config["run"]["seed"]]
    teacher, teacher_info, _ = resolve_teacher(config, log)
    teacher_spec = f"ann:{teacher_info['path']}" if config["teacher"]["spec"] == TRAIN_CNN else config["teacher"]["spec"]
    spl_reason = spl_unavailable_reason(config, teacher)
    with_twin = config["optim"]["twin_epochs"] > 0
    variants = [("student", (), False), ("student+twin", (), True), ("student+SVS", SVS_KEYS, False),
                ("student+SVS+twin", SVS_KEYS, True), ("student+SVS+SPL", SVS_KEYS + SPL_KEYS, True)]
    variants = [(name, keep, twin and with_twin) for name, keep, twin in variants if with_twin or not name.endswith("+twin")]
    twins: dict[int, str] = {}
    rows, skipped, summaries = [], {}, {}
    for name, keep, from_twin in variants:
        if keep and teacher is None:
            skipped[name] = "no teacher (teacher.spec is none)"
            continue
        if "prototype_weight" in keep and spl_reason:
            skipped[name] = f"SPL off: {spl_reason}"
            continue
        runs = []
        for seed in seeds:
            if from_twin and seed not in twins:
                seeded = copy.deepcopy(config)
                seeded["run"]["seed"] = seed
                started, _ = train_twin_first(seeded, train_student, command, log, f"twin-seed{seed}")
                twins[seed] = started["run"]["init_checkpoint"]
            log(f"ablation: training {name}, seed {seed}")
            runs.append(train_student(_variant(config, name, keep, out_dir, teacher_spec, seed,
                                               twins[seed] if from_twin else ""), command, log))
        summaries[name] = runs
        rows.append(_row(name, runs))
    last = summaries[rows[-1]["variant"]][0]
    # The distilled variants saw the teacher (metrics, energy); the original spec and the
    # description say where it came from.
    teacher_row = {"spec": "none"}
    if teacher is not None:
        teacher_row = {key: value for key, value in last["teacher"].items() if key != "training"}
        teacher_row.update(spec=teacher_info["spec"], description=teacher_info["description"],
                           splits={name: {model: figures for model, figures in entry.items()
                                          if model in ("teacher", "patchnorm", "places")}
                                   for name, entry in last.get("splits", {}).items()})
    report = {
        "task": config["task"], "data": last["data"], "metric": last["metric"],
        "epochs": config["optim"]["epochs"], "seeds": seeds,
        "student": {key: config["student"][key] for key in ("timesteps", "embed_dims", "depths", "descriptor_dim")},
        "rows": rows, "skipped": skipped, "teacher": teacher_row,
        "spl": (f"off ({spl_reason})" if spl_reason else
                f"on; {summaries['student+SVS+SPL'][0]['distillation']['spl_classes']}"),
        "command": command or [],
        "paths": {"json": str(out_dir / "report.json"), "markdown": str(out_dir / "report.md"),
                  "plot": str(out_dir / "report.png")},
    }
    write_json_atomic(out_dir / "report.json", report)
    atomic_write_bytes(out_dir / "report.md", _markdown(report).encode())
    _plot(report, out_dir / "report.png")
    return report
