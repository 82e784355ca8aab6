"""The neurons a student can be built with (``StudentConfig.neuron``), all multi-step ([T, ...] in,
[T, ...] out), swapped in for the LIF nodes spikingjelly's Spikformer is built with:

* ``lif``: spikingjelly's ``LIFNode`` as built (binary spikes; tau ``lif_tau``), trained through
  ``FusedLIFNode`` (the same neuron, its training pass fused over the timesteps).
* ``plif``: spikingjelly's ``ParametricLIFNode``: the same neuron with a learnt time constant per
  layer (initialised at ``lif_tau``).
* ``integer``: an integrate-and-fire neuron that emits 0..``spike_levels`` spikes per timestep
  (``IntegerLIFNeuron``): trained with round-and-clamp and a straight-through gradient, the
  capacity of a quantised ANN; at inference an integer k is k binary spikes, so a layer after it
  does k accumulates (the energy model counts them so).
* ``relu``: ``ReluNeuron``, the ANN twin: the same network with every neuron replaced by a ReLU.
  It is not spiking; it measures what the shape and the recipe reach without spikes.

The non-spikingjelly neurons share ``_NeuronState``: the few attributes the student and the
trainer use on every neuron.
"""
from __future__ import annotations

import torch
from spikingjelly.activation_based import neuron, surrogate
from torch import nn

from .config import NEURONS


class _NeuronState(nn.Module):
    """The attributes the student sets and reads on every neuron (spikingjelly's names): whether to
    keep the membrane sequence, the sequence, the surrogate (unused here), and reset()."""

    def __init__(self) -> None:
        super().__init__()
        self.store_v_seq = False
        self.v_seq: torch.Tensor | None = None
        self.surrogate_function: nn.Module | None = None

    def reset(self) -> None:
        self.v_seq = None


class ReluNeuron(_NeuronState):
    """A ReLU where a spiking neuron was; ``v_seq`` (when stored) is its input."""

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        if self.store_v_seq:
            self.v_seq = x_seq
        return torch.relu(x_seq)


def round_clamp(values: torch.Tensor, levels: int) -> torch.Tensor:
    """round(clamp(values, 0, levels)) forward; gradient 1 inside [0, levels], 0 outside."""
    clamped = values.clamp(0.0, float(levels))
    return clamped + (clamped.round() - clamped).detach()


class IntegerLIFNeuron(_NeuronState):
    """Leaky integrate-and-fire with integer spikes: each step ``v = v * (1 - 1/tau) + x``, then
    ``s = round(clamp(v / v_threshold, 0, levels))`` spikes and a soft reset ``v -= s * v_threshold``
    (detached, like the LIF nodes' ``detach_reset``)."""

    def __init__(self, levels: int, tau: float, v_threshold: float) -> None:
        super().__init__()
        self.levels = int(levels)
        self.decay = 1.0 - 1.0 / float(tau)
        self.v_threshold = float(v_threshold)

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


class _FusedLIF(torch.autograd.Function):
    """The T steps of a LIF layer (decay_input, hard reset to 0, detached reset, sigmoid surrogate)
    as one autograd node: forward charges, fires and resets step by step and keeps only the charged
    potentials h (and the spikes it returns); backward runs the surrogate gradient back through
    time from them.

    Ours because spikingjelly's CPU path records every charge, fire and reset op of every step in
    the autograd graph (a Python loop of small ops forward and backward, about a quarter of a
    training step of the student), and it has no fused CPU kernel to use instead. The arithmetic
    is spikingjelly's, op for op, so spikes and potentials are identical."""

    @staticmethod
    def forward(ctx, x_seq: torch.Tensor, v: torch.Tensor | None, tau: float, threshold: float, alpha: float,
                store_v_seq: bool) -> tuple[torch.Tensor, torch.Tensor]:
        charged = torch.empty_like(x_seq, dtype=torch.float32)
        spikes = torch.empty_like(x_seq)
        voltages = torch.empty_like(charged) if store_v_seq else None
        has_v = v is not None
        for t in range(x_seq.shape[0]):
            h = charged[t]
            if v is None:  # at rest (v = 0), spikingjelly's v + (x - v) / tau is exactly x / tau
                torch.div(x_seq[t], tau, out=h)
            else:
                torch.add(v, (x_seq[t] - v).div_(tau), out=h)
            torch.ge(h, threshold, out=spikes[t])
            # Hard reset to 0: h - h * s is exactly h where s = 0 and 0 where s = 1.
            v = torch.addcmul(h, h, spikes[t], value=-1.0, out=voltages[t] if store_v_seq else None)
        ctx.set_materialize_grads(False)
        ctx.constants = (tau, threshold, alpha, store_v_seq, has_v, x_seq.dtype)
        ctx.save_for_backward(charged, spikes)
        return spikes, voltages if store_v_seq else v

    @staticmethod
    def backward(ctx, grad_spikes: torch.Tensor | None, grad_v: torch.Tensor | None):
        charged, spikes = ctx.saved_tensors
        tau, threshold, alpha, store_v_seq, has_v, dtype = ctx.constants
        grad_x = torch.empty_like(charged)
        carry = None  # dL/dv of this step through the next step's charge
        last = charged.shape[0] - 1
        for t in range(last, -1, -1):
            grad_out = grad_v[t] if store_v_seq and grad_v is not None else (grad_v if t == last else None)
            if carry is not None:
                grad_out = carry if grad_out is None else grad_out + carry
            # The reset passes v on only where the neuron did not fire (nothing through the spike).
            grad_h = None if grad_out is None else torch.addcmul(grad_out, grad_out, spikes[t], value=-1.0)
            if grad_spikes is not None:  # spikingjelly's Sigmoid: alpha * sigmoid(alpha z) (1 - sigmoid(alpha z))
                slope = torch.sigmoid_((charged[t] - threshold).mul_(alpha))
                surrogate_grad = torch.ops.aten.sigmoid_backward(grad_spikes[t].float(), slope)
                grad_h = surrogate_grad.mul_(alpha) if grad_h is None else grad_h.add_(surrogate_grad, alpha=alpha)
            if grad_h is None:
                grad_h = torch.zeros_like(charged[t])
            torch.div(grad_h, tau, out=grad_x[t])
            carry = grad_h - grad_x[t] if t or has_v else None
        return grad_x.to(dtype), carry, None, None, None, None


class FusedLIFNode(neuron.LIFNode):
    """spikingjelly's ``LIFNode``, the same neuron and attributes, whose training pass runs through
    ``_FusedLIF`` where it applies: the configuration Spikformer builds (decay_input, hard reset to
    0, detached reset), the Sigmoid surrogate, float32 or bfloat16 input (autocast; its membrane is
    kept in float32), multi-step. Everything else (inference with the student's Heaviside, export
    tracing, other settings) is spikingjelly's own path. ``fused = False`` takes spikingjelly's path
    throughout: the reference that tests and benchmarks compare with."""

    fused = True

    def _fused_alpha(self, x_seq: torch.Tensor) -> float | None:
        function = self.surrogate_function
        if (not self.fused or not torch.is_grad_enabled() or torch.compiler.is_compiling()
                or x_seq.dtype not in (torch.float32, torch.bfloat16) or self._neuron_precision is not None
                or not self.decay_input or self.v_reset != 0.0 or not self.detach_reset
                or type(function) is not surrogate.Sigmoid or not function.spiking
                or not isinstance(function.alpha, (int, float))):
            return None
        return float(function.alpha)

    def multi_step_forward(self, x_seq: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        alpha = self._fused_alpha(x_seq)
        if alpha is None or args or kwargs:
            return super().multi_step_forward(x_seq, *args, **kwargs)
        v = self.v
        if not (isinstance(v, float) and v == 0.0):
            v = self.materialize_states((x_seq,), (v,), "m")[0].float()
        else:
            v = None
        spikes, v_out = _FusedLIF.apply(x_seq, v, self.tau, float(self.v_threshold), alpha, self.store_v_seq)
        self.v = v_out[-1] if self.store_v_seq else v_out
        self.v_seq = v_out if self.store_v_seq else None
        return spikes


def is_neuron(module: nn.Module) -> bool:
    return isinstance(module, (neuron.BaseNode, ReluNeuron, IntegerLIFNeuron))


def replace_neurons(model: nn.Module, kind: str, levels: int) -> None:
    """Swaps every LIF node of ``model`` for a neuron of ``kind`` with the same threshold and tau."""
    if kind not in NEURONS:
        raise ValueError(f"neuron must be one of {NEURONS}, got {kind!r}")
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if not isinstance(child, neuron.LIFNode):
                continue
            if kind == "lif":
                replacement: nn.Module = FusedLIFNode(
                    tau=child.tau, decay_input=child.decay_input, v_threshold=child.v_threshold,
                    v_reset=child.v_reset, surrogate_function=child.surrogate_function,
                    detach_reset=child.detach_reset, step_mode="m")
            elif kind == "relu":
                replacement = ReluNeuron()
            elif kind == "integer":
                replacement = IntegerLIFNeuron(levels, child.tau, child.v_threshold)
            else:
                replacement = neuron.ParametricLIFNode(
                    init_tau=child.tau, decay_input=child.decay_input, v_threshold=child.v_threshold,
                    v_reset=child.v_reset, surrogate_function=child.surrogate_function,
                    detach_reset=child.detach_reset, step_mode="m")
            setattr(module, name, replacement)


class MembraneReadout(_NeuronState):
    """A non-spiking integrator in place of the last block's output neuron: step t emits the mean
    input current of steps 1..t (its membrane potential divided by t), so the descriptor is read
    from real-valued potentials instead of 0/1 spike counts. Only pooling and the descriptor
    projection (a MAC layer already) see it, so no synaptic operation changes kind."""

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        steps = torch.arange(1, x_seq.shape[0] + 1, device=x_seq.device, dtype=x_seq.dtype)
        potentials = x_seq.cumsum(dim=0) / steps.view(-1, *([1] * (x_seq.ndim - 1)))
        if self.store_v_seq:
            self.v_seq = potentials
        return potentials
