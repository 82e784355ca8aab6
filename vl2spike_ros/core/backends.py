"""Where the student runs: PyTorch (any torch device) or ONNX Runtime (CPU, or CUDA where its
provider exists). Both take uint8 [B, H, W, C] RGB frames at the student's input size and return
float32 [B, D] unit-length descriptors, so the encoder's resizing is shared and a map built
with one backend is valid for the other (same fingerprint)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from vl2spike_ros.core.checkpoint import CheckpointInfo
from vl2spike_ros.core.onnx_export import (ONNX_INPUT, cached_onnx_path, export_onnx,
                                           read_onnx_metadata)
from vl2spike_ros.errors import InputError
from vl2spike_ros.model import SpikformerStudent

BACKENDS = ("torch", "onnxruntime")


def torch_device(device: str) -> torch.device:
    """A torch device, refused with one line where it does not exist on this machine."""
    try:
        parsed = torch.device(device)
    except RuntimeError as error:
        raise InputError(f"device {device!r}: {error}") from None
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {device!r}: CUDA is not available on this machine; use 'cpu'")
    if parsed.type not in ("cpu", "cuda"):
        raise InputError(f"device {device!r}: expected 'cpu' or 'cuda[:N]'")
    return parsed


class TorchBackend:
    name = "torch"

    def __init__(self, student: SpikformerStudent, device: torch.device) -> None:
        self.student = student.to(device).eval()
        self.device = device

    @torch.inference_mode()
    def __call__(self, frames: np.ndarray) -> np.ndarray:
        batch = torch.from_numpy(frames).to(self.device).permute(0, 3, 1, 2).float() / 255.0
        return self.student(batch).descriptor.float().cpu().numpy()


class OnnxRuntimeBackend:
    """An exported student in an onnxruntime session; `threads` = None: torch's thread count."""

    name = "onnxruntime"

    def __init__(self, path: str | Path, fingerprint: str, device: torch.device,
                 threads: int | None = None) -> None:
        import onnxruntime

        metadata = read_onnx_metadata(path)
        if metadata["fingerprint"] != fingerprint:
            raise InputError(f"ONNX model {path} was exported from model {metadata['fingerprint'][:12]} "
                             f"but the checkpoint is {fingerprint[:12]}; export it again")
        providers = ["CPUExecutionProvider"]
        if device.type == "cuda":
            if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
                raise InputError(f"device {device}: this onnxruntime has no CUDA provider; "
                                 "install onnxruntime-gpu or use --backend torch")
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": device.index or 0}))
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        self.path = Path(path)
        self.session = onnxruntime.InferenceSession(str(path), options, providers=providers)

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        return self.session.run(None, {ONNX_INPUT: np.ascontiguousarray(frames)})[0]


def make_backend(name: str, student: SpikformerStudent, info: CheckpointInfo, device: torch.device,
                 onnx_model: str | Path | None = None, threads: int | None = None):
    """`onnx_model` None with onnxruntime: the model exported on first use into the user cache."""
    if name == "torch":
        if onnx_model is not None:
            raise InputError("an ONNX model needs backend 'onnxruntime'")
        return TorchBackend(student, device)
    if name != "onnxruntime":
        raise InputError(f"backend must be one of {BACKENDS}, got {name!r}")
    if onnx_model is None:
        onnx_model = cached_onnx_path(info.fingerprint)
        if not onnx_model.is_file():
            export_onnx(student, info, onnx_model)
    return OnnxRuntimeBackend(onnx_model, info.fingerprint, device, threads)
