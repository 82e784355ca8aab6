"""Our own ANN image encoders (teachers) and their checkpoint format: safetensors + JSON config.

An architecture is named in the config (`architecture`), so the checkpoint format is not tied to
one network: any encoder registered in ARCHITECTURES loads through `load_ann_encoder`.
Registered: the small place-recognition CNN of design §4 (~1.1 M parameters), and EfficientNet-Lite0
cut after a number of its blocks (pretrained_encoder.py), which starts from ImageNet weights.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from vl2spike_ros.errors import InputError
from vl2spike_ros.core.atomic_files import atomic_path
from vl2spike_ros.core.tensor_files import read_safetensors
from vl2spike_ros.model.student import GeneralizedMeanPool, InputNormalization

ANN_FORMAT = "vl2spike-ann-encoder"


class PlaceCNN(nn.Module):
    """Conv-BN-ReLU stages (two 3x3 convs each; the first conv of a stage has the stage's stride),
    GeM pooling, linear, L2 norm. Striding from the first stage keeps it to ~26 M MACs a frame.

    Input: float [B, C, H, W] in [0, 1], normalised the way the student normalises (patch
    normalisation by default), so teacher and student start from the same evidence.
    """

    def __init__(self, config: dict) -> None:
        super().__init__()
        self.config = dict(config)
        self.normalize = InputNormalization(config["input_normalization"], config["patch_norm_size"])
        layers: list[nn.Module] = []
        channels = config["in_channels"]
        for width, stride in zip(config["widths"], config["strides"]):
            layers += [nn.Conv2d(channels, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width),
                       nn.ReLU(inplace=True),
                       nn.Conv2d(width, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width),
                       nn.ReLU(inplace=True)]
            channels = width
        self.features = nn.Sequential(*layers)
        self.pool = GeneralizedMeanPool()
        self.projection = nn.Linear(channels, config["embed_dim"])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        feature_map = self.features(self.normalize(images))          # [B, C, h, w]
        tokens = feature_map.flatten(2).transpose(1, 2)               # [B, N, C]
        return F.normalize(self.projection(self.pool(tokens)), dim=-1)


def _efficientnet_place(config: dict) -> nn.Module:
    # Imported on use: the EfficientNet packages are a training extra that place-cnn runs do not need.
    from .pretrained_encoder import EfficientNetPlace

    return EfficientNetPlace(config)


ARCHITECTURES = {"place-cnn": PlaceCNN, "efficientnet-lite0": _efficientnet_place}


def place_cnn_config(widths: list[int], strides: list[int], embed_dim: int, image_height: int, image_width: int,
                     in_channels: int, input_normalization: str, patch_norm_size: int) -> dict:
    if len(widths) != len(strides) or not widths:
        raise InputError(f"teacher.cnn: widths {widths} and strides {strides} must be non-empty and of equal length")
    return {"architecture": "place-cnn", "widths": list(widths), "strides": list(strides), "embed_dim": embed_dim,
            "image_height": image_height, "image_width": image_width, "in_channels": in_channels,
            "input_normalization": input_normalization, "patch_norm_size": patch_norm_size}


def build_ann_encoder(config: dict) -> nn.Module:
    architecture = config.get("architecture")
    if architecture not in ARCHITECTURES:
        raise InputError(f"ANN encoder config: architecture {architecture!r}; "
                         f"expected one of {sorted(ARCHITECTURES)}")
    return ARCHITECTURES[architecture](config)


def ann_identity(config: dict, state: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode())
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def save_ann_encoder(path: str | Path, model: nn.Module, provenance: dict) -> str:
    """Atomic; returns the identity (hash of config and weights)."""
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}
    identity = ann_identity(model.config, state)
    metadata = {"format": ANN_FORMAT, "config": json.dumps(model.config, sort_keys=True),
                "provenance": json.dumps(provenance, sort_keys=True), "identity": identity}
    with atomic_path(Path(path)) as temporary:
        save_file(state, str(temporary), metadata=metadata)
    return identity


def load_ann_encoder(path: str | Path) -> tuple[nn.Module, dict, str, dict]:
    """-> (model in eval mode, config, identity, provenance)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"ANN teacher {path}: no such file (expected a {ANN_FORMAT} safetensors file)")
    state, metadata = read_safetensors(path, "ANN teacher", f"expected a {ANN_FORMAT} safetensors file")
    if metadata.get("format") != ANN_FORMAT:
        raise InputError(f"ANN teacher {path}: format {metadata.get('format')!r}; expected {ANN_FORMAT!r}")
    config = json.loads(metadata["config"])
    identity = ann_identity(config, state)
    if identity != metadata.get("identity"):
        raise InputError(f"ANN teacher {path}: contents do not match its recorded identity "
                         "(modified or corrupted file)")
    model = build_ann_encoder(config)
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise InputError(f"ANN teacher {path}: weights do not fit its config "
                         f"({str(error).splitlines()[-1].strip()})") from None
    return model.eval(), config, identity, json.loads(metadata.get("provenance", "{}"))
