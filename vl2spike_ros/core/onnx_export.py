"""The whole student as one ONNX graph: uint8 RGB frames at the student's input size in, L2-normalised
float32 descriptors out, with the checkpoint's fingerprint and config in the model's metadata.

uint8 in (not float) so that the graph holds the scaling to [0, 1] and the input normalisation,
and a runtime needs only a resize before it. Exported with torch's dynamo exporter; the batch
dimension is dynamic.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from vl2spike_ros.core.atomic_files import atomic_path
from vl2spike_ros.core.checkpoint import CheckpointInfo
from vl2spike_ros.errors import InputError
from vl2spike_ros.model import SpikformerStudent

ONNX_FORMAT = "vl2spike-student-onnx"
ONNX_INPUT = "images"        # uint8 [B, H, W, C], RGB (C = 1: gray), at the student's input size
ONNX_OUTPUT = "descriptors"  # float32 [B, D], rows of unit length
ONNX_OPSET = 18


class FramesToDescriptors(nn.Module):
    """uint8 [B, H, W, C] -> descriptors [B, D]: the student with the scaling the encoder does."""

    def __init__(self, student: SpikformerStudent) -> None:
        super().__init__()
        self.student = student

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.student(frames.permute(0, 3, 1, 2).float() / 255.0).descriptor


def export_onnx(student: SpikformerStudent, info: CheckpointInfo, path: str | Path) -> Path:
    """Writes the ONNX model atomically; returns its path."""
    import onnx

    config = info.config
    example = torch.zeros((2, config.image_height, config.image_width, config.in_channels), dtype=torch.uint8)
    batch = torch.export.Dim("batch", min=1)
    wrapper = FramesToDescriptors(student).eval()
    # The exporter prints each stage and warns through logging; neither helps a CLI user.
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with torch.inference_mode(False), contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        # spikingjelly keeps neuron state as plain attributes, which the exporter warns about; the
        # state is reset at every forward, so the graph does not depend on it.
        warnings.simplefilter("ignore")
        program = torch.onnx.export(wrapper, (example,), dynamo=True, opset_version=ONNX_OPSET,
                                    input_names=[ONNX_INPUT], output_names=[ONNX_OUTPUT],
                                    dynamic_shapes={"frames": {0: batch}}, verbose=False)
    proto = program.model_proto
    metadata = {"format": ONNX_FORMAT, "fingerprint": info.fingerprint, "config": config.to_json(),
                "input": f"uint8 [B, {config.image_height}, {config.image_width}, {config.in_channels}] "
                         "RGB frames at the student's input size",
                "output": f"float32 [B, {config.descriptor_dim}] unit-length descriptors"}
    del proto.metadata_props[:]
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as temporary:
        onnx.save_model(proto, str(temporary))
    return path


def read_onnx_metadata(path: str | Path) -> dict[str, str]:
    """The vl2spike metadata of an exported model; refuses a file that is not one."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise InputError(f"ONNX model {path}: no such file")
    try:
        proto = onnx.load_model(str(path), load_external_data=False)
    except Exception as error:  # onnx raises DecodeError and others for a non-ONNX file
        raise InputError(f"ONNX model {path}: not readable as ONNX ({type(error).__name__})") from None
    metadata = {entry.key: entry.value for entry in proto.metadata_props}
    if metadata.get("format") != ONNX_FORMAT or "fingerprint" not in metadata:
        raise InputError(f"ONNX model {path}: no vl2spike metadata; expected a model written by "
                         "`vl2spike export --format onnx`")
    try:
        json.loads(metadata["config"])
    except (KeyError, json.JSONDecodeError):
        raise InputError(f"ONNX model {path}: config metadata unreadable") from None
    return metadata


def cache_directory() -> Path:
    """$XDG_CACHE_HOME/vl2spike_ros (default ~/.cache/vl2spike_ros): exported models, by fingerprint."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "vl2spike_ros"


def cached_onnx_path(fingerprint: str) -> Path:
    """Keyed by what decides the exported graph: the model, the opset, and the exporter's torch and onnx."""
    import onnx

    return (cache_directory() / "onnx"
            / f"{fingerprint}-opset{ONNX_OPSET}-torch{torch.__version__}-onnx{onnx.__version__}.onnx")
