"""Training speed of the student recipe before and after each speed-up, measured in one run:

1. spikingjelly LIF, float32: the neurons' own multi-step path (the reference);
2. fused LIF, float32: `FusedLIFNode`'s one-pass autograd Function (the default);
3. fused LIF, bf16: the same with `optim.autocast=bf16`.

For each variant:
- student: forward + backward of the config's `student:` alone on `--batch` images (T from the config);
- step: one training step of the recipe (the trainer's `train_step`: its losses, backward, clipped
  AdamW) on a batch of `optim.batch_size` places (two images each) of the config's data. The
  teacher's features are random unit vectors of `teacher.cnn.embed_dim`: a real run reads them from
  the feature cache, outside the step, so only their size matters here;
- epoch: one whole epoch (the trainer's `train_epoch`: steps, BatchNorm recalibration, validation)
  on the first `--epoch-places` places.
Student and step repetitions interleave the variants, so a busy machine slows each alike; the
epochs run one after another. Wall and CPU seconds (this process) are both reported: CPU seconds
are the steadier figure on a shared machine. Results go to a table and a JSON file.

    .venv/bin/python benchmarks/training_speed.py [--config configs/training/default_student.yaml]
        [--batch 128] [--repeats 3] [--epoch-places 640] [--threads 1] [--quick] [--out FILE.json]

`--quick` checks that the script runs (a tiny student, a few images and places), in seconds.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from vl2spike_ros.core.atomic_files import write_json_atomic
from vl2spike_ros.errors import InputError
from vl2spike_ros.model import SpikformerStudent, StudentConfig
from vl2spike_ros.model.neurons import FusedLIFNode
from vl2spike_training.config import load_config
from vl2spike_training.distillation import DistillationTerms, build_modules, student_forward
from vl2spike_training.loop import make_optimizer, seed_everything
from vl2spike_training.tasks import build_task
from vl2spike_training.distributed import LocalStep
from vl2spike_training.trainer import train_epoch, train_step

VARIANTS = {"spikingjelly LIF, float32": (False, "off"),
            "fused LIF, float32": (True, "off"),
            "fused LIF, bf16": (True, "bf16")}
QUICK = {"student.embed_dims": 16, "student.num_heads": 2, "student.depths": 1, "student.descriptor_dim": 16,
         "student.pool_grid_rows": 1, "student.pool_grid_cols": 1, "optim.batch_size": 4,
         "teacher.cnn.embed_dim": 8}


def set_fused(student: SpikformerStudent, fused: bool) -> None:
    for node in student.neurons:
        if isinstance(node, FusedLIFNode):
            node.fused = fused


def timed(function: Callable[[], object]) -> tuple[float, float]:
    """(wall, CPU) seconds of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    function()
    return time.perf_counter() - wall, time.process_time() - cpu


def interleaved(steps: dict[str, Callable[[], object]], repeats: int) -> dict[str, dict[str, float]]:
    """Median wall and CPU seconds of each step, the steps called in turn `repeats` times (after
    one untimed call each)."""
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in steps}
    for step in steps.values():
        step()
    for _ in range(repeats):
        for name, step in steps.items():
            samples[name].append(timed(step))
    return {name: {"wall_s": statistics.median(wall for wall, _ in values),
                   "cpu_s": statistics.median(cpu for _, cpu in values)} for name, values in samples.items()}


def student_steps(config: dict, batch: int) -> dict[str, Callable[[], object]]:
    """Forward + backward of the student alone, per variant (the same weights and images)."""
    student_config = StudentConfig.from_dict(config["student"])
    images = torch.rand(batch, student_config.in_channels, student_config.image_height, student_config.image_width)
    steps = {}
    for name, (fused, autocast) in VARIANTS.items():
        torch.manual_seed(0)
        student = SpikformerStudent(student_config).train()
        set_fused(student, fused)

        def step(student=student, autocast=autocast) -> None:
            output = student_forward(student, images, True, autocast)
            loss = output.descriptor.square().sum() + sum(v.square().mean() for v in output.membrane_potentials)
            student.zero_grad(set_to_none=True)
            loss.backward()
        steps[name] = step
    return steps


class Run:
    """One variant's training state on the shared task: modules, optimizer, batch generator."""

    def __init__(self, config: dict, task, fused: bool, autocast: str) -> None:
        self.config = copy.deepcopy(config)
        self.config["optim"]["autocast"] = autocast
        self.task = task
        self.terms = DistillationTerms(self.config, task, has_teacher=True)
        self.generator = seed_everything(config["run"]["seed"], config["run"]["threads"])
        self.modules = build_modules(self.config, StudentConfig.from_dict(config["student"]), task, self.terms,
                                     task.teacher_query.shape[1])
        set_fused(self.modules["student"], fused)
        # What the trainer evaluates: the weight average when optim.ema_decay > 0.
        self.evaluated = self.modules["student_average"] if "student_average" in self.modules else self.modules["student"]
        self.optimizer = make_optimizer(self.modules, self.config["optim"]["lr"], self.config["optim"]["weight_decay"])
        self.batches = task.epoch_batches(self.config["optim"]["batch_size"], self.generator)
        self.batch_step = LocalStep(self.modules, self.terms, self.config, task)
        self.steps = 0

    def step(self) -> None:
        self.modules.train()
        positions = self.batches[self.steps % len(self.batches)]
        train_step(self.modules, self.evaluated, self.optimizer, self.batch_step, positions, self.generator,
                   self.config, 0.5, self.steps)
        self.steps += 1

    def epoch(self) -> dict:
        return train_epoch(self.modules, self.evaluated, self.optimizer, self.task, self.batch_step,
                           self.config, self.generator, 0)


def recipe_task(config: dict):
    """The config's place task on its first data.max_places places, with random unit teacher
    features of the CNN teacher's size in place of a trained teacher's."""
    task = build_task(config, StudentConfig.from_dict(config["student"]), None, "")
    generator = torch.Generator().manual_seed(0)
    dim = config["teacher"]["cnn"]["embed_dim"]
    places = len(task.traverses.frames)
    task.teacher_query = F.normalize(torch.randn(places, dim, generator=generator), dim=1)
    task.teacher_reference = F.normalize(torch.randn(places, dim, generator=generator), dim=1)
    return task


def format_table(results: dict[str, dict[str, dict[str, float]]]) -> str:
    reference = next(iter(VARIANTS))
    lines = [f"{'':28s} {'wall s':>9s} {'CPU s':>9s} {'CPU speed-up':>13s}"]
    for part, variants in results.items():
        lines.append(part)
        for name, figures in variants.items():
            speedup = variants[reference]["cpu_s"] / figures["cpu_s"] if figures["cpu_s"] else float("nan")
            lines.append(f"  {name:26s} {figures['wall_s']:9.3f} {figures['cpu_s']:9.3f} {speedup:12.2f}x")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/training/default_student.yaml", help="training config (the recipe)")
    parser.add_argument("--batch", type=int, default=128, help="images per student forward + backward")
    parser.add_argument("--repeats", type=int, default=3, help="timed student and step repetitions per variant")
    parser.add_argument("--epoch-places", type=int, default=640, help="places of the one-epoch measurement")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--quick", action="store_true", help="a tiny student and a few places: checks the script runs")
    parser.add_argument("--out", default="benchmark_results/training_speed.json", help="JSON results")
    args = parser.parse_args()
    overrides = {"data.max_places": args.epoch_places, "run.threads": args.threads, "run.progress": False}
    if args.quick:
        overrides.update(QUICK)
        overrides.update({"data.max_places": 48, "data.block_size": 8})
        args.batch, args.repeats = 8, 1
    try:
        config = load_config(args.config, [f"{key}={value}" for key, value in overrides.items()])
        if config["task"] != "place":
            raise InputError(f"{args.config}: task {config['task']!r}; expected a place recipe")
        torch.set_num_threads(args.threads)
        task = recipe_task(config)
    except InputError as error:
        sys.exit(f"training_speed: error: {error}")
    results = {f"student forward + backward, {args.batch} images": interleaved(student_steps(config, args.batch),
                                                                                  args.repeats)}
    runs = {name: Run(config, task, fused, autocast) for name, (fused, autocast) in VARIANTS.items()}
    results[f"training step, {config['optim']['batch_size']} places"] = interleaved(
        {name: run.step for name, run in runs.items()}, args.repeats)
    epochs = {}
    for name, run in runs.items():
        record = run.epoch()
        epochs[name] = {"wall_s": record["epoch_wall_seconds"], "cpu_s": record["epoch_cpu_seconds"],
                        "train_wall_s": record["train_seconds"], "recall@1": record.get("recall@1")}
    results[f"one epoch, {task.num_train} training places + validation"] = epochs
    print(f"{args.config}, {args.threads} thread(s), T={config['student']['timesteps']}"
          f"{' (--quick: tiny student)' if args.quick else ''}; medians of {args.repeats}:")
    print(format_table(results))
    write_json_atomic(Path(args.out), {"config": args.config, "quick": args.quick, "threads": args.threads,
                                       "repeats": args.repeats, "results": results})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
