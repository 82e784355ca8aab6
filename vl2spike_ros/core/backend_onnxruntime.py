"""The student exported to ONNX in an onnxruntime session (CPU, or CUDA where its provider exists).
Without a model file, the model is exported on first use into the user cache (`cached_onnx_path`)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from vl2spike_ros.core.backends import BackendRequest, BackendUnavailable
from vl2spike_ros.core.onnx_export import ONNX_INPUT, cached_onnx_path, export_onnx, read_onnx_metadata
from vl2spike_ros.errors import InputError


class OnnxRuntimeBackend:
    name = "onnxruntime"

    def __init__(self, path: str | Path, fingerprint: str, device: torch.device, threads: int | None = None) -> None:
        import onnxruntime

        metadata = read_onnx_metadata(path)
        if metadata["fingerprint"] != fingerprint:
            raise InputError(f"ONNX model {path} was exported from model {metadata['fingerprint'][:12]} "
                             f"but the checkpoint is {fingerprint[:12]}; export it again")
        providers = ["CPUExecutionProvider"]
        if device.type == "cuda":
            if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
                raise BackendUnavailable(f"device {device}: this onnxruntime has no CUDA provider; "
                                         "install onnxruntime-gpu or use --backend torch")
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": device.index or 0}))
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        self.path = Path(path)
        self.session = onnxruntime.InferenceSession(str(path), options, providers=providers)

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        return self.session.run(None, {ONNX_INPUT: np.ascontiguousarray(frames)})[0]


def exported_model(request: BackendRequest) -> Path:
    """The model file to run: the request's, or the student exported into the user cache on first use."""
    path = request.model_file
    if path is None:
        path = cached_onnx_path(request.info.fingerprint)
        if not path.is_file():
            try:
                # From the student on the CPU, whatever the device: the example input is on the CPU too.
                export_onnx(request.student, request.info, path)
            except (ImportError, InputError):
                raise
            except Exception as error:  # the exporter raises many types; any of them means "cannot export"
                first_line = (str(error).strip().splitlines() or [""])[0][:200]
                raise BackendUnavailable(f"export to ONNX failed: {type(error).__name__} {first_line}") from None
    return path


def create(request: BackendRequest) -> OnnxRuntimeBackend:
    return OnnxRuntimeBackend(exported_model(request), request.info.fingerprint, request.device, request.threads)
