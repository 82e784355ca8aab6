"""`vl2spike-train compare RUN_DIR ...`: one markdown table of finished runs, from their summary.json:
what each student was (neuron, levels, timesteps, readout, start, loss terms, epochs) and its
figures. Validation figures by default; the test stretch only with --test, because the test
stretch must not steer choices."""
from __future__ import annotations

import json
from pathlib import Path

from vl2spike_ros.core.atomic_files import atomic_write_bytes
from vl2spike_ros.errors import InputError

TERMS = ("align_weight", "relation_weight", "temporal_weight", "prototype_weight", "logit_kd_weight",
         "twin_weight", "energy_weight")


def _summary(run_dir: str) -> dict:
    path = Path(run_dir) / "summary.json"
    if not path.is_file():
        raise InputError(f"compare: {path} does not exist; expected the folder of a finished training run")
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise InputError(f"compare: {path} is not a readable summary ({error})") from None


def _describe(summary: dict) -> list[str]:
    student, config = summary["student_config"], summary["config"]
    levels = f"0..{student.get('spike_levels', 1)}" if student.get("neuron") == "integer" else ""
    start = Path(config["run"].get("init_checkpoint", "")).parent.name or "scratch"
    terms = ", ".join(f"{key.removesuffix('_weight')} {config['distill'][key]:g}" for key in TERMS
                      if config["distill"].get(key, 0) > 0) or "task only"
    return [student.get("neuron", "lif"), levels, str(student["timesteps"]), student.get("readout", "spikes"),
            start, terms, str(len(summary["epochs"]))]


def cross_domain_sets(summaries: list[dict]) -> list[str]:
    """Names of the validation sets off the route (`<set>/recall@1` in a run's final figures)."""
    names = []
    for summary in summaries:
        for key in summary["final"]:
            name, _, metric = key.rpartition("/")
            if name and metric == "recall@1" and name not in names:
                names.append(name)
    return names


def compare_table(run_dirs: list[str], with_test: bool = False, with_mean: bool = False) -> str:
    """One row a run; with_mean adds the mean and sample standard deviation of every figure (seeds)."""
    summaries = [_summary(run_dir) for run_dir in run_dirs]
    sets = cross_domain_sets(summaries)
    header = ["run", "neuron", "levels", "T", "readout", "start", "loss terms", "epochs",
              "val R@1", "val R@5", *[f"{name} R@1" for name in sets], "spikes/neuron", "energy SNN/ANN", "energy µJ"]
    if with_test:
        header += ["test R@1", "test R@5", "test R@1 L=10"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    columns: list[list[float | None]] = []
    for run_dir, summary in zip(run_dirs, summaries):
        final, energy = summary["final"], summary["energy"]
        figures = [final.get("recall@1"), final.get("recall@5"), *[final.get(f"{name}/recall@1") for name in sets],
                   final["eval_spike_rate"], energy["ratio"], energy["snn_energy_pj"] * 1e-6]
        if with_test:
            test = summary["splits"]["test"]["student"]
            figures += [test["L1"].get("recall@1"), test["L1"].get("recall@5"), test["L10"].get("recall@1")]
        columns.append(figures)
        lines.append("| " + " | ".join([Path(run_dir).name, *_describe(summary)]
                                       + [_format(value, index, len(sets)) for index, value in enumerate(figures)]) + " |")
    if with_mean and len(summaries) > 1:
        cells = []
        for index, values in enumerate(zip(*columns)):
            present = [value for value in values if value is not None]
            if len(present) < 2:
                cells.append("–")
                continue
            mean = sum(present) / len(present)
            deviation = (sum((value - mean) ** 2 for value in present) / (len(present) - 1)) ** 0.5
            cells.append(f"{_format(mean, index, len(sets))} ± {_format(deviation, index, len(sets))}")
        lines.append("| " + " | ".join([f"mean ± sd ({len(summaries)} runs)", *[""] * 7] + cells) + " |")
    return "\n".join(lines) + "\n"


def _format(value: float | None, index: int, set_count: int) -> str:
    """Recall figures as percentages; the spike rate and the energy ratio with three decimals."""
    if value is None:
        return "–"  # e.g. Recall@5 of fewer than 5 places
    rate_column = 2 + set_count
    if index in (rate_column, rate_column + 1):
        return f"{value:.3f}"
    if index == rate_column + 2:
        return f"{value:.2f}"
    return f"{value:.1f}%"


def write_comparison(run_dirs: list[str], with_test: bool, out: str | None, with_mean: bool = False) -> str:
    table = compare_table(run_dirs, with_test, with_mean)
    if out:
        atomic_write_bytes(Path(out), table.encode())
    return table
