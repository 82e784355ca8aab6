"""The two training tasks: what a batch holds, the task loss, per-step outputs and evaluation.

Place recognition: a batch is B training places, each seen once in the query season and once in
the reference season; the task loss is InfoNCE across seasons. Classification: a batch is B
labelled images and the task loss is a cosine classifier's cross-entropy.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vl2spike_ros.errors import InputError
from vl2spike_ros.model import StudentConfig, StudentOutput

from .augmentation import augment
from .data import (ClassImages, PlaceSplit, PlaceTraverses, as_float, load_class_folders, load_place_traverses,
                   make_split, student_size_images)
from .domains import extra_place_ids, load_extra_domains, load_validation_sets
from .evaluation import embed_in_batches, place_recall, recall_from_embeddings
from .feature_cache import teacher_features
from .loop import epoch_batches
from .losses import cross_season_info_nce
from .teachers import Teacher, class_text_embeddings


@dataclass
class Batch:
    images: torch.Tensor                 # float [N, C, H, W], augmented
    teacher: torch.Tensor | None         # [N, E] teacher embeddings of the same images
    spl_labels: torch.Tensor | None      # [N] class (or pseudo-class) of each image for SPL
    task_loss: Callable[[torch.Tensor], torch.Tensor]  # descriptors [N, D] -> scalar
    step_logits: Callable[[StudentOutput], torch.Tensor]  # [T, N', K] per-step task outputs


class PlaceTask:
    metric = "recall@1"

    def __init__(self, config: dict, student: StudentConfig, teacher: Teacher | None, cache_dir: str,
                 traverses: PlaceTraverses | None = None) -> None:
        data = config["data"]
        self.traverses = traverses or load_place_traverses(data["reference"], data["query"], student,
                                                           data["max_places"])
        self.split: PlaceSplit = make_split(data, self.traverses.frames)
        self.tolerance = data["tolerance_frames"]
        self.augment = data["augment"]
        self.augment_policy = data["augment_policy"]
        self.hard_negative_run = data["hard_negative_run"]
        self.temperature = config["optim"]["task_temperature"]
        self.num_train = len(self.split.train)
        self.extra_domains = load_extra_domains(data["extra_domains"], student)
        self.extra_per_batch = data["extra_per_batch"]
        self.batch_size = config["optim"]["batch_size"]
        self.validation_sets = load_validation_sets(data["validation_sets"], student)
        self.teacher_query = self.teacher_reference = None
        self.text = None
        self.spl_reason = "no teacher"
        if teacher is not None:
            self.teacher_query = teacher_features(teacher, self.traverses.query_raw, cache_dir, "query")
            self.teacher_reference = teacher_features(teacher, self.traverses.reference_raw, cache_dir, "reference")
            prompts = config["teacher"]["place_prompts"]
            if not prompts:
                self.spl_reason = ("places have no class names and teacher.place_prompts is empty, "
                                   "so there are no text classes")
            else:
                self.text = class_text_embeddings(teacher, prompts, config["teacher"]["prompt_templates"])
                self.spl_reason = ("teacher has no text side" if self.text is None else
                                   f"pseudo-classes: the closest of the scene prompts {prompts} "
                                   "to the teacher's image embedding")
        self.extra_teacher = []
        if teacher is not None:
            for domain in self.extra_domains:
                query = teacher_features(teacher, student_size_images(domain.query), cache_dir, f"{domain.name}-query")
                reference = (query if domain.reference is domain.query else
                             teacher_features(teacher, student_size_images(domain.reference), cache_dir,
                                              f"{domain.name}-reference"))
                self.extra_teacher.append((query, reference))
        if self.extra_domains and self.text is not None:
            raise InputError("training config: SPL (teacher.place_prompts) covers the route's places only; "
                             "set data.extra_domains to [] or teacher.place_prompts to []")
        if self.text is not None:
            self.pseudo_query = (self.teacher_query @ self.text.T).argmax(dim=1)
            self.pseudo_reference = (self.teacher_reference @ self.text.T).argmax(dim=1)

    @property
    def num_classes(self) -> int:
        return 0 if self.text is None else self.text.shape[0]

    def describe(self) -> str:
        return self.split.description

    def epoch_batches(self, batch_size: int, generator: torch.Generator) -> list[np.ndarray]:
        """Batches made of runs of nearby places (every second place along the route).

        Random batches from ~1,500 places almost never hold two places a few hundred metres
        apart, so the student never learns to tell neighbours apart and Recall@1 stalls while
        Recall@10 grows. A run of places 2, 4, ... apart puts such hard negatives (in the other
        season) in every batch; the places 1 apart stay out of the run and are masked anyway.
        """
        run = self.hard_negative_run
        if run <= 1:
            return epoch_batches(self.num_train, batch_size, generator)
        offset = int(torch.randint(0, 2 * run, (1,), generator=generator))
        positions = np.roll(np.arange(self.num_train), -offset)
        windows = [positions[start:start + 2 * run] for start in range(0, self.num_train, 2 * run)]
        runs = [window[parity::2] for window in windows for parity in (0, 1) if len(window[parity::2])]
        order = torch.randperm(len(runs), generator=generator).tolist()
        batches, current = [], []
        for index in order:
            current.extend(runs[index].tolist())
            if len(current) >= batch_size:
                batches.append(np.array(current))
                current = []
        if len(current) >= 2:
            batches.append(np.array(current))
        return batches

    def batch(self, positions: np.ndarray, generator: torch.Generator) -> Batch:
        places = self.split.train[positions]
        queries, references = [self.traverses.query[places]], [self.traverses.reference[places]]
        place_ids = [torch.from_numpy(places)]
        teacher_queries, teacher_references = [], []
        if self.teacher_query is not None:
            teacher_queries.append(self.teacher_query[places])
            teacher_references.append(self.teacher_reference[places])
        for position, domain in enumerate(self.extra_domains):
            query_rows, reference_rows = domain.sample(self.extra_per_batch, generator)
            queries.append(domain.query[query_rows])
            references.append(domain.reference[reference_rows])
            place_ids.append(extra_place_ids(position, len(query_rows)))
            if self.extra_teacher:
                teacher_queries.append(self.extra_teacher[position][0][query_rows])
                teacher_references.append(self.extra_teacher[position][1][reference_rows])
        images = as_float(torch.cat(queries + references))
        if self.augment:
            images = augment(images, generator, self.augment_policy)
        place_ids = torch.cat(place_ids)
        size = len(place_ids)
        teacher = torch.cat(teacher_queries + teacher_references) if teacher_queries else None
        spl_labels = None
        if self.text is not None:
            spl_labels = torch.cat([self.pseudo_query[places], self.pseudo_reference[places]])
        temperature = self.temperature

        def task_loss(descriptors: torch.Tensor) -> torch.Tensor:
            return cross_season_info_nce(descriptors[:size], descriptors[size:], place_ids, temperature)

        def step_logits(output: StudentOutput) -> torch.Tensor:
            steps = output.step_descriptors
            return torch.einsum("tbd,tcd->tbc", steps[:, :size], steps[:, size:]) / temperature

        return Batch(images, teacher, spl_labels, task_loss, step_logits)

    def evaluate(self, embed: Callable[[torch.Tensor], torch.Tensor]) -> dict[str, float]:
        """The route's validation figures, plus `<set>/recall@K` of each cross-domain validation set."""
        metrics = place_recall(embed, self.traverses, self.split.heldout, self.tolerance)
        for validation in self.validation_sets:
            figures = recall_from_embeddings(embed_in_batches(embed, validation.query),
                                             embed_in_batches(embed, validation.reference),
                                             validation.frames, validation.tolerance)
            metrics.update({f"{validation.name}/{key}": value for key, value in figures.items()})
        return metrics

    def teacher_metrics(self) -> dict[str, float]:
        if self.teacher_query is None:
            return {}
        heldout = self.split.heldout
        return recall_from_embeddings(self.teacher_query[heldout], self.teacher_reference[heldout],
                                      self.traverses.frames[heldout], self.tolerance)

    def energy_images(self, count: int) -> torch.Tensor:
        return as_float(self.traverses.query[self.split.heldout[:count]])

    def calibration_images(self, count: int = 256) -> torch.Tensor:
        """Training images of both seasons, spread along the route (never held-out ones), and of
        every extra domain in the share a training batch gives it: the eval-mode BatchNorm
        statistics are then those the student trained under, not the route's alone."""
        extra_share = len(self.extra_domains) * self.extra_per_batch
        route_count = max(2, round(count * self.batch_size / (self.batch_size + extra_share)))
        places = self.split.train[np.linspace(0, self.num_train - 1, route_count // 2).astype(int)]
        images = [self.traverses.query[places], self.traverses.reference[places]]
        for domain in self.extra_domains:
            share = max(1, round(count * self.extra_per_batch / (self.batch_size + extra_share)) // 2)
            for pool in (domain.query, domain.reference):
                images.append(pool[np.linspace(0, len(pool) - 1, share).astype(int)])
        return as_float(torch.cat(images))


class CosineClassifier(nn.Module):
    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(num_classes, dim) * 0.02)

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return embeddings @ F.normalize(self.weight, dim=-1).T


class ClassificationTask:
    metric = "accuracy"

    def __init__(self, config: dict, student: StudentConfig, teacher: Teacher | None, cache_dir: str) -> None:
        data = config["data"]
        self.train: ClassImages = load_class_folders(data["train"], student, data["max_per_class"])
        self.val: ClassImages = load_class_folders(data["val"], student, data["max_per_class"],
                                                   class_names=self.train.class_names)
        self.augment = data["augment"]
        self.augment_policy = data["augment_policy"]
        self.temperature = config["optim"]["task_temperature"]
        self.num_train = len(self.train.labels)
        self.classifier = CosineClassifier(student.descriptor_dim, len(self.train.class_names))
        self.teacher_train = self.teacher_val = self.text = None
        self.spl_reason = "no teacher"
        if teacher is not None:
            self.teacher_train = teacher_features(teacher, self.train.raw, cache_dir, "train")
            self.teacher_val = teacher_features(teacher, self.val.raw, cache_dir, "val")
            self.text = class_text_embeddings(teacher, self.train.class_names,
                                              config["teacher"]["prompt_templates"])
            self.spl_reason = ("teacher has no text side" if self.text is None else
                               f"class names {self.train.class_names} in the prompt templates")

    @property
    def num_classes(self) -> int:
        return len(self.train.class_names)

    def epoch_batches(self, batch_size: int, generator: torch.Generator) -> list[np.ndarray]:
        return epoch_batches(self.num_train, batch_size, generator)

    def describe(self) -> str:
        return (f"{self.num_train} training images, {len(self.val.labels)} validation images, "
                f"{self.num_classes} classes")

    def batch(self, positions: np.ndarray, generator: torch.Generator) -> Batch:
        index = torch.from_numpy(positions)
        images = as_float(self.train.images[index])
        if self.augment:
            images = augment(images, generator, self.augment_policy, max_shift=2)
        labels = self.train.labels[index]
        teacher = None if self.teacher_train is None else self.teacher_train[index]
        classifier, temperature = self.classifier, self.temperature

        def task_loss(descriptors: torch.Tensor) -> torch.Tensor:
            return F.cross_entropy(classifier(descriptors) / temperature, labels)

        def step_logits(output: StudentOutput) -> torch.Tensor:
            return classifier(output.step_descriptors) / temperature

        return Batch(images, teacher, labels, task_loss, step_logits)

    def evaluate(self, embed: Callable[[torch.Tensor], torch.Tensor]) -> dict[str, float]:
        embeddings = embed_in_batches(embed, self.val.images)
        with torch.inference_mode():
            predicted = self.classifier(embeddings).argmax(dim=1)
        return {"accuracy": 100.0 * float((predicted == self.val.labels).float().mean())}

    def teacher_metrics(self) -> dict[str, float]:
        """Zero-shot accuracy of the teacher on the validation images (needs its text side)."""
        if self.teacher_val is None or self.text is None:
            return {}
        predicted = (self.teacher_val @ self.text.T).argmax(dim=1)
        return {"zero_shot_accuracy": 100.0 * float((predicted == self.val.labels).float().mean())}

    def energy_images(self, count: int) -> torch.Tensor:
        return as_float(self.val.images[:count])

    def calibration_images(self, count: int = 256) -> torch.Tensor:
        return as_float(self.train.images[np.linspace(0, self.num_train - 1, count).astype(int)])


def build_task(config: dict, student: StudentConfig, teacher: Teacher | None, cache_dir: str,
               traverses: PlaceTraverses | None = None):
    if config["task"] == "place":
        return PlaceTask(config, student, teacher, cache_dir, traverses)
    if traverses is not None:
        raise InputError("classification task: place traverses were passed")
    return ClassificationTask(config, student, teacher, cache_dir)
