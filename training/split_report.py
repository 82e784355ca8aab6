"""The figures every place-recognition run reports (the route_tail protocol): on each split (validation,
test stretch, whole route), the student, the teacher and patch-normalised pixels, single frame and
with sequence matching, all through the runtime's own metrics and sequence code.

Validation figures come from interleaved blocks, so they measure interpolation between training
places; the test stretch (route_tail) is new track. "whole_route" includes training places.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from vl2spike_ros.core.atomic_files import write_json_atomic
from vl2spike_ros.core.checkpoint import load_checkpoint
from vl2spike_ros.errors import InputError
from vl2spike_ros.evaluation.baselines import evaluate_similarity, patch_normalise, sad_similarity

from .config import feature_cache_dir
from .evaluation import embed_in_batches
from .loop import log_line
from .tasks import PlaceTask
from .teachers import load_teacher

SEQUENCE_LENGTHS = (1, 10)
REPORTED = ("recall@1", "recall@5", "recall@10", "recall@20", "pr_auc")


def patchnorm_of(images: torch.Tensor) -> np.ndarray:
    """uint8 [N, C, H, W] at the student's size -> patch-normalised grayscale descriptors."""
    return patch_normalise(images.float().mean(dim=1).numpy())


def split_figures(task, embed: Callable[[torch.Tensor], torch.Tensor],
                  sequence_lengths: tuple[int, ...] = SEQUENCE_LENGTHS) -> dict:
    """{split: {"places": n, model: {"L1": {recall@1, ...}, "L10": {...}}}} for a PlaceTask."""
    traverses = task.traverses
    similarities = {
        "student": (embed_in_batches(embed, traverses.query) @ embed_in_batches(embed, traverses.reference).T).numpy(),
        "patchnorm": sad_similarity(patchnorm_of(traverses.query), patchnorm_of(traverses.reference)),
    }
    if task.teacher_query is not None:
        similarities["teacher"] = (task.teacher_query @ task.teacher_reference.T).numpy()
    sets = {**task.split.named_sets(), "whole_route": np.arange(len(traverses))}
    report = {}
    for name, places in sets.items():
        frames = traverses.frames[places]
        entry: dict = {"places": int(len(places))}
        for model, similarity in similarities.items():
            block = similarity[np.ix_(places, places)]
            entry[model] = {f"L{length}": {key: round(float(value), 4) for key, value in
                                           evaluate_similarity(block, frames, frames, task.tolerance, length)
                                           .metrics.items() if key in REPORTED}
                            for length in sequence_lengths}
        report[name] = entry
    return report


def format_split_figures(report: dict) -> list[str]:
    lines = []
    for name, entry in report.items():
        for model, figures in entry.items():
            if model == "places":
                continue
            text = "  ".join(f"{length}: R@1 {values['recall@1']:.1f}% R@5 {values['recall@5']:.1f}% "
                             f"R@10 {values['recall@10']:.1f}%" for length, values in figures.items())
            lines.append(f"{name} ({entry['places']} places) {model}: {text}")
    return lines


def report_checkpoint(config: dict, checkpoint: str, out: str | None = None, log=log_line) -> dict:
    """`vl2spike-train report`: split figures of a runtime checkpoint on the config's place data,
    with the teacher of teacher.spec (an ann:FILE or VLM; train-cnn is refused: nothing to train
    here) beside it. The data is fitted to the checkpoint's own input size and resize mode."""
    if config["task"] != "place":
        raise InputError("vl2spike-train report: needs task: place (figures per split of a route)")
    if config["teacher"]["spec"] == "train-cnn":
        raise InputError("vl2spike-train report: teacher.spec train-cnn would train a teacher; "
                         "give ann:<run>/teacher.safetensors or none")
    model, info = load_checkpoint(checkpoint)
    teacher = None if config["teacher"]["spec"] in ("", "none") else load_teacher(
        config["teacher"]["spec"], config["teacher"]["batch_size"])
    task = PlaceTask(config, model.config, teacher, feature_cache_dir(config))
    report = {"checkpoint": str(checkpoint), "fingerprint": info.fingerprint, "split": config["data"]["split"],
              "data": task.describe(), "splits": split_figures(task, lambda images: model(images).descriptor)}
    for line in format_split_figures(report["splits"]):
        log(line)
    if out:
        write_json_atomic(out, report)
    return report
