"""What adaptation minimises, and which weights it may change.

- `contrastive`: InfoNCE between two augmented views of the same place (neighbouring frames of the
  route, or two views of one image); the batch's other places are the negatives, except those
  close enough on the route to be the same place.
- `distillation`: the adapted descriptor of an augmented frame stays at the frozen base model's
  descriptor of the clean frame. It keeps what the base learnt (plain contrastive fine-tuning on one
  season forgets what made the descriptor hold across seasons) and asks for invariance to the
  augmented change in the base's own descriptor space.
- `FiringGuard`: a hinge on each neuron's mean spike count above the base's, so adapting does not
  buy its gains with energy.

Only the last block and the descriptor head adapt (`adaptable_parameters`); BatchNorm keeps its
statistics and affine weights (the model stays in eval mode), so the stem sees what it was trained on.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vl2spike_ros.model import SpikformerStudent

TEMPERATURE = 0.05


def adaptable_parameters(model: SpikformerStudent, last_block: bool = True) -> list[nn.Parameter]:
    """Freezes the whole model except the head's (and, with `last_block`, the last block's)
    non-BatchNorm weights; returns those."""
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    adaptable = []
    parts = (model.backbone.blocks[-1],) if last_block else ()
    for part in (*parts, model.pool, model.projection):
        for module in part.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                continue
            for parameter in module.parameters(recurse=False):
                parameter.requires_grad_(True)
                adaptable.append(parameter)
    return adaptable


def contrastive(anchors: torch.Tensor, positives: torch.Tensor, related: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE over unit descriptors [B, D]; `related` [B, B] marks pairs that are not
    negatives (the diagonal is the positive)."""
    logits = anchors @ positives.T / TEMPERATURE
    eye = torch.eye(len(anchors), dtype=torch.bool)
    logits = logits.masked_fill(related & ~eye, float("-inf"))
    targets = torch.arange(len(anchors))
    return 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets))


def distillation(adapted: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    """Mean cosine distance between adapted descriptors and the base's of the same frames."""
    return (1.0 - (adapted * base).sum(dim=1)).mean()


class FiringGuard:
    """Records each neuron's mean output (spikes per entry) in the forward passes of `model` that
    build a graph (training steps; not the self-check's or the energy estimate's)."""

    def __init__(self, model: SpikformerStudent) -> None:
        self.rates: list[torch.Tensor] = []
        self._handles = [neuron.register_forward_hook(self._record) for neuron in model.neurons]
        self.base: torch.Tensor | None = None

    def _record(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        if torch.is_grad_enabled():
            self.rates.append(output.mean())

    def take(self) -> torch.Tensor:
        """[neurons] rates of the last forward pass (then forgets them)."""
        rates, self.rates = torch.stack(self.rates), []
        return rates

    def penalty(self, rates: torch.Tensor) -> torch.Tensor:
        """Relative excess of `rates` over the base's, summed over neurons."""
        return (F.relu(rates - self.base) / self.base.clamp_min(1e-3)).sum()

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
