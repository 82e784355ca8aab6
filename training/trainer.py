"""Trains the Spikformer student: task loss plus the switchable SVS and SPL terms of design §6.

A run directory holds `state.safetensors` (resume point, rewritten atomically each epoch),
`metrics.jsonl` (one record per epoch, including the eval-mode spike rate), `summary.json`, and,
when teacher.spec is train-cnn, the trained `teacher.safetensors`.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from vl2spike_ros.errors import InputError
from vl2spike_ros.core.atomic_files import atomic_write_bytes, write_json_atomic
from vl2spike_ros.model import SpikformerStudent, StudentConfig

from .config import config_digest
from .data import load_place_traverses
from .evaluation import SpikeRateMeter
from .export import ann_energy_of, energy_of, export_student
from .losses import (ManifoldAlignment, PrototypeBank, alignment_cosine, membrane_consistency,
                     prototype_text_info_nce, rate_consistency, relation_loss, step_consistency_kl,
                     temporal_warmup_weight, text_logit_kd)
from .loop import learning_rate, load_state, log_line, make_optimizer, save_state, seed_everything
from .split_report import format_split_figures, split_figures
from .tasks import ClassificationTask, PlaceTask, build_task
from .teacher_training import train_cnn_teacher
from .teachers import AnnTeacher, load_teacher
from .weight_average import frozen_copy, update_average

TRAIN_CNN = "train-cnn"


def resolve_teacher(config: dict, out_dir: Path, log) -> tuple[object | None, dict, object | None]:
    """-> (teacher or None, teacher provenance, place traverses loaded on the way or None)."""
    spec = config["teacher"]["spec"]
    if spec in ("", "none"):
        return None, {"spec": "none"}, None
    if spec == TRAIN_CNN:
        student = StudentConfig.from_dict(config["student"])
        path = out_dir / "teacher.safetensors"
        if config["task"] == "place":
            traverses = load_place_traverses(config["data"]["reference"], config["data"]["query"], student,
                                             config["data"]["max_places"])
            task = PlaceTask(config, student, None, "", traverses)
        else:
            traverses = None
            task = ClassificationTask(config, student, None, "")
        provenance = train_cnn_teacher(config, task, path, log)
        teacher = AnnTeacher(path)
        return teacher, {"spec": spec, "path": str(path), "identity": teacher.identity,
                         "description": teacher.description, "training": provenance}, traverses
    teacher = load_teacher(spec, config["teacher"]["batch_size"])
    return teacher, {"spec": spec, "identity": teacher.identity, "description": teacher.description}, None


class DistillationTerms:
    """Which of the design §6 terms are on for this run, and why any requested one is off."""

    def __init__(self, config: dict, task, has_teacher: bool) -> None:
        distill = config["distill"]
        self.weights = {key: distill[key] for key in ("align_weight", "relation_weight", "temporal_weight",
                                                      "prototype_weight", "logit_kd_weight")}
        self.disabled: dict[str, str] = {}
        needs_teacher = ("align_weight", "relation_weight", "prototype_weight", "logit_kd_weight")
        for key in needs_teacher:
            if self.weights[key] > 0 and not has_teacher:
                raise InputError(f"distill.{key} > 0 needs a teacher; set teacher.spec")
        for key in ("prototype_weight", "logit_kd_weight"):
            if self.weights[key] > 0 and task.text is None:
                self.disabled[key] = f"SPL off: {task.spl_reason}"
                self.weights[key] = 0.0
        self.membrane_weight = distill["membrane_weight"]
        self.rate_weight = distill["rate_weight"]
        self.warmup_epochs = distill["temporal_warmup_epochs"]

    def on(self, key: str) -> bool:
        return self.weights[key] > 0

    @property
    def needs_projector(self) -> bool:
        return any(self.on(key) for key in ("align_weight", "prototype_weight", "logit_kd_weight"))


def _build_modules(config: dict, student_config: StudentConfig, task, terms: DistillationTerms,
                   teacher_dim: int) -> nn.ModuleDict:
    modules = nn.ModuleDict({"student": SpikformerStudent(student_config)})
    if config["optim"]["ema_decay"] > 0:
        # Frozen (no gradients), so the optimizer skips it; saved and resumed with the rest.
        modules["student_average"] = frozen_copy(modules["student"])
    if terms.needs_projector:
        modules["alignment"] = ManifoldAlignment(student_config.descriptor_dim, teacher_dim)
    if hasattr(task, "classifier"):
        modules["classifier"] = task.classifier
    if terms.on("prototype_weight"):
        modules["prototypes"] = PrototypeBank(task.num_classes, teacher_dim, config["distill"]["prototype_momentum"])
    return modules


def _losses(modules: nn.ModuleDict, batch, terms: DistillationTerms, config: dict, task,
            epoch_progress: float) -> dict[str, torch.Tensor]:
    distill = config["distill"]
    want_membrane = terms.on("temporal_weight") and terms.membrane_weight > 0
    output = modules["student"](batch.images, return_membrane=want_membrane)
    losses = {"task": batch.task_loss(output.descriptor)}
    projected = modules["alignment"].project(output.descriptor) if "alignment" in modules else None
    if terms.on("align_weight"):
        losses["align"] = terms.weights["align_weight"] * alignment_cosine(projected, batch.teacher)
    if terms.on("relation_weight"):
        losses["relation"] = terms.weights["relation_weight"] * relation_loss(output.descriptor, batch.teacher)
    if terms.on("temporal_weight"):
        temporal = step_consistency_kl(batch.step_logits(output))
        if terms.membrane_weight > 0:
            temporal = temporal + terms.membrane_weight * membrane_consistency(output.membrane_potentials)
        if terms.rate_weight > 0:
            temporal = temporal + terms.rate_weight * rate_consistency(output.token_rates)
        warmup = temporal_warmup_weight(epoch_progress, terms.warmup_epochs)
        losses["temporal"] = terms.weights["temporal_weight"] * warmup * temporal
    if terms.on("prototype_weight"):
        classes, prototypes = modules["prototypes"].current(projected, batch.spl_labels)
        losses["prototype"] = terms.weights["prototype_weight"] * prototype_text_info_nce(
            prototypes, classes, task.text, distill["prototype_temperature"])
    if terms.on("logit_kd_weight"):
        losses["logit_kd"] = terms.weights["logit_kd_weight"] * text_logit_kd(
            projected, batch.teacher, task.text, distill["kd_temperature"], distill["kd_student_temperature"])
    return losses


@torch.no_grad()
def recalibrate_batchnorm(model: SpikformerStudent, images: torch.Tensor, batch_size: int = 64) -> None:
    """Recomputes every BatchNorm's running statistics as an exact average over `images`.

    The conv weights start tiny (std 0.02), so the true activation variance is ~0.02 while the
    running variance starts at 1: until hundreds of steps have washed that out, eval-mode BN
    shrinks activations below threshold and the student emits no spikes (design §4). A few
    forward passes fix the statistics exactly, whatever the momentum and the run length.
    """
    norms = [module for module in model.modules() if isinstance(module, nn.modules.batchnorm._BatchNorm)]
    momenta = [norm.momentum for norm in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # None: cumulative average over the passes below
    model.train()
    for start in range(0, len(images), batch_size):
        model(images[start:start + batch_size])
    for norm, momentum in zip(norms, momenta):
        norm.momentum = momentum
    model.eval()


@torch.no_grad()
def center_descriptor_head(model: SpikformerStudent, images: torch.Tensor) -> None:
    """Sets the projection bias so that the mean pooled spike feature maps to zero.

    Pooled spike counts are all non-negative and share a large common component, so freshly
    initialised descriptors of different places point almost the same way (cosine ~1) and
    InfoNCE starts from a collapsed geometry. Centring once, before the first step, spreads them.
    The projection's input is read with a hook, whatever pooling the head uses.
    """
    pooled: list[torch.Tensor] = []
    handle = model.projection.register_forward_pre_hook(lambda module, inputs: pooled.append(inputs[0]))
    try:
        model.train()(images)
    finally:
        handle.remove()
    mean_pooled = pooled[0].reshape(-1, pooled[0].shape[-1]).mean(dim=0)
    model.projection.bias.copy_(-(model.projection.weight @ mean_pooled))


def evaluate_student(model: SpikformerStudent, task) -> dict[str, float]:
    recalibrate_batchnorm(model, task.calibration_images())
    model.eval()
    meter = SpikeRateMeter(model)
    try:
        metrics = task.evaluate(lambda images: model(images).descriptor)
    finally:
        meter.close()
    metrics["eval_spike_rate"] = meter.rate
    return metrics


def train_student(config: dict, command: list[str] | None = None, log=log_line) -> dict:
    """Runs (or resumes) one training run; returns the summary also written to summary.json."""
    run = config["run"]
    out_dir = Path(run["out_dir"])
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(max(1, run["threads"]))
    started = time.perf_counter()
    teacher, teacher_info, traverses = resolve_teacher(config, out_dir, log)
    student_config = StudentConfig.from_dict(config["student"])
    cache_dir = config["teacher"]["feature_cache"] or str(out_dir / "feature_cache")
    task = build_task(config, student_config, teacher, cache_dir, traverses)
    terms = DistillationTerms(config, task, teacher is not None)
    for key, reason in terms.disabled.items():
        log(f"note: distill.{key} requested but {reason}")
    teacher_info["metrics"] = task.teacher_metrics()
    if isinstance(teacher, AnnTeacher):
        teacher_info["energy"] = ann_energy_of(teacher.model, task.energy_images(32))

    generator = seed_everything(run["seed"], run["threads"])
    modules = _build_modules(config, student_config, task, terms, teacher.embed_dim if teacher else 0)
    optim = config["optim"]
    optimizer = make_optimizer(modules, optim["lr"], optim["weight_decay"])
    digest = config_digest(config)
    state_path = out_dir / "state.safetensors"
    done, records = 0, []
    if run["resume"] and state_path.is_file():
        done, records = load_state(state_path, modules, optimizer, generator, digest)
        log(f"resuming {out_dir} after epoch {done}")
    student = modules["student"]
    if done == 0:
        center_descriptor_head(student, task.calibration_images(128))
        if "student_average" in modules:
            modules["student_average"].load_state_dict(student.state_dict())
    # What is evaluated and exported: the weight average when optim.ema_decay > 0.
    evaluated = modules["student_average"] if "student_average" in modules else student
    epochs = optim["epochs"]
    for epoch in range(done, epochs):
        modules.train()
        batches = task.epoch_batches(optim["batch_size"], generator)
        bar = tqdm(batches, desc=f"student epoch {epoch + 1}/{epochs}", disable=not run["progress"], leave=False)
        epoch_started = time.perf_counter()
        sums: dict[str, float] = {}
        for step, positions in enumerate(bar):
            progress = epoch + step / len(batches)
            lr = learning_rate(optim["lr"], progress, optim["warmup_epochs"], epochs)
            for group in optimizer.param_groups:
                group["lr"] = lr
            losses = _losses(modules, task.batch(positions, generator), terms, config, task, progress)
            total = sum(losses.values())
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            nn.utils.clip_grad_norm_(modules.parameters(), optim["grad_clip"])
            optimizer.step()
            if evaluated is not student:
                update_average(evaluated, student, optim["ema_decay"], epoch * len(batches) + step)
            for name, value in losses.items():
                sums[name] = sums.get(name, 0.0) + value.item()
            bar.set_postfix(loss=f"{total.item():.3f}")
        train_seconds = time.perf_counter() - epoch_started
        metrics = evaluate_student(evaluated, task)
        record = {"epoch": epoch + 1, "train_seconds": round(train_seconds, 2),
                  **{f"loss_{name}": value / max(1, len(batches)) for name, value in sums.items()}, **metrics}
        records.append(record)
        save_state(state_path, modules, optimizer, generator, epoch + 1, digest, records)
        lines = "".join(json.dumps(item) + "\n" for item in records)
        atomic_write_bytes(out_dir / "metrics.jsonl", lines.encode())
        log(f"student epoch {epoch + 1}/{epochs}: {task.metric} {metrics[task.metric]:.1f}% "
            f"eval spike rate {metrics['eval_spike_rate']:.3f} ({train_seconds:.0f} s)")
    student = evaluated.eval()
    splits = {}
    if isinstance(task, PlaceTask):
        recalibrate_batchnorm(student, task.calibration_images())
        splits = split_figures(task, lambda images: student(images).descriptor)
        for line in format_split_figures(splits):
            log(line)
    summary = {
        "task": config["task"],
        "data": task.describe(),
        "split": config["data"]["split"] if isinstance(task, PlaceTask) else "",
        "splits": splits,
        "metric": task.metric,
        "final": records[-1],
        "epochs": records,
        "teacher": teacher_info,
        "distillation": {"weights": terms.weights, "disabled": terms.disabled, "spl_classes": task.spl_reason,
                         "membrane_weight": terms.membrane_weight, "rate_weight": terms.rate_weight},
        "student_config": student_config.to_dict(),
        "parameters": sum(p.numel() for p in student.parameters()),
        "energy": energy_of(student, task.energy_images(32)),
        "config": config,
        "command": command or [],
        "wall_seconds_this_invocation": round(time.perf_counter() - started, 1),
    }
    if run["export"]:
        summary["export"] = export_student(run["export"], student, summary)
        log(f"exported {run['export']} (fingerprint {summary['export']['fingerprint'][:12]})")
    write_json_atomic(out_dir / "summary.json", summary)
    return summary
