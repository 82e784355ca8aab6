"""Statistics fixes that keep an eval-mode spiking student alive (design §4): exact BatchNorm
statistics before every evaluation, and a centred descriptor head before the first step."""
from __future__ import annotations

import torch
from torch import nn

from vl2spike_ros.model import SpikformerStudent


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
