"""Training a student on several processes with PyTorch's DistributedDataParallel (torchrun).

One step of N ranks computes what one process computes with the same global batch:
- every rank draws the same global batches from the same generator (so the order, the augmentation
  draws and the resumable state do not depend on N) and runs the student on its own contiguous share
  of the batch's places, both seasons of each;
- the student's outputs are gathered with their gradient, so every rank computes the loss of the
  whole global batch (InfoNCE sees every negative, the batch-wide distillation terms every row);
- BatchNorm statistics in training steps are those of the global batch;
- DDP averages the gradients (the gather's backward sums the N identical losses' gradients, the
  average divides them again);
- a term measured by a hook on this rank's own student run (RANK_LOCAL_TERMS: the energy term's
  spike counts) is a mean over this rank's frames: it is summed over ranks weighted by each rank's
  share of the frames, so uneven shares (a batch of 7 places on 2 ranks) give the one-process
  value and gradient.
Rank 0 prepares the teacher and its feature cache before the others read them, and alone logs and
writes files (the twin stage's export included, which the others then wait for). The trainer runs on
the CPU, so the backend is gloo.
"""
from __future__ import annotations

import functools
import os
from contextlib import contextmanager
from dataclasses import fields, replace
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from vl2spike_ros.errors import InputError
from vl2spike_ros.model import StudentOutput

from .distillation import DistillationTerms, batch_losses

# The other ranks wait this long for rank 0 to train a teacher or compute its features (the default
# collective timeout of 30 minutes is shorter than a CNN teacher's training on a CPU).
PREPARATION_TIMEOUT = timedelta(hours=12)
# Loss terms that batch_losses computes from this rank's rows alone, not from the gathered outputs.
RANK_LOCAL_TERMS = ("energy",)


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


class LocalStep:
    """The losses of one batch in a single process (what the trainer does without torchrun)."""

    def __init__(self, modules: nn.ModuleDict, terms: DistillationTerms, config: dict, task) -> None:
        self.modules, self.terms, self.config, self.task = modules, terms, config, task

    def batches(self, batches: list[np.ndarray]) -> list[np.ndarray]:
        return batches

    def losses(self, positions: np.ndarray, generator: torch.Generator, progress: float) -> dict[str, torch.Tensor]:
        return batch_losses(self.modules, self.task.batch(positions, generator), self.terms, self.config, self.task,
                            progress)


class Workers:
    """This process's place among the ranks; one rank of one when not launched by torchrun."""

    def __init__(self) -> None:
        self.rank, self.size = 0, 1
        self._waiting_group = None
        if not launched_by_torchrun():
            return
        if not dist.is_initialized():
            dist.init_process_group(backend="gloo")
        self.rank, self.size = dist.get_rank(), dist.get_world_size()
        self._waiting_group = _waiting_group()

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def for_this_rank(self, config: dict, log):
        """(config, log) for this rank: the others neither print progress nor log."""
        if self.is_main:
            return config, log
        return {**config, "run": {**config["run"], "progress": False}}, lambda _: None

    def wait_for_main(self) -> None:
        """Every rank waits here for rank 0 (which arrives once it has written what they read next)."""
        if self.size > 1:
            dist.barrier(group=self._waiting_group)

    @contextmanager
    def main_first(self):
        """Rank 0 runs the block first (it trains the teacher and fills the feature cache); the
        others wait for it, then run the block and find its results on disk."""
        if self.size > 1 and not self.is_main:
            dist.barrier(group=self._waiting_group)
        yield
        if self.size > 1 and self.is_main:
            dist.barrier(group=self._waiting_group)

    def training_step(self, modules: nn.ModuleDict, terms: DistillationTerms, config: dict, task) -> LocalStep:
        if self.size == 1:
            return LocalStep(modules, terms, config, task)
        return DistributedStep(modules, terms, config, task, self)


@functools.cache
def _waiting_group():
    """The group the ranks wait for rank 0 in, with the long timeout. Created once per process (the
    twin stage's run and the student's share it): creating a group is itself a collective."""
    return dist.new_group(backend="gloo", timeout=PREPARATION_TIMEOUT)


def leave_workers() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
        _waiting_group.cache_clear()


def shares(places: int, ranks: int) -> list[np.ndarray]:
    """Each rank's contiguous share of a batch's place positions (sizes differ by at most one)."""
    return np.array_split(np.arange(places), ranks)


class DistributedStep(LocalStep):
    """The losses of one global batch, computed by this rank with DDP over all ranks."""

    def __init__(self, modules: nn.ModuleDict, terms: DistillationTerms, config: dict, task,
                 workers: Workers) -> None:
        super().__init__(modules, terms, config, task)
        self.workers = workers
        use_global_batch_statistics(modules["student"])
        self.gathering = GatheringStudent(modules["student"], workers)
        # Buffers are synchronised once, not before every step: with global-batch statistics every
        # rank updates them alike.
        self.loss = DistributedDataParallel(_GlobalBatchLoss(modules, self), forward_sync_buffers=False)

    def batches(self, batches: list[np.ndarray]) -> list[np.ndarray]:
        """A batch with fewer places than ranks would leave a rank without images: it is dropped."""
        return [batch for batch in batches if len(batch) >= self.workers.size]

    def losses(self, positions: np.ndarray, generator: torch.Generator, progress: float) -> dict[str, torch.Tensor]:
        batch = self.task.batch(positions, generator)
        self.gathering.arrange(len(positions), len(batch.images) // len(positions))
        return self.loss(batch, progress)


class _GlobalBatchLoss(nn.Module):
    """DDP's module: holds every trained module, so each of their gradients is averaged."""

    def __init__(self, modules: nn.ModuleDict, step: DistributedStep) -> None:
        super().__init__()
        self.parts = modules
        self._step = step  # a plain attribute: not a submodule

    def forward(self, batch, progress: float) -> dict[str, torch.Tensor]:
        step = self._step
        view = {**dict(self.parts.items()), "student": step.gathering}
        losses = batch_losses(view, batch, step.terms, step.config, step.task, progress)
        share = len(step.gathering.local_rows) / sum(step.gathering.counts)
        # A rank-local term is a mean over this rank's frames; weighted by the rank's share of the
        # frames and summed over ranks it is the whole batch's. The sum's gradient reaches every rank
        # N times over, as the gathered terms' does, and DDP's average divides it again.
        return {name: _SumOverRanks.apply(value * share) if name in RANK_LOCAL_TERMS else value
                for name, value in losses.items()}


class GatheringStudent:
    """Runs the student on this rank's rows of a global batch and returns the outputs of the whole
    batch, in its row order, with the gradient of this rank's rows."""

    def __init__(self, student: nn.Module, workers: Workers) -> None:
        self.student, self.workers = student, workers
        self.local_rows = self.order = None
        self.counts: list[int] = []

    def arrange(self, places: int, groups: int) -> None:
        """A batch is `groups` blocks of `places` rows (the place task: queries, then references)."""
        rows = [np.concatenate([group * places + share for group in range(groups)])
                for share in shares(places, self.workers.size)]
        self.counts = [len(part) for part in rows]
        self.local_rows = torch.from_numpy(rows[self.workers.rank])
        self.order = torch.from_numpy(np.argsort(np.concatenate(rows), kind="stable"))

    def __call__(self, images: torch.Tensor, return_membrane: bool = False) -> StudentOutput:
        output = self.student(images[self.local_rows], return_membrane=return_membrane)

        def whole(tensor: torch.Tensor, dim: int) -> torch.Tensor:
            gathered = _GatherRows.apply(tensor.movedim(dim, 0), self.counts, self.workers.rank)
            return gathered[self.order].movedim(0, dim)

        gathered = {}
        for item in fields(output):
            value = getattr(output, item.name)
            dim = 0 if item.name == "descriptor" else 1  # every other output is per step: [T, B, ...]
            gathered[item.name] = [whole(v, dim) for v in value] if isinstance(value, list) else whole(value, dim)
        return replace(output, **gathered)


class _GatherRows(torch.autograd.Function):
    """Every rank's rows, concatenated in rank order (ranks may hold different counts). Each rank
    computes the same loss from them, so the backward sums the gradient over ranks and keeps this
    rank's rows."""

    @staticmethod
    def forward(ctx, rows: torch.Tensor, counts: list[int], rank: int) -> torch.Tensor:
        ctx.counts, ctx.rank = counts, rank
        padded = rows.new_zeros((max(counts), *rows.shape[1:]))  # all_gather wants equal shapes
        padded[:len(rows)] = rows
        parts = [torch.empty_like(padded) for _ in counts]
        dist.all_gather(parts, padded)
        return torch.cat([part[:count] for part, count in zip(parts, counts)])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = _summed_over_ranks(grad)
        start = sum(ctx.counts[:ctx.rank])
        return grad[start:start + ctx.counts[ctx.rank]], None, None


def _summed_over_ranks(tensor: torch.Tensor) -> torch.Tensor:
    total = tensor.contiguous().clone()
    dist.all_reduce(total)
    return total


class _SumOverRanks(torch.autograd.Function):
    """The sum over ranks with its gradient: the sum's gradient on every rank, summed over ranks."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        return _summed_over_ranks(tensor)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return _summed_over_ranks(grad)


class _GlobalStatistics:
    """A BatchNorm that, in a training step (train mode, with autograd), normalises with the mean and
    variance of the global batch, gathered with their gradient; elsewhere (evaluation, the no-grad
    statistics passes every rank makes alike) it is the plain layer. torch's SyncBatchNorm does the
    same on GPUs only."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not (self.training and torch.is_grad_enabled()):
            return super().forward(input)
        self._check_input_dim(input)
        dims = [0, *range(2, input.dim())]
        shape = [1, -1] + [1] * (input.dim() - 2)
        count = torch.tensor(float(input.numel() // input.shape[1]))
        dist.all_reduce(count)
        # Two passes (mean, then squared deviations) keep float32 as exact as the local layer's.
        mean = _SumOverRanks.apply(input.sum(dims)) / count
        centred = input - mean.view(shape)
        variance = _SumOverRanks.apply(centred.square().sum(dims)) / count
        output = centred * torch.rsqrt(variance + self.eps).view(shape)
        if self.affine:
            output = output * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_mean.lerp_(mean, factor)
                self.running_var.lerp_(variance * count / (count - 1).clamp_min(1), factor)
        return output


class GlobalBatchNorm1d(_GlobalStatistics, nn.BatchNorm1d):
    pass


class GlobalBatchNorm2d(_GlobalStatistics, nn.BatchNorm2d):
    pass


GLOBAL_KINDS = {nn.BatchNorm1d: GlobalBatchNorm1d, nn.BatchNorm2d: GlobalBatchNorm2d}


def use_global_batch_statistics(model: nn.Module) -> None:
    """Every BatchNorm of `model` takes global-batch statistics. The class of each layer is swapped
    in place: its parameters, buffers and state-dict keys stay, so the optimizer, the EMA copy, the
    training state and the exported checkpoint see the same tensors under the same names."""
    for name, module in model.named_modules():
        if not isinstance(module, nn.modules.batchnorm._BatchNorm) or isinstance(module, _GlobalStatistics):
            continue
        kind = GLOBAL_KINDS.get(type(module))
        if kind is None:
            raise InputError(f"distributed training: student layer {name} is a {type(module).__name__}; expected "
                             "torch.nn.BatchNorm1d or BatchNorm2d (the layers given global-batch statistics)")
        module.__class__ = kind
