"""Which distillation terms of design §6 a run uses, the modules they need, and the loss of one batch
(task loss plus the switched-on SVS and SPL terms)."""
from __future__ import annotations

import dataclasses

import torch
from torch import nn

from vl2spike_ros.errors import InputError
from vl2spike_ros.model import SpikformerStudent, StudentConfig, StudentOutput

from .energy_term import EnergyTap
from .losses import (ManifoldAlignment, PrototypeBank, alignment_cosine, membrane_consistency,
                     prototype_text_info_nce, rate_consistency, relation_loss, step_consistency_kl,
                     temporal_warmup_weight, text_logit_kd)
from .twin_distillation import NeuronTap, layer_alignment, load_twin
from .weight_average import frozen_copy


class DistillationTerms:
    """Which of the design §6 terms are on for this run, and why any requested one is off."""

    def __init__(self, config: dict, task, has_teacher: bool) -> None:
        distill = config["distill"]
        self.weights = {key: distill[key] for key in ("align_weight", "relation_weight", "temporal_weight",
                                                      "prototype_weight", "logit_kd_weight", "twin_weight",
                                                      "energy_weight")}
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
        self.student_tap: NeuronTap | None = None
        self.energy_tap: EnergyTap | None = None
        self.twin: nn.Module | None = None
        self.twin_tap: NeuronTap | None = None

    def on(self, key: str) -> bool:
        return self.weights[key] > 0

    @property
    def needs_projector(self) -> bool:
        return any(self.on(key) for key in ("align_weight", "prototype_weight", "logit_kd_weight"))


def build_modules(config: dict, student_config: StudentConfig, task, terms: DistillationTerms,
                  teacher_dim: int) -> nn.ModuleDict:
    modules = nn.ModuleDict({"student": SpikformerStudent(student_config)})
    if config["optim"]["ema_decay"] > 0:
        # Frozen (no gradients), so the optimizer skips it; saved and resumed with the rest.
        modules["student_average"] = frozen_copy(modules["student"])
    if terms.needs_projector:
        modules["alignment"] = ManifoldAlignment(student_config.descriptor_dim, teacher_dim)
    if hasattr(task, "classifier"):
        modules["classifier"] = task.classifier
    if terms.on("energy_weight"):
        terms.energy_tap = EnergyTap(modules["student"])
    if terms.on("twin_weight"):
        # Not in the ModuleDict: the twin is frozen and not part of the training state (the
        # config digest holds its path).
        terms.twin = load_twin(config["distill"]["twin_checkpoint"], modules["student"])
        terms.student_tap, terms.twin_tap = NeuronTap(modules["student"]), NeuronTap(terms.twin)
    if terms.on("prototype_weight"):
        modules["prototypes"] = PrototypeBank(task.num_classes, teacher_dim, config["distill"]["prototype_momentum"])
    return modules


def student_forward(student: SpikformerStudent, images: torch.Tensor, return_membrane: bool,
                    autocast: str) -> StudentOutput:
    """The student's training forward, under bfloat16 autocast when `autocast` is bf16; its
    outputs come back in float32 either way, so every loss is computed in float32."""
    if autocast == "off":
        return student(images, return_membrane=return_membrane)
    with torch.autocast(images.device.type, dtype=torch.bfloat16):
        output = student(images, return_membrane=return_membrane)
    return StudentOutput(**{field.name: _float32(getattr(output, field.name))
                            for field in dataclasses.fields(output)})


def _float32(value):
    return [item.float() for item in value] if isinstance(value, list) else value.float()


def batch_losses(modules: nn.ModuleDict, batch, terms: DistillationTerms, config: dict, task,
                 epoch_progress: float) -> dict[str, torch.Tensor]:
    distill = config["distill"]
    want_membrane = terms.on("temporal_weight") and terms.membrane_weight > 0
    output = student_forward(modules["student"], batch.images, want_membrane, config["optim"]["autocast"])
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
    if terms.on("energy_weight"):
        losses["energy"] = terms.weights["energy_weight"] * terms.energy_tap.ratio()
    if terms.on("twin_weight"):
        student_maps = {name: value.float() for name, value in terms.student_tap.take().items()}
        with torch.no_grad():
            terms.twin(batch.images)
        losses["twin"] = terms.weights["twin_weight"] * layer_alignment(student_maps, terms.twin_tap.take())
    if terms.on("prototype_weight"):
        classes, prototypes = modules["prototypes"].current(projected, batch.spl_labels)
        losses["prototype"] = terms.weights["prototype_weight"] * prototype_text_info_nce(
            prototypes, classes, task.text, distill["prototype_temperature"])
    if terms.on("logit_kd_weight"):
        losses["logit_kd"] = terms.weights["logit_kd_weight"] * text_logit_kd(
            projected, batch.teacher, task.text, distill["kd_temperature"], distill["kd_student_temperature"])
    return losses
