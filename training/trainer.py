"""Trains the Spikformer student: the epoch loop, resume, evaluation each epoch, the final per-split
figures and the summary (and export). The pieces live beside it: distillation.py (terms, modules,
batch loss), calibration.py (eval-mode statistics), teacher_training.py (the teacher), tasks.py
(what a batch is, per task), split_report.py (figures per split).

A run directory holds `state.safetensors` (resume point, rewritten atomically each epoch),
`metrics.jsonl` (one record per epoch, including the eval-mode spike rate) and `summary.json`; a
trained train-cnn teacher and the teacher features live in the teacher cache shared by runs
(config.teacher_cache_dir).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from vl2spike_ros.core.atomic_files import atomic_write_bytes, write_json_atomic
from vl2spike_ros.core.energy import ann_energy_of
from vl2spike_ros.errors import InputError
from vl2spike_ros.model import StudentConfig

from .calibration import center_descriptor_head, recalibrate_batchnorm
from .config import config_digest, feature_cache_dir
from .distillation import DistillationTerms, build_modules
from .distributed import LocalStep, Workers
from .evaluation import evaluate_student
from .export import energy_of, export_student
from .loop import learning_rate, load_state, log_line, make_optimizer, save_state, seed_everything
from .split_report import format_split_figures, split_figures
from .tasks import PlaceTask, build_task
from .teacher_training import resolve_teacher
from .teachers import AnnTeacher
from .twin_stage import train_twin_first
from .warm_start import initialise_from_checkpoint
from .weight_average import update_average


def train_student(config: dict, command: list[str] | None = None, log=log_line) -> dict:
    """Runs (or resumes) one training run; returns the summary also written to summary.json."""
    workers = Workers()  # several ranks when started by torchrun (distributed.py)
    config, log = workers.for_this_rank(config, log)
    twin_record = None
    if workers.size > 1 and config["data"]["extra_domains"]:
        # Each rank's rows are cut from the route's batch; the places of other domains that every
        # step adds are not shared out between the ranks.
        raise InputError("data.extra_domains needs one process: start the run without torchrun, "
                         "or set data.extra_domains to []")
    if workers.size > 1 and config["distill"]["twin_weight"] > 0:
        # The twin's layer term runs in one process: the twin would have to run on each rank's rows.
        raise InputError("distill.twin_weight needs one process: start the run without torchrun")
    if config["optim"]["twin_epochs"] > 0:
        # On every rank, like the student: the twin stage is a run of its own over the same ranks.
        config, twin_record = train_twin_first(config, train_student, command, log)
        workers.wait_for_main()  # rank 0 alone exports the twin, which every rank starts from
    run = config["run"]
    out_dir = Path(run["out_dir"])
    if workers.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(max(1, run["threads"]))
    started = time.perf_counter()
    with workers.main_first():
        teacher, teacher_info, teacher_task = resolve_teacher(config, log)
        student_config = StudentConfig.from_dict(config["student"])
        task = build_task(config, student_config, teacher, feature_cache_dir(config),
                          getattr(teacher_task, "traverses", None))
    terms = DistillationTerms(config, task, teacher is not None)
    for key, reason in terms.disabled.items():
        log(f"note: distill.{key} requested but {reason}")
    teacher_info["metrics"] = task.teacher_metrics()
    if isinstance(teacher, AnnTeacher):
        teacher_info["energy"] = ann_energy_of(teacher.model, task.energy_images(32))

    generator = seed_everything(run["seed"], run["threads"])
    modules = build_modules(config, student_config, task, terms, teacher.embed_dim if teacher else 0)
    batch_step = workers.training_step(modules, terms, config, task)
    optim = config["optim"]
    optimizer = make_optimizer(modules, optim["lr"], optim["weight_decay"])
    digest = config_digest(config)
    state_path = out_dir / "state.safetensors"
    done, records = 0, []
    # A finished run is recognised by its summary's config, before its training state is read: the
    # state's digest may come from a version of the code that hashed a setting this one leaves out.
    finished = _finished_summary(out_dir, digest, optim["epochs"], run["export"]) if run["resume"] else None
    if finished is not None:
        log(f"{out_dir}: already trained and evaluated; summary.json reused")
        return finished if workers.is_main else {}
    if run["resume"] and state_path.is_file():
        done, records = load_state(state_path, modules, optimizer, generator, digest)
        log(f"resuming {out_dir} after epoch {done}")
    student = modules["student"]
    if done == 0 and run["init_checkpoint"]:
        log(initialise_from_checkpoint(student, run["init_checkpoint"]))
    elif done == 0:
        center_descriptor_head(student, task.calibration_images(128))
        if "student_average" in modules:
            modules["student_average"].load_state_dict(student.state_dict())
    # What is evaluated and exported: the weight average when optim.ema_decay > 0.
    evaluated = modules["student_average"] if "student_average" in modules else student
    epochs = optim["epochs"]
    for epoch in range(done, epochs):
        record = train_epoch(modules, evaluated, optimizer, task, batch_step, config, generator, epoch)
        records.append(record)
        if workers.is_main:
            save_state(state_path, modules, optimizer, generator, epoch + 1, digest, records)
            lines = "".join(json.dumps(item) + "\n" for item in records)
            atomic_write_bytes(out_dir / "metrics.jsonl", lines.encode())
        figures = (f"{task.metric} {record[task.metric]:.1f}% eval spike rate {record['eval_spike_rate']:.3f}"
                   if task.metric in record else "not validated this epoch")
        log(f"student epoch {epoch + 1}/{epochs}: {figures} ({record['train_seconds']:.0f} s training, "
            f"{record['epoch_cpu_seconds']:.0f} CPU-s in all)")
    if not workers.is_main:
        return {}  # rank 0 makes the final figures and writes the summary and the export
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
    if twin_record is not None:
        summary["twin"] = twin_record
    if run["export"]:
        summary["export"] = export_student(run["export"], student, summary)
        log(f"exported {run['export']} (fingerprint {summary['export']['fingerprint'][:12]})")
    write_json_atomic(out_dir / "summary.json", summary)
    return summary


def train_step(modules: nn.ModuleDict, evaluated: nn.Module, optimizer: torch.optim.Optimizer,
               batch_step: LocalStep, positions, generator: torch.Generator, config: dict, progress: float,
               step: int) -> dict[str, torch.Tensor]:
    """One optimizer step on the batch of training `positions`, `progress` epochs into training (`step`
    steps done): learning rate, losses, clipped AdamW step and weight average; returns the losses."""
    optim, student = config["optim"], modules["student"]
    lr = learning_rate(optim["lr"], progress, optim["warmup_epochs"], optim["epochs"])
    for group in optimizer.param_groups:
        group["lr"] = lr
    losses = batch_step.losses(positions, generator, progress)
    optimizer.zero_grad(set_to_none=True)
    sum(losses.values()).backward()
    nn.utils.clip_grad_norm_(modules.parameters(), optim["grad_clip"])
    optimizer.step()
    if evaluated is not student:
        update_average(evaluated, student, optim["ema_decay"], step)
    return losses


def train_epoch(modules: nn.ModuleDict, evaluated: nn.Module, optimizer: torch.optim.Optimizer, task,
                batch_step: LocalStep, config: dict, generator: torch.Generator, epoch: int) -> dict:
    """One epoch of steps (and of weight averaging), then validation of `evaluated`; its record."""
    optim = config["optim"]
    epochs = optim["epochs"]
    modules.train()
    batches = batch_step.batches(task.epoch_batches(optim["batch_size"], generator))
    bar = tqdm(batches, desc=f"student epoch {epoch + 1}/{epochs}", disable=not config["run"]["progress"],
               leave=False)
    epoch_started, cpu_started = time.perf_counter(), time.process_time()
    sums: dict[str, float] = {}
    for step, positions in enumerate(bar):
        losses = train_step(modules, evaluated, optimizer, batch_step, positions, generator, config,
                            epoch + step / len(batches), epoch * len(batches) + step)
        for name, value in losses.items():
            sums[name] = sums.get(name, 0.0) + value.item()
        bar.set_postfix(loss=f"{sum(losses.values()).item():.3f}")
    train_seconds = time.perf_counter() - epoch_started
    validate = (epoch + 1) % optim["eval_every"] == 0 or epoch + 1 == epochs
    metrics = evaluate_student(evaluated, task) if validate else {}
    return {"epoch": epoch + 1, "train_seconds": round(train_seconds, 2),
            "epoch_wall_seconds": round(time.perf_counter() - epoch_started, 2),
            "epoch_cpu_seconds": round(time.process_time() - cpu_started, 2),
            **{f"loss_{name}": value / max(1, len(batches)) for name, value in sums.items()}, **metrics}


def _finished_summary(out_dir: Path, digest: str, epochs: int, export: str) -> dict | None:
    """The summary of a run of this config that already finished every epoch (an ablation rerun
    over more seeds reuses it instead of evaluating again); None when there is work left, or an
    export was asked for that the summary does not have."""
    path = out_dir / "summary.json"
    if not path.is_file():
        return None
    summary = json.loads(path.read_text())
    if len(summary.get("epochs", [])) < epochs:
        return None
    config = summary.get("config")
    if not config or config_digest(config) != digest:
        return None
    if export and summary.get("export", {}).get("path") != export:
        return None
    return summary
