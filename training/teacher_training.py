"""Trains the ANN CNN teacher (ann_encoder) on the student's own task and training data: InfoNCE
across seasons on the training places of the same split (places never seen by the teacher stay
held out), or the cosine classifier's cross-entropy on the training images (classification).
Trained teachers are kept in the teacher cache (config.teacher_cache_dir) by the digest of what
shapes them, so runs with the same teacher settings and data train it once."""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np
from torch import nn
from tqdm import tqdm

from vl2spike_ros.errors import InputError
from vl2spike_ros.model import StudentConfig

from .ann_encoder import build_ann_encoder, load_ann_encoder, place_cnn_config, save_ann_encoder
from .config import teacher_cache_dir, without_neutral_settings
from .pretrained_encoder import efficientnet_config, read_imagenet_weights
from .loop import learning_rate, log_line, make_optimizer, seed_everything
from .tasks import ClassificationTask, CosineClassifier, PlaceTask, build_task
from .teachers import AnnTeacher, load_teacher

TRAIN_CNN = "train-cnn"


def teacher_digest(config: dict, task: PlaceTask | ClassificationTask) -> str:
    """What shapes the teacher: its own settings, the data settings (paths, split, augmentation),
    the pixels it trains and is validated on as loaded (and the places' frame numbers or the
    labels), the student's input size and normalisation, and the seed."""
    pixels = hashlib.sha256()
    arrays = ((task.traverses.frames, task.traverses.reference, task.traverses.query,
               *[domain.images_for_digest() for domain in task.extra_domains]) if isinstance(task, PlaceTask)
              else (task.train.labels, task.train.images, task.val.labels, task.val.images))
    for array in arrays:
        pixels.update(np.ascontiguousarray(array).tobytes())
    neutral = without_neutral_settings(config)
    shaping = {"cnn": neutral["teacher"]["cnn"], "data": neutral["data"], "seed": config["run"]["seed"],
               "pixels": pixels.hexdigest(),
               "input": {key: config["student"][key] for key in
                         ("image_height", "image_width", "in_channels", "input_normalization", "patch_norm_size")}}
    return hashlib.sha256(json.dumps(shaping, sort_keys=True).encode()).hexdigest()


def teacher_encoder_config(settings: dict, student: dict) -> dict:
    """The teacher.cnn section -> the encoder's config, at the student's input size."""
    if settings["architecture"] == "efficientnet-lite0":
        return efficientnet_config(settings["blocks"], settings["upsample"], settings["embed_dim"],
                                   student["image_height"], student["image_width"])
    if settings["architecture"] != "place-cnn":
        raise InputError(f"teacher.cnn.architecture: {settings['architecture']!r}; expected place-cnn or "
                         "efficientnet-lite0")
    return place_cnn_config(settings["widths"], settings["strides"], settings["embed_dim"], student["image_height"],
                            student["image_width"], student["in_channels"], student["input_normalization"],
                            student["patch_norm_size"])


def train_cnn_teacher(config: dict, task: PlaceTask | ClassificationTask, out_path: Path, digest: str,
                      log=log_line) -> dict:
    """Trains the CNN teacher and writes it to `out_path` (atomically). Returns its provenance
    (digest, settings, split, held-out metrics, timing)."""
    settings = config["teacher"]["cnn"]
    student = config["student"]
    generator = seed_everything(config["run"]["seed"], config["run"]["threads"])
    model = build_ann_encoder(teacher_encoder_config(settings, student))
    if settings["architecture"] == "efficientnet-lite0":
        model.load_imagenet(read_imagenet_weights())
    trained = nn.ModuleList([model])
    if isinstance(task, ClassificationTask):
        # The teacher's own classifier, on its embedding size, learns with it (the student gets its own).
        task.classifier = CosineClassifier(settings["embed_dim"], task.num_classes)
        trained.append(task.classifier)
    optimizer = make_optimizer(trained, settings["lr"], settings["weight_decay"])
    epochs = settings["epochs"]
    task.temperature = settings["temperature"]
    records = []
    started = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        batches = task.epoch_batches(settings["batch_size"], generator)
        bar = tqdm(batches, desc=f"teacher epoch {epoch + 1}/{epochs}", disable=not config["run"]["progress"],
                   leave=False)
        epoch_started = time.perf_counter()
        total = 0.0
        for step, positions in enumerate(bar):
            lr = learning_rate(settings["lr"], epoch + step / len(batches), settings["warmup_epochs"], epochs)
            for group in optimizer.param_groups:
                group["lr"] = lr
            batch = task.batch(positions, generator)
            loss = batch.task_loss(model(batch.images))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item()
            bar.set_postfix(loss=f"{loss.item():.3f}")
        model.eval()
        metrics = task.evaluate(model)
        record = {"epoch": epoch + 1, "loss": total / max(1, len(batches)),
                  "seconds": time.perf_counter() - epoch_started, **metrics}
        records.append(record)
        log(f"teacher epoch {epoch + 1}/{epochs}: loss {record['loss']:.3f} "
            f"held-out {task.metric} {metrics[task.metric]:.1f}% ({record['seconds']:.0f} s)")
    provenance = {"digest": digest, "settings": settings, "split": task.describe(),
                  "parameters": sum(p.numel() for p in model.parameters()),
                  "train_seconds": time.perf_counter() - started, "metrics": records[-1], "epochs": records}
    out_path.parent.mkdir(parents=True, exist_ok=True)
    save_ann_encoder(out_path, model, provenance)
    return provenance


def cached_cnn_teacher(config: dict, task: PlaceTask | ClassificationTask, log=log_line) -> tuple[Path, dict, bool]:
    """The train-cnn teacher from the teacher cache, trained into it first when no teacher of the
    same digest is there: (path, provenance, whether it was reused)."""
    digest = teacher_digest(config, task)
    path = teacher_cache_dir(config) / f"teacher-{digest[:24]}.safetensors"
    if path.is_file():
        _, _, _, provenance = load_ann_encoder(path)
        if provenance.get("digest") == digest:
            log(f"teacher: reused {path} from the teacher cache (same settings and data)")
            return path, provenance, True
    provenance = train_cnn_teacher(config, task, path, digest, log)
    log(f"teacher: trained and cached as {path}")
    return path, provenance, False


def resolve_teacher(config: dict, log=log_line):
    """-> (teacher or None, teacher provenance, the task built on the way to train one, or None).

    train-cnn trains the CNN teacher on the run's own task and split first, or reuses the one in
    the teacher cache trained with the same settings and data; other specs load a teacher."""
    spec = config["teacher"]["spec"]
    if spec in ("", "none"):
        return None, {"spec": "none"}, None
    if spec == TRAIN_CNN:
        task = build_task(config, StudentConfig.from_dict(config["student"]), None, "")
        path, provenance, reused = cached_cnn_teacher(config, task, log)
        teacher = AnnTeacher(path)
        return teacher, {"spec": spec, "path": str(path), "cache": "reused" if reused else "trained",
                         "identity": teacher.identity, "description": teacher.description,
                         "training": provenance}, task
    teacher = load_teacher(spec, config["teacher"]["batch_size"])
    return teacher, {"spec": spec, "identity": teacher.identity, "description": teacher.description}, None
