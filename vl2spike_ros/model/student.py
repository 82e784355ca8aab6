"""The Spikformer student: spikingjelly's own Spikformer plus a descriptor head.

Static images reach the first, real-valued Conv+BN stage identically at every timestep, so it is
computed once per frame and only broadcast over time (`first_stage_once`); the naive T-fold
computation is kept as `forward_naive` because the equality test needs the reference path.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from spikingjelly.activation_based import functional
from spikingjelly.activation_based.model.spikformer import Spikformer
from torch import nn

from .config import StudentConfig
from .neurons import MembraneReadout, is_neuron, replace_neurons

# spikingjelly probes for Triton kernels on its first forward; without a GPU torch logs a warning per
# probe that tells a user nothing actionable, on every CLI call and node start.
logging.getLogger("torch._library.triton").setLevel(logging.ERROR)


@dataclass
class StudentOutput:
    descriptor: torch.Tensor          # [B, D], L2-normalised mean of the per-step embeddings
    step_descriptors: torch.Tensor    # [T, B, D], each L2-normalised
    tokens: torch.Tensor              # [T, B, N, C] spike tokens (sums of spikes on the residual path)
    token_rates: torch.Tensor         # [T, B, C] spike rate of each channel over the tokens, per step
    membrane_potentials: list[torch.Tensor] = field(default_factory=list)  # each [T, ...], on request


class GeneralizedMeanPool(nn.Module):
    """GeM over tokens: between mean (p=1) and max pooling, with a learnt p."""

    def __init__(self, initial_p: float = 3.0, eps: float = 1e-6) -> None:
        super().__init__()
        self.p = nn.Parameter(torch.tensor(float(initial_p)))
        self.eps = eps

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:  # [..., N, C] -> [..., C]
        p = self.p.clamp(min=1.0)
        return tokens.clamp(min=self.eps).pow(p).mean(dim=-2).pow(1.0 / p)


class MeanPool(nn.Module):
    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens.mean(dim=-2)


class MaxPoolWithoutIndices(nn.Module):
    """Max-pooling that, without autograd, takes the elementwise max of the k x k strided slices:
    torch's CPU max-pooling always computes the argmax indices too (for a backward that inference
    never runs) and was the largest single op in the student's profile. With autograd on
    (training, export) it is `F.max_pool2d`, so gradients and exported graphs do not change; the
    values are the same either way (a max is exact)."""

    def __init__(self, pool: nn.MaxPool2d) -> None:
        super().__init__()
        if pool.dilation not in (1, (1, 1)) or pool.ceil_mode or pool.return_indices:
            raise ValueError(f"MaxPoolWithoutIndices: unsupported {pool}")
        self.kernel, self.stride, self.padding = (_pair(pool.kernel_size), _pair(pool.stride or pool.kernel_size),
                                                  _pair(pool.padding))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            return F.max_pool2d(x, self.kernel, self.stride, self.padding)
        (kh, kw), (sh, sw), (ph, pw) = self.kernel, self.stride, self.padding
        height = (x.shape[-2] + 2 * ph - kh) // sh + 1
        width = (x.shape[-1] + 2 * pw - kw) // sw + 1
        padded = F.pad(x, (pw, pw, ph, ph), value=float("-inf"))
        out = None
        for dy in range(kh):
            for dx in range(kw):
                window = padded[..., dy:dy + sh * (height - 1) + 1:sh, dx:dx + sw * (width - 1) + 1:sw]
                out = window if out is None else torch.maximum(out, window)
        return out


class Heaviside(nn.Module):
    """The spike itself, without a surrogate gradient: what LIF nodes fire through at inference."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x >= 0).to(x)


def _pair(value: int | tuple[int, int]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)


class InputNormalization(nn.Module):
    """Maps images in [0, 1] to the network's input range (see StudentConfig)."""

    def __init__(self, kind: str, patch_size: int) -> None:
        super().__init__()
        self.kind = kind
        self.patch_size = patch_size

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.kind == "standard":
            return (images - 0.5) / 0.5
        kernel = self.patch_size | 1  # odd, so the window is centred
        pad = kernel // 2
        local_mean = F.avg_pool2d(images, kernel, stride=1, padding=pad, count_include_pad=False)
        local_sq = F.avg_pool2d(images * images, kernel, stride=1, padding=pad, count_include_pad=False)
        local_std = (local_sq - local_mean * local_mean).clamp(min=0.0).sqrt()
        return (images - local_mean) / (local_std + 0.05)


class SpikformerStudent(nn.Module):
    def __init__(self, config: StudentConfig) -> None:
        super().__init__()
        self.config = config
        self.normalize = InputNormalization(config.input_normalization, config.patch_norm_size)
        self.backbone = Spikformer(
            T=config.timesteps,
            in_channels=config.in_channels,
            img_size_h=config.image_height,
            img_size_w=config.image_width,
            patch_size=config.patch_size,
            num_classes=1,
            embed_dims=config.embed_dims,
            num_heads=config.num_heads,
            mlp_ratio=config.mlp_ratio,
            depths=config.depths,
            tau=float(config.lif_tau),
        )
        # The classification head is replaced by the descriptor head below.
        self.backbone.head = nn.Identity()
        for module in self.backbone.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.momentum = config.bn_momentum
        for module in list(self.backbone.modules()):
            for name, child in list(module.named_children()):
                if isinstance(child, nn.MaxPool2d):
                    setattr(module, name, MaxPoolWithoutIndices(child))
        replace_neurons(self.backbone, config.neuron, config.spike_levels)
        if config.readout == "membrane":
            self.backbone.blocks[-1].mlp.neuron2 = MembraneReadout()
        self._neurons = [m for m in self.backbone.modules() if is_neuron(m)]
        self._surrogates = [node.surrogate_function for node in self._neurons]
        self._heaviside = Heaviside()
        # False keeps the surrogate at inference too (benchmarks/student_steps.py measures both).
        self.spikes_without_surrogate = True
        self.pool = GeneralizedMeanPool() if config.pooling == "gem" else MeanPool()
        cells = config.pool_grid_rows * config.pool_grid_cols
        self.projection = nn.Linear(cells * config.embed_dims, config.descriptor_dim)

    @property
    def neurons(self) -> list[nn.Module]:
        """Every neuron of the backbone (LIF nodes, or what `StudentConfig.neuron` put in their
        place), in module order; not the membrane readout."""
        return list(self._neurons)

    @property
    def first_stage(self) -> nn.Module:
        """The real-valued Conv+BN that sees pixels; everything after it sees spikes."""
        return self.backbone.patch_embed.stages[0].conv_bn

    def _stem_after_first_stage(self, first_stage_out: torch.Tensor) -> torch.Tensor:
        stem = self.backbone.patch_embed
        x_seq = stem.stages[0].neuron(first_stage_out)
        for stage in stem.stages[1:]:
            x_seq = stage(x_seq)
        return x_seq + stem.positional_encoding(x_seq)

    def _pool_cells(self, feature_maps: torch.Tensor) -> torch.Tensor:
        """[T, B, C, H, W] -> [T, B, cells * C]: pooled tokens of each grid cell, concatenated."""
        steps, batch, channels, height, width = feature_maps.shape
        rows, cols = self.config.pool_grid_rows, self.config.pool_grid_cols
        cells = feature_maps.reshape(steps, batch, channels, rows, height // rows, cols, width // cols)
        cells = cells.permute(0, 1, 3, 5, 4, 6, 2).reshape(steps, batch, rows * cols, -1, channels)
        return self.pool(cells).flatten(2)

    def _step_descriptors(self, feature_maps: torch.Tensor) -> torch.Tensor:
        """[T, B, C, H, W] -> [T, B, D]: each step's descriptor, unit length."""
        return F.normalize(self.projection(self._pool_cells(feature_maps)), dim=-1)

    def descriptor_of(self, feature_maps: torch.Tensor) -> torch.Tensor:
        """The descriptor [B, D] of the last block's output [T, B, C, H, W] (another path's, e.g.
        core/spike_train.py's): pooling and projection, as `forward` does."""
        return F.normalize(self._step_descriptors(feature_maps).mean(dim=0), dim=-1)

    def _head(self, feature_maps: torch.Tensor, membrane: list[torch.Tensor]) -> StudentOutput:
        for block in self.backbone.blocks:
            feature_maps = block(feature_maps)
        tokens = feature_maps.flatten(3).transpose(2, 3)  # [T, B, N, C]
        step_descriptors = self._step_descriptors(feature_maps)
        descriptor = F.normalize(step_descriptors.mean(dim=0), dim=-1)
        if membrane is not None:
            membrane = [node.v_seq for node in self._neurons]
        return StudentOutput(
            descriptor=descriptor,
            step_descriptors=step_descriptors,
            tokens=tokens,
            token_rates=tokens.mean(dim=2),
            membrane_potentials=membrane or [],
        )

    def _prepare(self, images: torch.Tensor, return_membrane: bool) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1:] != (
                self.config.in_channels, self.config.image_height, self.config.image_width):
            raise ValueError(
                f"student input: expected [B, {self.config.in_channels}, {self.config.image_height}, "
                f"{self.config.image_width}] in [0, 1], got {tuple(images.shape)}")
        functional.reset_net(self.backbone)
        # Without autograd nobody needs the surrogate gradient: the nodes fire through a plain
        # Heaviside step (same spikes), which skips the surrogate's autograd Function per step.
        inference = self.spikes_without_surrogate and not torch.is_grad_enabled()
        for node, surrogate in zip(self._neurons, self._surrogates):
            node.store_v_seq = return_membrane
            node.surrogate_function = self._heaviside if inference else surrogate
        return self.normalize(images)

    def forward(self, images: torch.Tensor, return_membrane: bool = False) -> StudentOutput:
        """images: float [B, C, H, W] in [0, 1] at the configured size."""
        x = self._prepare(images, return_membrane)
        first = self.first_stage(x.unsqueeze(0))  # one timestep's worth of real-valued work
        # Materialised: the LIF and convolutions after it run markedly slower on an expanded view.
        first = first.expand(self.config.timesteps, *first.shape[1:]).contiguous()
        return self._head(self._stem_after_first_stage(first), [] if return_membrane else None)

    def forward_naive(self, images: torch.Tensor) -> StudentOutput:
        """The textbook path: the image repeated T times through every layer (reference only)."""
        x = self._prepare(images, False)
        x_seq = x.unsqueeze(0).repeat(self.config.timesteps, 1, 1, 1, 1)
        return self._head(self._stem_after_first_stage(self.first_stage(x_seq)), None)
