"""Exponential moving average of a model's weights (optim.ema_decay).

The average is a frozen copy of the model updated after every optimizer step; its BatchNorm
statistics are recomputed before each evaluation anyway (trainer.recalibrate_batchnorm), so only
parameters are averaged. The first steps use a shorter memory, (1 + n) / (10 + n), so the average
is not dominated by the random initial weights.
"""
from __future__ import annotations

import copy

import torch
from torch import nn


def frozen_copy(model: nn.Module) -> nn.Module:
    average = copy.deepcopy(model)
    average.requires_grad_(False)
    return average


@torch.no_grad()
def update_average(average: nn.Module, model: nn.Module, decay: float, step: int) -> None:
    weight = 1.0 - min(decay, (1.0 + step) / (10.0 + step))
    for averaged, current in zip(average.parameters(), model.parameters()):
        averaged.lerp_(current, weight)
