"""The student's energy per frame as a loss term (distill.energy_weight): the energy model of
vl2spike_ros/core/energy.py made differentiable on the training batch.

Each synaptic layer costs E_AC x FLOPs x (mean input level) x (runs per frame), where the mean
input level is the batch's spikes per input entry (a level k counts k spikes, on the residual path
too, as the energy model counts them); so do the two attention products, in the order spikingjelly
executes them (V Kᵀ fed by V, then (V Kᵀ) Q fed by Q); the MAC layers cost a constant. Divided by
the ANN of equal shape, as the reported ratio is, so the weight trades Recall against exactly the
figure the energy table shows (estimate_energy, attention_order "executed").
"""
from __future__ import annotations

import torch
from torch import nn

from spikingjelly.activation_based.layer.attention import SpikingSelfAttention

from vl2spike_ros.core.energy import E_AC_PJ, E_MAC_PJ, costed_layers, module_flops
from vl2spike_ros.model import SpikformerStudent


class EnergyTap:
    """Records, while attached, the differentiable SNN and ANN energy of the last forward pass."""

    def __init__(self, model: SpikformerStudent) -> None:
        self.frames = 0
        self.snn_pj: list[torch.Tensor] = []
        self.ann_pj = 0.0
        layers, attentions = costed_layers(model)
        self._handles = [model.register_forward_pre_hook(self._start)]
        self._handles += [module.register_forward_hook(self._layer_hook(kind)) for _, module, kind in layers]
        self._handles += [attn.qkv_lif.register_forward_hook(self._attention_hook(attn)) for _, attn in attentions]

    def _start(self, module: nn.Module, inputs: tuple) -> None:
        self.frames = inputs[0].shape[0]
        self.snn_pj, self.ann_pj = [], 0.0

    def _layer_hook(self, kind: str):
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            flops, rows = module_flops(module, output)
            runs_per_frame = rows / self.frames
            self.ann_pj += E_MAC_PJ * flops
            if kind == "mac":
                self.snn_pj.append(torch.tensor(E_MAC_PJ * flops * runs_per_frame))
            else:
                self.snn_pj.append(E_AC_PJ * flops * runs_per_frame * inputs[0].mean())
        return hook

    def _attention_hook(self, attn: SpikingSelfAttention):
        def hook(module: nn.Module, inputs: tuple, qkv: torch.Tensor) -> None:
            # qkv: [T, B, 3C, N]; each product is C x Cph x N MACs a step (core/energy.py).
            steps, _, three_c, tokens = qkv.shape
            channels = three_c // 3
            flops = channels * (channels // attn.num_heads) * tokens
            q, _, v = qkv.split(channels, dim=2)
            for operand in (v, q):
                self.ann_pj += E_MAC_PJ * flops
                self.snn_pj.append(E_AC_PJ * flops * steps * operand.mean())
        return hook

    def ratio(self) -> torch.Tensor:
        """SNN / ANN energy per frame of the last forward pass."""
        if not self.snn_pj:
            raise RuntimeError("energy term: no forward pass of the student was recorded")
        return torch.stack(self.snn_pj).sum() / self.ann_pj
