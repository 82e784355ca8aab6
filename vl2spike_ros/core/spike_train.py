"""The integer-spike student run on binary spikes only: what a chip that takes only binary spikes runs.

At one timestep an integer neuron emits ``round(clamp(x / θ, 0, L))`` (``IntegerLIFNeuron``, L =
``spike_levels``): integer-valued training, spike-driven inference, the convention of SpikeYOLO's
I-LIF neurons. Here every level k is expanded into a train of k binary spikes over D = L virtual
timesteps, and every layer whose input is spikes runs on those binary spikes alone: a spike selects
a column of the (BatchNorm-folded) weights and adds it to the currents it reaches, with no multiply.

The neuron that turns a current x into the train is an integrate-and-fire neuron with threshold θ,
its membrane starting at θ/2 (the charge that makes it round instead of truncate), reset by
subtraction, run for D steps: it fires while ``v >= θ``, so it emits ``clamp(floor(x/θ + 1/2), 0, D)``
spikes, round-half-up. ``torch.round`` rounds half to even, so at an exact tie (``v == θ`` with
``x/θ = k + 1/2``, frequent in attention, whose currents are integers) it fires only after an odd
number of spikes: ``if_spike_train`` is that neuron, and gives ``round(clamp(x/θ, 0, D))`` exactly.

Residual sums are never added: the residual stream stays a list of binary trains, one per branch,
and a layer fed by it takes the spikes of every branch. The two spike-spike products of spiking
self-attention are spike-driven too: each spike of V adds K's row of spike counts at its token
(``V Kᵀ``), each spike of Q adds a column of that product (``(V Kᵀ) Q``); the product's scale
(1/8) is folded into the attention neuron's threshold. The real-valued parts (input normalisation,
the first convolution on pixels, pooling and the descriptor projection) are the student's own
modules. Everything runs in float64, so currents differ from the float32 student by rounding only.

Counts. Per layer ``binary_spikes`` is the number of binary spikes that reach it, and
``accumulates`` the weight columns they add (an out-of-map tap of a zero-padded convolution adds
nothing). ``binary_spikes x fan-out`` (out channels x kernel taps; Cph for an attention product) is
the energy table's synaptic-operation count of the layer exactly (``vl2spike_ros.core.energy``).
"""
from __future__ import annotations

import copy
import itertools
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from spikingjelly.activation_based.layer.attention import SpikingSelfAttention
from torch import nn

from vl2spike_ros.errors import InputError
from vl2spike_ros.model import SpikformerStudent
from vl2spike_ros.model.neurons import IntegerLIFNeuron, MembraneReadout

CHUNK_SPIKES = 16384  # spikes gathered at once: bounds the [spikes, out channels] buffer


def if_spike_train(currents: torch.Tensor, threshold: float, steps: int) -> torch.Tensor:
    """The integrate-and-fire neuron that reproduces ``round(clamp(currents / threshold, 0, steps))``:
    membrane starting at threshold/2, reset by subtraction, ``steps`` steps; a tie (membrane exactly
    at threshold) fires only after an odd number of spikes, as ``torch.round`` rounds half to even.
    Returns bool ``[steps, *currents.shape]``, the spikes in the order they are emitted."""
    v = currents / threshold + 0.5  # in units of the threshold: the neuron fires at 1
    fired = torch.zeros_like(v, dtype=torch.int64)
    train = []
    for _ in range(steps):
        spike = (v > 1.0) | ((v == 1.0) & (fired % 2 == 1))
        v = v - spike.to(v.dtype)
        fired += spike
        train.append(spike)
    return torch.stack(train)


@dataclass
class LayerCount:
    binary_spikes: int = 0   # binary spikes that reached the layer
    fan_out: int = 0         # weights one spike reaches (out channels x kernel taps; Cph for attention)
    accumulates: int = 0     # weight columns actually added (out-of-map taps add nothing)

    @property
    def synaptic_operations(self) -> int:
        """binary_spikes x fan_out: the energy table's count of the layer."""
        return self.binary_spikes * self.fan_out


@dataclass
class SpikeTrainResult:
    descriptors: torch.Tensor                                        # float64 [B, D], unit rows
    levels: dict[str, torch.Tensor] = field(default_factory=dict)    # neuron name -> spike counts
    counts: dict[str, LayerCount] = field(default_factory=dict)      # layer name -> counts (all frames)


def _folded(container: nn.Module) -> tuple[nn.Module, torch.Tensor, torch.Tensor, nn.Module | None]:
    """(conv, weight with BatchNorm folded in, bias, pooling or None) of a Conv+BN[+pool] container."""
    conv, norm, *rest = list(container.children())
    if not isinstance(conv, (nn.Conv1d, nn.Conv2d)) or not isinstance(norm, nn.modules.batchnorm._BatchNorm):
        raise InputError(f"spike trains: expected Conv+BatchNorm, got {type(conv).__name__}+{type(norm).__name__}")
    if conv.bias is not None or conv.groups != 1 or any(s != 1 for s in conv.stride) \
            or any(d != 1 for d in conv.dilation):
        raise InputError(f"spike trains: unsupported convolution {conv}")
    scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
    weight = conv.weight * scale.view(-1, *([1] * (conv.weight.ndim - 1)))
    return conv, weight, norm.bias - norm.running_mean * scale, rest[0] if rest else None


class SpikeTrainStudent:
    """Runs a ``SpikformerStudent`` with integer neurons at one timestep on binary spike trains."""

    def __init__(self, student: SpikformerStudent) -> None:
        config = student.config
        if config.neuron != "integer" or config.timesteps != 1:
            raise InputError(f"spike trains: run integer-spike students at one timestep (student.neuron "
                             f"integer, timesteps 1); this model has neuron {config.neuron}, "
                             f"timesteps {config.timesteps}")
        self.model = copy.deepcopy(student).double().eval()
        self.steps = int(config.spike_levels)
        self.names = {id(module): name for name, module in self.model.named_modules()}

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> SpikeTrainResult:
        """images: float [B, C, H, W] in [0, 1] at the input size, as the student takes them."""
        model, backbone = self.model, self.model.backbone
        result = SpikeTrainResult(descriptors=torch.empty(0))
        stem = backbone.patch_embed
        first = model.first_stage(model.normalize(images.double()).unsqueeze(0))[0]
        train = self._fire(stem.stages[0].neuron, first, result)
        for stage in stem.stages[1:]:
            train = self._fire(stage.neuron, self._conv(stage.conv_bn.block, [train], result), result)
        position = stem.positional_encoding
        branches = [train, self._fire(position.neuron, self._conv(position.conv_bn.block, [train], result), result)]
        readout = None
        for block in backbone.blocks:
            shape = branches[0].shape
            branches = [branch.flatten(3) for branch in branches]  # [D, B, C, L]: tokens
            branches.append(self._attention(block.attn, branches, result))
            mlp = block.mlp
            hidden = self._fire(mlp.neuron1, self._conv(mlp.fc1, branches, result), result)
            out = self._conv(mlp.fc2, [hidden], result)
            if isinstance(mlp.neuron2, MembraneReadout):  # real-valued at T=1: the current itself
                readout = out.reshape(shape[1:])
            else:
                branches.append(self._fire(mlp.neuron2, out, result))
            branches = [branch.reshape(*branch.shape[:3], *shape[3:]) for branch in branches]
        feature_maps = sum(branch.sum(0, dtype=torch.float64) for branch in branches)
        if readout is not None:
            feature_maps = feature_maps + readout
        result.descriptors = model.descriptor_of(feature_maps.unsqueeze(0))
        return result

    def _fire(self, neuron: nn.Module, currents: torch.Tensor, result: SpikeTrainResult,
              threshold: float | None = None) -> torch.Tensor:
        if not isinstance(neuron, IntegerLIFNeuron):
            raise InputError(f"spike trains: {self.names[id(neuron)]} is {type(neuron).__name__}, not an integer neuron")
        train = if_spike_train(currents, neuron.v_threshold if threshold is None else threshold, self.steps)
        result.levels[self.names[id(neuron)]] = train.sum(0)
        return train

    def _count(self, result: SpikeTrainResult, module: nn.Module, suffix: str, spikes: int, fan_out: int,
               accumulates: int) -> None:
        name = self.names[id(module)] + suffix
        count = result.counts.setdefault(name, LayerCount(fan_out=fan_out))
        count.binary_spikes += spikes
        count.accumulates += accumulates

    def _conv(self, container: nn.Module, trains: list[torch.Tensor], result: SpikeTrainResult) -> torch.Tensor:
        """Currents of a Conv+BN[+max-pool] layer fed by binary trains [D, B, C, *spatial]: the
        BatchNorm-folded weight column of every spike added where the kernel takes it."""
        conv, weight, bias, pool = _folded(container)
        _, batch, _, *spatial = trains[0].shape
        kernel = weight.shape[2:]
        padding = conv.padding if isinstance(conv.padding, tuple) else (conv.padding,) * len(kernel)
        out_spatial = [size + 2 * pad - k + 1 for size, pad, k in zip(spatial, padding, kernel)]
        currents = torch.zeros(batch * math.prod(out_spatial), conv.out_channels, dtype=torch.float64)
        # columns[tap][c] = the weights one spike of channel c adds through kernel tap `tap`
        taps = list(itertools.product(*[range(k) for k in kernel]))
        columns = {tap: weight[(slice(None), slice(None), *tap)].t().contiguous() for tap in taps}
        spikes = accumulates = 0
        for train in trains:
            for chunk in torch.nonzero(train).split(CHUNK_SPIKES):
                spikes += len(chunk)
                b, c, position = chunk[:, 1], chunk[:, 2], chunk[:, 3:]
                for tap in taps:
                    target = position + torch.tensor(padding) - torch.tensor(tap)
                    inside = ((target >= 0) & (target < torch.tensor(out_spatial))).all(dim=1)
                    index = b[inside]
                    for axis, size in enumerate(out_spatial):
                        index = index * size + target[inside, axis]
                    currents.index_add_(0, index, columns[tap][c[inside]])
                    accumulates += int(inside.sum()) * conv.out_channels
        self._count(result, conv, "", spikes, conv.out_channels * len(taps), accumulates)
        currents = currents.view(batch, *out_spatial, conv.out_channels).movedim(-1, 1) \
            + bias.view(-1, *([1] * len(out_spatial)))
        return currents if pool is None else pool(currents)

    def _attention(self, attn: SpikingSelfAttention, branches: list[torch.Tensor],
                   result: SpikeTrainResult) -> torch.Tensor:
        """Spiking self-attention on binary trains; returns the projection neuron's train [D, B, C, L]."""
        qkv = self._fire(attn.qkv_lif, self._conv(attn.qkv_conv_bn, branches, result), result)
        steps, batch, three_c, tokens = qkv.shape
        heads, per_head = attn.num_heads, three_c // 3 // attn.num_heads
        q, k, v = qkv.reshape(steps, batch, 3, heads, per_head, tokens).unbind(2)
        # V Kᵀ: a spike of V at (head, channel i, token n) adds K's counts of token n: row i, [Cph].
        k_counts = k.sum(0, dtype=torch.float64).transpose(-1, -2).reshape(-1, per_head)  # (b, h, n) -> [Cph]
        vk = self._spike_driven(v, lambda b, h, i, n: (b * heads + h) * tokens + n,
                                lambda b, h, i, n: (b * heads + h) * per_head + i,
                                k_counts, batch * heads * per_head, per_head)
        self._count(result, attn, ".matmul_v_kT", *vk[1:])
        # (V Kᵀ) Q: a spike of Q at (head, channel j, token n) adds column j of V Kᵀ at token n.
        vk_columns = vk[0].view(batch, heads, per_head, per_head).transpose(-1, -2).reshape(-1, per_head)
        product = self._spike_driven(q, lambda b, h, j, n: (b * heads + h) * per_head + j,
                                     lambda b, h, j, n: (b * heads + h) * tokens + n,
                                     vk_columns, batch * heads * tokens, per_head)
        self._count(result, attn, ".matmul_vkT_q", *product[1:])
        scores = product[0].view(batch, heads, tokens, per_head).transpose(-1, -2)  # [B, heads, Cph, L]
        # The product's scale is folded into the threshold: (x * scale) / θ == x / (θ / scale).
        attended = self._fire(attn.attn_lif, scores, result, attn.attn_lif.v_threshold / attn.scale)
        attended = attended.reshape(steps, batch, heads * per_head, tokens)
        return self._fire(attn.proj_lif, self._conv(attn.proj_conv_bn, [attended], result), result)

    @staticmethod
    def _spike_driven(train: torch.Tensor, row_of, target_of, rows: torch.Tensor, targets: int,
                      width: int) -> tuple[torch.Tensor, int, int, int]:
        """Sum of `rows[row_of(spike)]` into `target_of(spike)` over the spikes of `train`
        [D, B, heads, Cph, L]; returns (sums [targets, width], spikes, fan-out, accumulates)."""
        sums = torch.zeros(targets, width, dtype=torch.float64)
        spikes = 0
        for chunk in torch.nonzero(train).split(CHUNK_SPIKES):
            spikes += len(chunk)
            b, h, channel, n = chunk[:, 1], chunk[:, 2], chunk[:, 3], chunk[:, 4]
            sums.index_add_(0, target_of(b, h, channel, n), rows[row_of(b, h, channel, n)])
        return sums, spikes, width, spikes * width
