"""The one dataclass that describes a student model; it is saved with every checkpoint."""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass

from ..errors import InputError

POOLINGS = ("mean", "gem")
NEURONS = ("lif", "plif", "integer", "relu")  # model/neurons.py
READOUTS = ("spikes", "membrane")
# Upper bounds, checked before any tensor exists: a config (from a file, or `--set`) beyond them would
# ask for gigabytes to terabytes of weights or attention maps. Generous for a VPR student.
INT_LIMITS = {"image_height": 4096, "image_width": 4096, "in_channels": 3, "embed_dims": 4096,
              "num_heads": 64, "depths": 48, "timesteps": 64, "descriptor_dim": 65536,
              "patch_norm_size": 4096, "pool_grid_rows": 4096, "pool_grid_cols": 4096, "spike_levels": 64}
MAX_TOKENS = 4096  # spiking self-attention holds tokens^2 scores per head and timestep
MAX_PARAMETERS = 200_000_000  # 800 MB of float32 weights
MAX_MLP_RATIO = 16.0
INPUT_NORMALIZATIONS = ("standard", "patch")
# How an image of another aspect ratio is fitted to the input (core/preprocess.py does the fitting).
RESIZE_MODES = ("crop", "squeeze", "letterbox")
DEFAULT_RESIZE_MODE = "crop"


@dataclass(frozen=True)
class StudentConfig:
    """Shape of the Spikformer student and its descriptor head.

    Images are resized to ``image_height`` x ``image_width`` before the network sees them.
    ``input_normalization='patch'`` subtracts a local mean and divides by a local deviation over
    ``patch_norm_size`` pixels: the classic remedy for appearance change in VPR (patch-normalised
    pixels alone give ~25% Recall@1 on Nordland64 where raw pixels give ~3.5%).
    """

    image_height: int = 32
    image_width: int = 64
    in_channels: int = 3
    patch_size: int = 4
    embed_dims: int = 128
    num_heads: int = 4
    depths: int = 2
    mlp_ratio: float = 4.0
    timesteps: int = 2
    descriptor_dim: int = 256
    pooling: str = "gem"
    # Tokens are pooled per cell of a pool_grid_rows x pool_grid_cols grid and the cells concatenated:
    # one global pool throws away the layout of a scene, which is much of what tells places apart.
    pool_grid_rows: int = 1
    pool_grid_cols: int = 1
    input_normalization: str = "patch"
    patch_norm_size: int = 8
    lif_tau: float = 2.0
    # What fires (model/neurons.py): lif | plif (learnt tau) | integer (0..spike_levels spikes per
    # step) | relu (the ANN twin of the same shape, not spiking).
    neuron: str = "lif"
    spike_levels: int = 1
    # Where the descriptor is read: the last block's spikes, or its membrane (a non-spiking
    # integrator in place of the last output neuron).
    readout: str = "spikes"
    # torch's 0.1 leaves running statistics so far off after short training that eval-mode
    # neurons stay silent for epochs (design §4); a higher momentum tracks them quickly.
    bn_momentum: float = 0.3
    # How an image of another aspect ratio is fitted to the input (core/preprocess.py).
    resize_mode: str = DEFAULT_RESIZE_MODE

    def __post_init__(self) -> None:
        positive = ("image_height", "image_width", "in_channels", "embed_dims", "num_heads",
                    "depths", "timesteps", "descriptor_dim", "patch_norm_size", "pool_grid_rows",
                    "pool_grid_cols", "spike_levels")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= INT_LIMITS[name]:
                raise InputError(f"student config: {name} must be an integer in [1, {INT_LIMITS[name]}], "
                                 f"got {_short(value)}")
        for name in ("mlp_ratio", "lif_tau", "bn_momentum"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                raise InputError(f"student config: {name} must be a finite number, got {_short(value)}")
        if not 0.0 < self.mlp_ratio <= MAX_MLP_RATIO:
            raise InputError(f"student config: mlp_ratio must be in (0, {MAX_MLP_RATIO:g}], got {self.mlp_ratio}")
        for name in ("pooling", "input_normalization", "neuron", "readout"):
            if not isinstance(getattr(self, name), str):
                raise InputError(f"student config: {name} must be a string, got {_short(getattr(self, name))}")
        if self.patch_size not in (4, 16):
            raise InputError(f"student config: patch_size must be 4 or 16 (spikingjelly's "
                             f"Spikformer stem), got {_short(self.patch_size)}")
        if self.image_height % self.patch_size or self.image_width % self.patch_size:
            raise InputError(f"student config: image size {self.image_height}x{self.image_width} "
                             f"must be a multiple of patch_size {self.patch_size}")
        grid = (self.image_height // self.patch_size, self.image_width // self.patch_size)
        if grid[0] % self.pool_grid_rows or grid[1] % self.pool_grid_cols:
            raise InputError(f"student config: pool grid {self.pool_grid_rows}x{self.pool_grid_cols} must "
                             f"divide the {grid[0]}x{grid[1]} token grid")
        if self.embed_dims % 8 or self.embed_dims % self.num_heads:
            raise InputError(f"student config: embed_dims {self.embed_dims} must be a multiple of 8 "
                             f"and of num_heads {self.num_heads}")
        if self.num_tokens > MAX_TOKENS:
            raise InputError(f"student config: {grid[0]}x{grid[1]} = {self.num_tokens} tokens "
                             f"(image {self.image_height}x{self.image_width} / patch {self.patch_size}); "
                             f"expected at most {MAX_TOKENS}")
        if self.estimated_parameters > MAX_PARAMETERS:
            raise InputError(f"student config: about {self.estimated_parameters:,} weights (embed_dims "
                             f"{self.embed_dims}, depths {self.depths}, descriptor_dim {self.descriptor_dim}); "
                             f"expected at most {MAX_PARAMETERS:,}")
        if self.in_channels not in (1, 3):
            raise InputError(f"student config: in_channels must be 1 or 3, got {self.in_channels}")
        if self.pooling not in POOLINGS:
            raise InputError(f"student config: pooling must be one of {POOLINGS}, got {_short(self.pooling)}")
        if self.neuron not in NEURONS:
            raise InputError(f"student config: neuron must be one of {NEURONS}, got {_short(self.neuron)}")
        if self.spike_levels > 1 and self.neuron != "integer":
            raise InputError(f"student config: spike_levels {self.spike_levels} needs neuron 'integer' "
                             f"(binary spikes are one level), got neuron {_short(self.neuron)}")
        if self.readout not in READOUTS:
            raise InputError(f"student config: readout must be one of {READOUTS}, got {_short(self.readout)}")
        if self.input_normalization not in INPUT_NORMALIZATIONS:
            raise InputError(f"student config: input_normalization must be one of "
                             f"{INPUT_NORMALIZATIONS}, got {_short(self.input_normalization)}")
        if self.resize_mode not in RESIZE_MODES:
            raise InputError(f"student config: resize_mode must be one of {RESIZE_MODES}, got {_short(self.resize_mode)}")
        if not 0.0 < float(self.bn_momentum) <= 1.0:
            raise InputError(f"student config: bn_momentum must be in (0, 1], got {self.bn_momentum}")
        if float(self.lif_tau) <= 1.0:
            raise InputError(f"student config: lif_tau must be > 1, got {self.lif_tau}")

    @property
    def estimated_parameters(self) -> int:
        """Weights the model will have, roughly (the stem's convolutions, the blocks, the head)."""
        square = self.embed_dims ** 2
        blocks = self.depths * (4 + 2 * self.mlp_ratio) * square  # q, k, v, projection; MLP
        head = self.embed_dims * self.pool_grid_rows * self.pool_grid_cols * self.descriptor_dim
        return int(13 * square + blocks + head)

    @property
    def num_tokens(self) -> int:
        return (self.image_height // self.patch_size) * (self.image_width // self.patch_size)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, values: dict) -> "StudentConfig":
        if not isinstance(values, dict):
            raise InputError(f"student config: expected a JSON object of fields, got {_short(values)}")
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise InputError(f"student config: unknown keys {_short(unknown)}; expected a subset of {sorted(known)}")
        return cls(**values)


def _short(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
