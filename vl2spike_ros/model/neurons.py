"""The neurons a student can be built with (``StudentConfig.neuron``), all multi-step ([T, ...] in,
[T, ...] out), swapped in for the LIF nodes spikingjelly's Spikformer is built with:

* ``lif``: spikingjelly's ``LIFNode`` as built (binary spikes; tau ``lif_tau``).
* ``plif``: spikingjelly's ``ParametricLIFNode``: the same neuron with a learnt time constant per
  layer (initialised at ``lif_tau``).
* ``integer``: an integrate-and-fire neuron that emits 0..``spike_levels`` spikes per timestep
  (``IntegerLIFNeuron``): trained with round-and-clamp and a straight-through gradient, the
  capacity of a quantised ANN; at inference an integer k is k binary spikes, so a layer after it
  does k accumulates (the energy model counts them so).
* ``relu``: ``ReluNeuron``, the ANN twin: the same network with every neuron replaced by a ReLU.
  It is not spiking; it measures what the shape and the recipe reach without spikes.

The non-spikingjelly neurons keep the few attributes the student and the trainer use on every
neuron (``store_v_seq``, ``v_seq``, ``surrogate_function``, ``reset``).
"""
from __future__ import annotations

import torch
from spikingjelly.activation_based import neuron
from torch import nn

from .config import NEURONS


class ReluNeuron(nn.Module):
    """A ReLU where a spiking neuron was; ``v_seq`` (when stored) is its input."""

    def __init__(self) -> None:
        super().__init__()
        self.store_v_seq = False
        self.v_seq: torch.Tensor | None = None
        self.surrogate_function: nn.Module | None = None  # unused; the student sets it on every neuron

    def reset(self) -> None:
        self.v_seq = None

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        if self.store_v_seq:
            self.v_seq = x_seq
        return torch.relu(x_seq)


def round_clamp(values: torch.Tensor, levels: int) -> torch.Tensor:
    """round(clamp(values, 0, levels)) forward; gradient 1 inside [0, levels], 0 outside."""
    clamped = values.clamp(0.0, float(levels))
    return clamped + (clamped.round() - clamped).detach()


class IntegerLIFNeuron(nn.Module):
    """Leaky integrate-and-fire with integer spikes: each step ``v = v * (1 - 1/tau) + x``, then
    ``s = round(clamp(v / v_threshold, 0, levels))`` spikes and a soft reset ``v -= s * v_threshold``
    (detached, like the LIF nodes' ``detach_reset``)."""

    def __init__(self, levels: int, tau: float, v_threshold: float) -> None:
        super().__init__()
        self.levels = int(levels)
        self.decay = 1.0 - 1.0 / float(tau)
        self.v_threshold = float(v_threshold)
        self.store_v_seq = False
        self.v_seq: torch.Tensor | None = None
        self.surrogate_function: nn.Module | None = None  # unused; the student sets it on every neuron

    def reset(self) -> None:
        self.v_seq = None

    def extra_repr(self) -> str:
        return f"levels={self.levels}, decay={self.decay:g}, v_threshold={self.v_threshold:g}"

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        spikes, potentials = [], []
        v = torch.zeros_like(x_seq[0])
        for x in x_seq:
            v = v * self.decay + x
            potentials.append(v)
            spike = round_clamp(v / self.v_threshold, self.levels)
            v = v - spike.detach() * self.v_threshold
            spikes.append(spike)
        if self.store_v_seq:
            self.v_seq = torch.stack(potentials)
        return torch.stack(spikes)


def is_neuron(module: nn.Module) -> bool:
    return isinstance(module, (neuron.BaseNode, ReluNeuron, IntegerLIFNeuron))


def replace_neurons(model: nn.Module, kind: str, levels: int) -> None:
    """Swaps every LIF node of ``model`` for a neuron of ``kind`` with the same threshold and tau."""
    if kind not in NEURONS:
        raise ValueError(f"neuron must be one of {NEURONS}, got {kind!r}")
    if kind == "lif":
        return
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if not isinstance(child, neuron.LIFNode):
                continue
            if kind == "relu":
                replacement: nn.Module = ReluNeuron()
            elif kind == "integer":
                replacement = IntegerLIFNeuron(levels, child.tau, child.v_threshold)
            else:
                replacement = neuron.ParametricLIFNode(
                    init_tau=child.tau, decay_input=child.decay_input, v_threshold=child.v_threshold,
                    v_reset=child.v_reset, surrogate_function=child.surrogate_function,
                    detach_reset=child.detach_reset, step_mode="m")
            setattr(module, name, replacement)


class MembraneReadout(nn.Module):
    """A non-spiking integrator in place of the last block's output neuron: step t emits the mean
    input current of steps 1..t (its membrane potential divided by t), so the descriptor is read
    from real-valued potentials instead of 0/1 spike counts. Only pooling and the descriptor
    projection (a MAC layer already) see it, so no synaptic operation changes kind."""

    def __init__(self) -> None:
        super().__init__()
        self.store_v_seq = False
        self.v_seq: torch.Tensor | None = None
        self.surrogate_function: nn.Module | None = None

    def reset(self) -> None:
        self.v_seq = None

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        steps = torch.arange(1, x_seq.shape[0] + 1, device=x_seq.device, dtype=x_seq.dtype)
        potentials = x_seq.cumsum(dim=0) / steps.view(-1, *([1] * (x_seq.ndim - 1)))
        if self.store_v_seq:
            self.v_seq = potentials
        return potentials
