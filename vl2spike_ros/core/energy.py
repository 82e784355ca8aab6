"""Synaptic operations and compute energy per frame of the Spikformer student (design §5).

Convention (Horowitz 2014, 45 nm; the one used by Spikformer and its successors):

* FLOPs(l) are the multiply-accumulates of layer ``l`` for one frame and one timestep.
* A layer whose input is real-valued costs MACs: ``4.6 pJ x FLOPs x (times it runs)``. Here that
  is the first Conv of the stem (pixels in; it runs once per frame, see ``SpikformerStudent``)
  and the descriptor ``projection``, whose input is a real-valued pooled vector (GeM or mean of
  spike counts), so it is a MAC layer too; it runs once per timestep.
* Every other Conv/Linear and the two matrix products of spiking self-attention see spikes:
  ``SOP(l) = r(l) x T x FLOPs(l)`` accumulates at ``0.9 pJ``, with ``r(l)`` the layer's input
  spikes per entry measured on the given images (averaged over the batch and the timesteps). An
  entry of value k is k binary spikes: an integer neuron's level (``StudentConfig.neuron='integer'``;
  at inference k spikes over virtual timesteps, ``core/spike_train.py`` runs them), and on the
  residual path of a block the sum of the spikes its branches add (0, 1, 2, ... for binary LIF
  neurons too: each branch's spike reaches the next layer). ``r(l) x FLOPs(l)`` is each binary spike
  times its fan-out (out channels x kernel taps), so a spike at the edge of a zero-padded map
  counts the taps that fall outside it too. The fraction of entries that fire is reported beside
  it (``input_fraction_firing``); for binary spikes off the residual path the two are equal.
* The ANN twin (``neuron='relu'``) is not spiking: it is reported as the ANN of equal shape
  (every layer a MAC layer, once per frame; ratio 1).
* The ANN of equal shape runs every layer once per frame (no T), every operation a MAC.
* Only the Conv/Linear layers and attention products are counted (``LEFT_OUT``): the input (patch)
  normalisation, BatchNorm (folded into the convolution at inference), max-pooling, residual
  additions, neuron updates, GeM pooling and L2 normalisation are left out, and so is memory
  traffic (spikingjelly's ``op_counter`` energy models add it by default).
* A second reference at 8-bit integer precision (Horowitz 2014: 8-bit add 0.03 pJ, 8-bit multiply
  0.2 pJ): the same-shape ANN at int8 costs ``0.23 pJ`` per MAC, the student's MAC layers the same
  and its synaptic operations ``0.03 pJ`` (8-bit accumulates), ``ratio_int8``.

Attention products. spikingjelly's ``SpikingSelfAttention`` has no softmax and computes, per
head, ``(V Kᵀ) Q`` (``_ssa_kernel_torch``): ``V Kᵀ`` is ``Cph x N x Cph`` and ``(V Kᵀ) Q`` is
``Cph x Cph x N`` MACs, i.e. ``C x Cph x N`` each summed over heads. The paper's order
``(Q Kᵀ) V`` costs ``N x N x C`` each. ``attention_order="executed"`` (default) counts what the
model runs; ``"qk_first"`` counts the paper's order, for comparison with published tables. In both
orders the *input* of the first product is its left spike operand (``V``, resp. ``Q``; its spikes
gate the accumulation of the other operand's rows, an upper bound on the coincidences) and the
input of the second product is its only spike operand (``Q``, resp. ``V``; the first product's
integer result plays the role of the weights).

Why forward hooks and not ``spikingjelly.activation_based.op_counter``: its ``FlopCounter``
counts 2 x MACs, and ``SynOpCounter`` counts exact spike coincidences for spike-spike products
and ignores convolutions whose input is not strictly binary (the residual stream feeding ``qkv``
and ``fc1`` holds 0/1/2...), so neither gives ``rate x T x FLOPs`` of this convention. Hooks on
the Conv/Linear modules plus an explicit count of the two attention products (from the spikes
``qkv_lif`` emits) give exactly the convention and keep the per-layer breakdown by module name.
"""
from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from spikingjelly.activation_based import functional
from spikingjelly.activation_based.layer.attention import SpikingSelfAttention
from torch import nn

from ..model.neurons import is_neuron

E_MAC_PJ = 4.6   # one 32-bit float multiply-accumulate, 45 nm (Horowitz 2014)
E_AC_PJ = 0.9    # one 32-bit float accumulate, 45 nm
E_AC_INT8_PJ = 0.03                   # one 8-bit integer add, 45 nm
E_MAC_INT8_PJ = 0.2 + E_AC_INT8_PJ    # one 8-bit integer multiply (0.2 pJ) and add
LEFT_OUT = ("input normalisation", "BatchNorm (folded)", "max-pooling", "residual additions", "neuron updates",
            "GeM pooling", "L2 normalisation", "memory traffic")
ATTENTION_ORDERS = ("executed", "qk_first")


@dataclass
class LayerEnergy:
    name: str
    kind: str                 # 'mac' (real-valued input) or 'sop' (spike input)
    flops: int                # MACs of one timestep for one frame
    input_spikes_per_entry: float  # mean binary spikes per input entry (a level k counts k); 1.0 for MAC layers
    input_fraction_firing: float   # fraction of input entries with at least one spike; 1.0 for MAC layers
    timesteps: int            # how many times the layer runs per frame
    operations: float         # MACs (flops x timesteps) or SOPs (spikes per entry x timesteps x flops), per frame
    energy_pj: float          # SNN energy per frame
    ann_energy_pj: float      # energy of the same layer in an ANN of equal shape (one pass, MACs)
    energy_int8_pj: float     # the SNN's operations at 8-bit integer precision
    ann_int8_energy_pj: float  # the ANN of equal shape at int8

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class EnergyReport:
    layers: list[LayerEnergy]
    snn_energy_pj: float      # per frame
    ann_energy_pj: float      # per frame
    ratio: float              # snn / ann
    snn_int8_energy_pj: float  # per frame, at 8-bit integer precision
    ann_int8_energy_pj: float  # per frame, the ANN of equal shape at int8
    ratio_int8: float          # snn_int8 / ann_int8
    timesteps: int
    num_frames: int           # frames the firing rates were measured on
    attention_order: str = "executed"
    energy_per_mac_pj: float = E_MAC_PJ
    energy_per_ac_pj: float = E_AC_PJ

    @property
    def total_flops(self) -> int:
        return sum(layer.flops for layer in self.layers)

    @property
    def total_sops(self) -> float:
        return sum(layer.operations for layer in self.layers if layer.kind == "sop")

    @property
    def total_macs(self) -> float:
        return sum(layer.operations for layer in self.layers if layer.kind == "mac")

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values.update(snn_energy_uj=self.snn_energy_pj * 1e-6, ann_energy_uj=self.ann_energy_pj * 1e-6,
                      snn_int8_energy_uj=self.snn_int8_energy_pj * 1e-6,
                      ann_int8_energy_uj=self.ann_int8_energy_pj * 1e-6,
                      total_flops=self.total_flops, total_sops=self.total_sops,
                      total_macs=self.total_macs, left_out=list(LEFT_OUT))
        return values

    def format_table(self) -> str:
        headers = ("layer", "kind", "FLOPs/step", "T", "spikes/entry", "firing", "ops/frame", "E_SNN", "E_ANN")
        rows = [(layer.name, layer.kind, f"{layer.flops:,}", str(layer.timesteps),
                 *((f"{layer.input_spikes_per_entry:.4f}", f"{layer.input_fraction_firing:.4f}")
                   if layer.kind == "sop" else ("", "")),
                 f"{layer.operations:,.0f}", _format_energy(layer.energy_pj), _format_energy(layer.ann_energy_pj))
                for layer in self.layers]
        rows.append(("total", "", f"{self.total_flops:,}", str(self.timesteps), "", "",
                     f"{self.total_macs:,.0f} MAC + {self.total_sops:,.0f} SOP",
                     _format_energy(self.snn_energy_pj), _format_energy(self.ann_energy_pj)))
        widths = [max(len(row[i]) for row in (headers, *rows)) for i in range(len(headers))]

        def line(row: tuple[str, ...]) -> str:
            cells = [cell.ljust(width) if i < 2 else cell.rjust(width)
                     for i, (cell, width) in enumerate(zip(row, widths))]
            return "  ".join(cells).rstrip()

        rule = "  ".join("-" * width for width in widths)
        out = [line(headers), rule, *(line(row) for row in rows[:-1]), rule, line(rows[-1]), ""]
        out.append(f"per frame: SNN {self.snn_energy_pj * 1e-6:.4f} µJ ({self.snn_energy_pj * 1e-3:,.1f} nJ), "
                   f"ANN of equal shape {self.ann_energy_pj * 1e-6:.4f} µJ "
                   f"({self.ann_energy_pj * 1e-3:,.1f} nJ), SNN/ANN = {self.ratio:.4f}")
        out.append(f"T = {self.timesteps}, rates measured on {self.num_frames} frame(s); "
                   f"MAC {self.energy_per_mac_pj} pJ, AC {self.energy_per_ac_pj} pJ (45 nm); "
                   f"attention products counted as {self.attention_order!r}")
        out.append(f"int8 (8-bit add {E_AC_INT8_PJ} pJ, 8-bit multiply {E_MAC_INT8_PJ - E_AC_INT8_PJ:g} pJ): "
                   f"SNN {self.snn_int8_energy_pj * 1e-6:.4f} µJ, ANN of equal shape "
                   f"{self.ann_int8_energy_pj * 1e-6:.4f} µJ, SNN/ANN = {self.ratio_int8:.4f}")
        out.append(f"counted: Conv/Linear layers and attention products; left out: {', '.join(LEFT_OUT)}")
        return "\n".join(out)


def _format_energy(pj: float) -> str:
    for unit, scale in (("µJ", 1e6), ("nJ", 1e3)):
        if abs(pj) >= scale:
            return f"{pj / scale:.3f} {unit}"
    return f"{pj:.1f} pJ"


def module_flops(module: nn.Module, output: torch.Tensor) -> tuple[int, int]:
    """(MACs per output row, number of rows). Rows are batch x timesteps of this call."""
    if isinstance(module, nn.modules.conv._ConvNd):
        rows = output.shape[0]
        positions = math.prod(output.shape[2:])
        per_output = (module.in_channels // module.groups) * math.prod(module.kernel_size)
        return module.out_channels * positions * per_output, rows
    if isinstance(module, nn.Linear):
        rows = output.numel() // module.out_features
        return module.out_features * module.in_features, rows
    raise TypeError(f"energy: no FLOP rule for {type(module).__name__}")


def _is_spike_like(x: torch.Tensor) -> bool:
    """Spikes or sums of spikes: non-negative integers."""
    return bool(((x >= 0) & (x == torch.round(x))).all())


class _Recorder:
    def __init__(self, batch: int, timesteps: int, attention_order: str, neuron_kind: str) -> None:
        self.batch = batch
        self.spiking = neuron_kind != "relu"
        self.timesteps = timesteps
        self.attention_order = attention_order
        self.order: list[str] = []
        self.stats: dict[str, dict[str, Any]] = {}

    def _add(self, name: str, kind: str, flops: int, runs: int, x: torch.Tensor) -> None:
        if name not in self.stats:
            self.order.append(name)
            self.stats[name] = dict(kind=kind, flops=flops, runs=0, spikes=0.0, nnz=0, numel=0)
        entry = self.stats[name]
        if entry["flops"] != flops:
            raise RuntimeError(f"energy: layer {name} changed shape between calls")
        entry["runs"] += runs
        entry["spikes"] += float(x.sum())
        entry["nnz"] += int(torch.count_nonzero(x))
        entry["numel"] += x.numel()

    def layer_hook(self, name: str, kind: str):
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            x = inputs[0]
            flops, rows = module_flops(module, output)
            if rows % self.batch:
                raise RuntimeError(f"energy: layer {name} saw {rows} rows for a batch of {self.batch}")
            if kind == "sop" and self.spiking and not _is_spike_like(x):
                warnings.warn(f"energy: layer {name} is counted as synaptic operations but its input "
                              f"is not spikes (or sums of spikes)", RuntimeWarning, stacklevel=2)
            self._add(name, kind, flops, rows // self.batch, x)
        return hook

    def attention_hook(self, name: str, attn: SpikingSelfAttention):
        def hook(module: nn.Module, inputs: tuple, qkv: torch.Tensor) -> None:
            # qkv: the spikes _ssa_kernel_torch multiplies, [T, B, 3*C, N] (q, k, v stacked).
            steps, batch, three_c, tokens = qkv.shape
            if batch != self.batch:
                raise RuntimeError(f"energy: attention {name} saw batch {batch}, expected {self.batch}")
            channels = three_c // 3
            per_head = channels // attn.num_heads
            q, k, v = qkv.split(channels, dim=2)
            if self.attention_order == "executed":
                # (V Kᵀ): [Cph, N] @ [N, Cph]; then (V Kᵀ) @ Q: [Cph, Cph] @ [Cph, N]; per head.
                products = (("matmul_v_kT", v, channels * per_head * tokens),
                            ("matmul_vkT_q", q, channels * per_head * tokens))
            else:
                # (Q Kᵀ): [N, Cph] @ [Cph, N]; then (Q Kᵀ) @ V: [N, N] @ [N, Cph]; per head.
                products = (("matmul_q_kT", q, tokens * tokens * channels),
                            ("matmul_qkT_v", v, tokens * tokens * channels))
            for suffix, spikes, flops in products:
                self._add(f"{name}.{suffix}", "sop", flops, steps, spikes)
        return hook


def costed_layers(model: nn.Module) -> tuple[list[tuple[str, nn.Module, str]],
                                             list[tuple[str, SpikingSelfAttention]]]:
    """The student's Conv/Linear layers as (name, module, 'mac' | 'sop') and its attentions."""
    first = {id(m) for m in model.first_stage.modules()}
    projection = {id(m) for m in model.projection.modules()}
    layers: list[tuple[str, nn.Module, str]] = []
    attentions: list[tuple[str, SpikingSelfAttention]] = []
    for name, module in model.named_modules():
        if isinstance(module, SpikingSelfAttention):
            attentions.append((name, module))
        if not isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)):
            continue
        if id(module) in first or id(module) in projection:
            layers.append((name, module, "mac"))
        elif name.startswith("backbone."):
            layers.append((name, module, "sop"))
        else:
            raise TypeError(f"energy: layer {name} is outside the spiking backbone and is not the "
                            f"projection; no rule says whether its input is real-valued")
    return layers, attentions


@torch.no_grad()
def estimate_energy(model: nn.Module, images: torch.Tensor,
                    attention_order: str = "executed") -> EnergyReport:
    """Energy per frame of ``model`` (a ``SpikformerStudent``) measured on ``images``.

    ``images``: ``[B, C, H, W]`` in [0, 1] (uint8 is scaled by 1/255) at the model's input size.
    Runs one forward pass in eval mode without gradients; training mode, ``store_v_seq`` and the
    neuron states are restored / reset afterwards.
    """
    if attention_order not in ATTENTION_ORDERS:
        raise ValueError(f"energy: attention_order must be one of {ATTENTION_ORDERS}, got {attention_order!r}")
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(f"energy: images must be a non-empty [B, C, H, W] tensor, got "
                         f"{getattr(images, 'shape', type(images))}")
    if images.dtype == torch.uint8:
        images = images.float() / 255.0
    parameter = next(model.parameters(), None)
    if parameter is not None:
        images = images.to(device=parameter.device, dtype=parameter.dtype)
    timesteps = int(model.config.timesteps)
    neuron_kind = getattr(model.config, "neuron", "lif")
    recorder = _Recorder(images.shape[0], timesteps, attention_order, neuron_kind)
    layers, attentions = costed_layers(model)

    was_training = model.training
    nodes = [m for m in model.modules() if is_neuron(m)]
    stored = [node.store_v_seq for node in nodes]
    handles = []
    try:
        model.eval()
        for name, module, kind in layers:
            handles.append(module.register_forward_hook(recorder.layer_hook(name, kind)))
        for name, attn in attentions:
            handles.append(attn.qkv_lif.register_forward_hook(recorder.attention_hook(name, attn)))
        model(images)
    finally:
        for handle in handles:
            handle.remove()
        functional.reset_net(model)
        for node, value in zip(nodes, stored):
            node.store_v_seq = value
        model.train(was_training)

    results: list[LayerEnergy] = []
    for name in recorder.order:
        entry = recorder.stats[name]
        flops, runs = entry["flops"], entry["runs"]
        if neuron_kind == "relu":
            entry["kind"], runs = "mac", 1
        if entry["kind"] == "mac":
            rate = firing = 1.0
            operations = float(flops * runs)
            energy, energy_int8 = E_MAC_PJ * operations, E_MAC_INT8_PJ * operations
        else:
            rate = entry["spikes"] / entry["numel"] if entry["numel"] else 0.0
            firing = entry["nnz"] / entry["numel"] if entry["numel"] else 0.0
            operations = rate * runs * flops
            energy, energy_int8 = E_AC_PJ * operations, E_AC_INT8_PJ * operations
        results.append(LayerEnergy(name=name, kind=entry["kind"], flops=flops, input_spikes_per_entry=rate,
                                   input_fraction_firing=firing, timesteps=runs, operations=operations,
                                   energy_pj=energy, ann_energy_pj=E_MAC_PJ * flops, energy_int8_pj=energy_int8,
                                   ann_int8_energy_pj=E_MAC_INT8_PJ * flops))
    snn = sum(layer.energy_pj for layer in results)
    ann = sum(layer.ann_energy_pj for layer in results)
    snn_int8 = sum(layer.energy_int8_pj for layer in results)
    ann_int8 = sum(layer.ann_int8_energy_pj for layer in results)
    return EnergyReport(layers=results, snn_energy_pj=snn, ann_energy_pj=ann,
                        ratio=snn / ann if ann else float("nan"), snn_int8_energy_pj=snn_int8,
                        ann_int8_energy_pj=ann_int8, ratio_int8=snn_int8 / ann_int8 if ann_int8 else float("nan"),
                        timesteps=1 if neuron_kind == "relu" else timesteps,
                        num_frames=int(images.shape[0]), attention_order=attention_order)


@torch.no_grad()
def count_macs(model: nn.Module, *inputs: Any) -> float:
    """Multiply-accumulates per frame of an ANN's Conv and Linear layers on `inputs` (first dim: frames),
    counted with forward hooks; the one MAC counter of the code base (training's teacher energy and
    the benchmark's ViT reference use it). Products of activations with activations (attention)
    are not modules and are the caller's to add."""
    macs = 0

    def count(module: nn.Module, layer_inputs: tuple, output: torch.Tensor) -> None:
        nonlocal macs
        flops, rows = module_flops(module, output)
        macs += flops * rows

    handles = [module.register_forward_hook(count) for module in model.modules()
               if isinstance(module, (nn.modules.conv._ConvNd, nn.Linear))]
    was_training = model.training
    try:
        model.eval()(*inputs)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return macs / inputs[0].shape[0]


def ann_energy_of(model: nn.Module, images: torch.Tensor) -> dict:
    """Energy per frame of an ANN image encoder (design §5's E_ANN): E_MAC_PJ per MAC of its Conv
    and Linear layers, measured on `images`."""
    per_frame = count_macs(model, images)
    return {"macs": per_frame, "ann_energy_pj": E_MAC_PJ * per_frame}
