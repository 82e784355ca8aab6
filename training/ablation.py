"""The ablation set in one command: student alone, + SVS, + SVS + SPL, with the same data, epochs,
seed and student; the config's distill weights are those of the full (+ SVS + SPL) variant.

Writes <out_dir>/report.json, report.md and report.png (task metric and energy per frame of each
variant, the teacher's figures beside them).
"""
from __future__ import annotations

import copy
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen before pyplot loads)

from vl2spike_ros.core.atomic_files import atomic_path, atomic_write_bytes, write_json_atomic  # noqa: E402
from vl2spike_ros.core.energy import E_MAC_PJ  # noqa: E402

from .loop import log_line  # noqa: E402
from .trainer import TRAIN_CNN, resolve_teacher, train_student  # noqa: E402

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


def _variant(config: dict, name: str, keep: tuple[str, ...], out_dir: Path, teacher_spec: str) -> dict:
    variant = copy.deepcopy(config)
    for key in SVS_KEYS + SPL_KEYS:
        if key not in keep:
            variant["distill"][key] = 0.0
    variant["teacher"]["spec"] = teacher_spec if keep else "none"
    variant["teacher"]["feature_cache"] = config["teacher"]["feature_cache"] or str(out_dir / "feature_cache")
    variant["run"]["out_dir"] = str(out_dir / name)
    variant["run"]["export"] = ""
    return variant


def _row(name: str, summary: dict) -> dict:
    final = summary["final"]
    return {"variant": name, "metrics": {key: value for key, value in final.items()
                                         if key.startswith("recall@") or key == "accuracy"},
            "eval_spike_rate": final["eval_spike_rate"], "energy": summary["energy"],
            "train_seconds": round(sum(record["train_seconds"] for record in summary["epochs"]), 1),
            "distillation": summary["distillation"]}


def _markdown(report: dict) -> str:
    metric = report["metric"]
    lines = [f"# Ablation: {report['task']} ({report['data']})", "",
             f"Same data, {report['epochs']} epochs, seed {report['seed']}, student {report['student']}.", "",
             f"| variant | {metric} (%) | eval spike rate | energy/frame (µJ) | SNN/ANN |",
             "| --- | --- | --- | --- | --- |"]
    for row in report["rows"]:
        energy = row["energy"]
        micro = f"{energy['snn_energy_pj'] * 1e-6:.4f}" if "snn_energy_pj" in energy else "n/a"
        ratio = f"{energy['ratio']:.3f}" if "ratio" in energy else "n/a"
        lines.append(f"| {row['variant']} | {row['metrics'][metric]:.2f} | {row['eval_spike_rate']:.3f} | "
                     f"{micro} | {ratio} |")
    for name, reason in report["skipped"].items():
        lines.append(f"| {name} | skipped: {reason} | | | |")
    teacher = report["teacher"]
    figures = ", ".join(f"{key} {value:.2f}%" for key, value in teacher.get("metrics", {}).items())
    energy = teacher.get("energy")
    energy_text = f"; energy/frame {energy['ann_energy_pj'] * 1e-6:.4f} µJ (ANN, {E_MAC_PJ} pJ/MAC)" if energy else ""
    lines += ["", f"Teacher: {teacher.get('description', teacher['spec'])}: {figures or 'no figures'}{energy_text}."]
    lines += [f"SPL: {report['spl']}", ""]
    return "\n".join(lines)


def _plot(report: dict, path: Path) -> None:
    metric = report["metric"]
    names = [row["variant"] for row in report["rows"]]
    values = [row["metrics"][metric] for row in report["rows"]]
    energies = [row["energy"].get("snn_energy_pj", 0.0) * 1e-6 for row in report["rows"]]
    figure, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
    left.bar(names, values, color="tab:blue")
    teacher_value = report["teacher"].get("metrics", {}).get(metric)
    if teacher_value is not None:
        left.axhline(teacher_value, color="tab:red", linestyle="--", label=f"teacher {teacher_value:.1f}%")
        left.legend()
    left.set_ylabel(f"{metric} (%)")
    right.bar(names, energies, color="tab:green")
    right.set_ylabel("energy per frame (µJ)")
    figure.suptitle(f"Ablation ({report['task']})")
    figure.tight_layout()
    with atomic_path(path) as temporary:
        figure.savefig(temporary, dpi=120)
    plt.close(figure)


def run_ablation(config: dict, command: list[str] | None = None, log=log_line) -> dict:
    out_dir = Path(config["run"]["out_dir"])
    out_dir.mkdir(parents=True, exist_ok=True)
    teacher, teacher_info, _ = resolve_teacher(config, out_dir, log)
    teacher_spec = f"ann:{teacher_info['path']}" if config["teacher"]["spec"] == TRAIN_CNN else config["teacher"]["spec"]
    spl_reason = spl_unavailable_reason(config, teacher)
    variants = [("student", ()), ("student+SVS", SVS_KEYS), ("student+SVS+SPL", SVS_KEYS + SPL_KEYS)]
    rows, skipped, summaries = [], {}, {}
    for name, keep in variants:
        if keep and teacher is None:
            skipped[name] = "no teacher (teacher.spec is none)"
            continue
        if "prototype_weight" in keep and spl_reason:
            skipped[name] = f"SPL off: {spl_reason}"
            continue
        log(f"ablation: training {name}")
        summary = train_student(_variant(config, name, keep, out_dir, teacher_spec), command, log)
        summaries[name] = summary
        rows.append(_row(name, summary))
    last = summaries[rows[-1]["variant"]]
    # The distilled variants saw the teacher (metrics, energy); the original spec and the
    # description say where it came from.
    teacher_row = {"spec": "none"}
    if teacher is not None:
        teacher_row = {key: value for key, value in last["teacher"].items() if key != "training"}
        teacher_row.update(spec=teacher_info["spec"], description=teacher_info["description"])
    report = {
        "task": config["task"], "data": last["data"], "metric": last["metric"],
        "epochs": config["optim"]["epochs"], "seed": config["run"]["seed"],
        "student": {key: config["student"][key] for key in ("timesteps", "embed_dims", "depths", "descriptor_dim")},
        "rows": rows, "skipped": skipped, "teacher": teacher_row,
        "spl": (f"off ({spl_reason})" if spl_reason else
                f"on; {summaries['student+SVS+SPL']['distillation']['spl_classes']}"),
        "command": command or [],
        "paths": {"json": str(out_dir / "report.json"), "markdown": str(out_dir / "report.md"),
                  "plot": str(out_dir / "report.png")},
    }
    write_json_atomic(out_dir / "report.json", report)
    atomic_write_bytes(out_dir / "report.md", _markdown(report).encode())
    _plot(report, out_dir / "report.png")
    return report
