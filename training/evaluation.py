"""Held-out figures used during and after training: place Recall@K (through the runtime's metrics)
and classification accuracy, plus the eval-mode spike rate (design §4: a student can fall silent in
eval mode)."""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from vl2spike_ros.evaluation.baselines import evaluate_similarity
from vl2spike_ros.evaluation.metrics import RECALL_KS
from vl2spike_ros.model.neurons import is_neuron

from .calibration import recalibrate_batchnorm
from .data import PlaceTraverses, as_float


def embed_in_batches(embed: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor,
                     batch_size: int = 256) -> torch.Tensor:
    with torch.inference_mode():
        return torch.cat([embed(as_float(images[start:start + batch_size]))
                          for start in range(0, len(images), batch_size)])


def place_recall(embed: Callable[[torch.Tensor], torch.Tensor], traverses: PlaceTraverses,
                 places: np.ndarray, tolerance_frames: int) -> dict[str, float]:
    """Query traverse against a map of the reference traverse, both restricted to `places`."""
    reference = embed_in_batches(embed, traverses.reference[places])
    query = embed_in_batches(embed, traverses.query[places])
    return recall_from_embeddings(query, reference, traverses.frames[places], tolerance_frames)


def recall_from_embeddings(query: torch.Tensor, reference: torch.Tensor, frames: np.ndarray,
                           tolerance_frames: int) -> dict[str, float]:
    """The runtime's Recall@K of query row i against reference rows, both at `frames` (one place per row)."""
    metrics = evaluate_similarity((query @ reference.T).numpy(), frames, frames, tolerance_frames).metrics
    return {f"recall@{k}": metrics[f"recall@{k}"] for k in RECALL_KS}


class SpikeRateMeter:
    """Spikes per neuron output entry (a rate for binary spikes; the mean level for integer
    spikes; the mean activation for the ReLU twin), over every neuron of a model, while attached."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.spikes = 0.0
        self.count = 0
        self._handles = [node.register_forward_hook(self._record)
                         for node in model.modules() if is_neuron(node)]

    def _record(self, module, inputs, output) -> None:
        self.spikes += float(output.detach().sum())
        self.count += output.numel()

    @property
    def rate(self) -> float:
        return self.spikes / self.count if self.count else 0.0

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()


def evaluate_student(model: torch.nn.Module, task) -> dict[str, float]:
    recalibrate_batchnorm(model, task.calibration_images())
    model.eval()
    meter = SpikeRateMeter(model)
    try:
        metrics = task.evaluate(lambda images: model(images).descriptor)
    finally:
        meter.close()
    metrics["eval_spike_rate"] = meter.rate
    return metrics
