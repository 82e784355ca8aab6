"""The twin stage of the recipe (optim.twin_epochs > 0): before the spiking student, train its ANN
twin (the same shape with ReLUs, student.neuron=relu, one timestep) on the task alone (or with the
teacher's SVS alignment, distill.twin_alignment), then start the student from the twin's weights. The twin sees the same data, split, augmentation and seed;
its run directory is <out_dir>/twin (an ablation keeps one per seed), reused when it already
finished."""
from __future__ import annotations

import copy
from pathlib import Path

from .config import feature_cache_dir, teacher_cache_dir
from .loop import log_line

# The twin learns the task alone: no teacher, no distillation term, no energy term.
DISTILL_OFF = ("align_weight", "relation_weight", "temporal_weight", "prototype_weight", "logit_kd_weight",
               "twin_weight", "energy_weight")


# Kept with distill.twin_alignment: the teacher's knowledge then shapes the representation the
# spiking student inherits, not only the student's last stage.
ALIGNMENT = ("align_weight", "relation_weight")


def twin_config(config: dict, folder: str = "twin") -> dict:
    twin = copy.deepcopy(config)
    twin["student"].update(neuron="relu", spike_levels=1, timesteps=1)
    aligned = config["distill"]["twin_alignment"] and any(config["distill"][key] > 0 for key in ALIGNMENT)
    for key in DISTILL_OFF:
        if not (aligned and key in ALIGNMENT):
            twin["distill"][key] = 0.0
    if not aligned:
        twin["teacher"]["spec"] = "none"
    # The twin's run folder sits one level deeper: keep the student's teacher cache, so the teacher
    # the twin trains is the one the student reuses.
    twin["teacher"].update(cache_dir=str(teacher_cache_dir(config)), feature_cache=feature_cache_dir(config))
    twin["optim"].update(epochs=config["optim"]["twin_epochs"], twin_epochs=0)
    out_dir = Path(config["run"]["out_dir"]) / folder
    twin["run"].update(out_dir=str(out_dir), export=str(out_dir / "twin.safetensors"), init_checkpoint="")
    return twin


def train_twin_first(config: dict, train, command: list[str] | None, log=log_line,
                     folder: str = "twin") -> tuple[dict, dict | None]:
    """Trains (or reuses) the twin; returns the student's config, now starting from the twin, and
    what the summary records of the twin (its figures and checkpoint)."""
    twin = twin_config(config, folder)
    log(f"twin stage: the ANN twin first ({twin['optim']['epochs']} epochs, {twin['run']['out_dir']})")
    summary = train(twin, command, log)
    student = copy.deepcopy(config)
    student["run"]["init_checkpoint"] = twin["run"]["export"]
    if not summary:  # a rank other than 0 under torchrun: rank 0 makes the summary and keeps the record
        return student, None
    record = {"checkpoint": twin["run"]["export"], "epochs": twin["optim"]["epochs"], "final": summary["final"],
              "splits": {name: entry.get("student", {}) for name, entry in summary.get("splits", {}).items()},
              "energy": summary["energy"]}
    return student, record
