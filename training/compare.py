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


def compare_table(run_dirs: list[str], with_test: bool = False) -> str:
    header = ["run", "neuron", "levels", "T", "readout", "start", "loss terms", "epochs",
              "val R@1", "val R@5", "spikes/neuron", "energy SNN/ANN", "energy µJ"]
    if with_test:
        header += ["test R@1", "test R@5", "test R@1 L=10"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for run_dir in run_dirs:
        summary = _summary(run_dir)
        final, energy = summary["final"], summary["energy"]
        row = [Path(run_dir).name, *_describe(summary), _percent(final, "recall@1"), _percent(final, "recall@5"),
               f"{final['eval_spike_rate']:.3f}", f"{energy['ratio']:.3f}", f"{energy['snn_energy_pj'] * 1e-6:.2f}"]
        if with_test:
            test = summary["splits"]["test"]["student"]
            row += [_percent(test["L1"], "recall@1"), _percent(test["L1"], "recall@5"), _percent(test["L10"], "recall@1")]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def _percent(figures: dict, key: str) -> str:
    """A figure, or a dash where the run has none (Recall@5 of fewer than 5 places)."""
    return f"{figures[key]:.1f}%" if key in figures else "–"


def write_comparison(run_dirs: list[str], with_test: bool, out: str | None) -> str:
    table = compare_table(run_dirs, with_test)
    if out:
        atomic_write_bytes(Path(out), table.encode())
    return table
