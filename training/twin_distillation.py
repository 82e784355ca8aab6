"""The ANN twin as a layer-by-layer teacher (distill.twin_weight, distill.twin_checkpoint).

The twin (`student.neuron: relu`, same shape) has a feature map for every neuron of the student,
at the same place in the network, so each spike map can be pulled towards the twin's activation
one to one. The comparison is scale-free (per image, the L2-normalised map averaged over
timesteps), because spike counts and ReLU activations live on different scales.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vl2spike_ros.core.checkpoint import load_checkpoint
from vl2spike_ros.errors import InputError
from vl2spike_ros.model import SpikformerStudent


class NeuronTap:
    """Records the output of every neuron of a student, by module name, while attached."""

    def __init__(self, model: SpikformerStudent) -> None:
        names = {id(module): name for name, module in model.named_modules()}
        self.outputs: dict[str, torch.Tensor] = {}
        self._handles = [node.register_forward_hook(self._recorder(names[id(node)])) for node in model.neurons]

    def _recorder(self, name: str):
        def record(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            self.outputs[name] = output
        return record

    def take(self) -> dict[str, torch.Tensor]:
        outputs, self.outputs = self.outputs, {}
        return outputs


def load_twin(path: str, student: SpikformerStudent) -> SpikformerStudent:
    """The frozen twin at `path`; refused unless it is a relu twin of the student's shape."""
    twin, info = load_checkpoint(path)
    if twin.config.neuron != "relu":
        raise InputError(f"distill.twin_checkpoint {path}: expected an ANN twin (student.neuron relu), "
                         f"got neuron {twin.config.neuron!r}")
    ours, theirs = student.config.to_dict(), twin.config.to_dict()
    layout = ("image_height", "image_width", "in_channels", "patch_size", "embed_dims", "num_heads",
              "depths", "mlp_ratio")
    differing = [key for key in layout if ours[key] != theirs[key]]
    if differing:
        raise InputError(f"distill.twin_checkpoint {path}: another shape ({', '.join(differing)} differ); "
                         "expected the twin of this student")
    twin.requires_grad_(False)
    return twin.eval()


def layer_alignment(student_maps: dict[str, torch.Tensor], twin_maps: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean over the layers both have of ||n(s) - n(t)||^2 / 2, where n() is a per-image map
    averaged over timesteps and L2-normalised (1 - cosine where both maps are non-zero; a layer
    silent in both counts as agreement)."""
    shared = [name for name in student_maps if name in twin_maps]
    if not shared:
        raise RuntimeError("twin distillation: the student and its twin share no neuron")
    terms = []
    for name in shared:
        student_map = student_maps[name].mean(dim=0).flatten(1)
        twin_map = twin_maps[name].mean(dim=0).flatten(1)
        difference = F.normalize(student_map, dim=1) - F.normalize(twin_map, dim=1)
        terms.append(0.5 * difference.pow(2).sum(dim=1).mean())
    return torch.stack(terms).mean()
