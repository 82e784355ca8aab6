"""Trains the ANN CNN teacher (ann_encoder) on the student's own task and training data: InfoNCE
across seasons on the training places of the same split (places never seen by the teacher stay
held out), or the cosine classifier's cross-entropy on the training images (classification)."""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from torch import nn
from tqdm import tqdm

from vl2spike_ros.model import StudentConfig

from .ann_encoder import build_ann_encoder, load_ann_encoder, place_cnn_config, save_ann_encoder
from .loop import learning_rate, log_line, make_optimizer, seed_everything
from .tasks import ClassificationTask, CosineClassifier, PlaceTask, build_task
from .teachers import AnnTeacher, load_teacher

TRAIN_CNN = "train-cnn"


def teacher_digest(config: dict) -> str:
    """What shapes the teacher: its own settings, the data and split, the student's input size and
    normalisation, and the seed."""
    shaping = {"cnn": config["teacher"]["cnn"], "data": config["data"], "seed": config["run"]["seed"],
               "input": {key: config["student"][key] for key in
                         ("image_height", "image_width", "in_channels", "input_normalization", "patch_norm_size")}}
    return hashlib.sha256(json.dumps(shaping, sort_keys=True).encode()).hexdigest()


def train_cnn_teacher(config: dict, task: PlaceTask | ClassificationTask, out_path: Path, log=log_line) -> dict:
    """Trains (or reuses, when `out_path` holds a teacher of the same digest) the CNN teacher.
    Returns its provenance (settings, split, held-out metrics, timing)."""
    digest = teacher_digest(config)
    if out_path.is_file():
        _, _, _, provenance = load_ann_encoder(out_path)
        if provenance.get("digest") == digest:
            log(f"teacher: reusing {out_path} (same settings and data)")
            return provenance
    settings = config["teacher"]["cnn"]
    student = config["student"]
    generator = seed_everything(config["run"]["seed"], config["run"]["threads"])
    model = build_ann_encoder(place_cnn_config(
        settings["widths"], settings["strides"], settings["embed_dim"], student["image_height"], student["image_width"],
        student["in_channels"], student["input_normalization"], student["patch_norm_size"]))
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


def resolve_teacher(config: dict, out_dir: Path, log=log_line):
    """-> (teacher or None, teacher provenance, the task built on the way to train one, or None).

    train-cnn trains the CNN teacher on the run's own task and split first (reused when
    <out_dir>/teacher.safetensors was trained with the same settings); other specs load a teacher."""
    spec = config["teacher"]["spec"]
    if spec in ("", "none"):
        return None, {"spec": "none"}, None
    if spec == TRAIN_CNN:
        path = out_dir / "teacher.safetensors"
        task = build_task(config, StudentConfig.from_dict(config["student"]), None, "")
        provenance = train_cnn_teacher(config, task, path, log)
        teacher = AnnTeacher(path)
        return teacher, {"spec": spec, "path": str(path), "identity": teacher.identity,
                         "description": teacher.description, "training": provenance}, task
    teacher = load_teacher(spec, config["teacher"]["batch_size"])
    return teacher, {"spec": spec, "identity": teacher.identity, "description": teacher.description}, None
