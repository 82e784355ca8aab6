"""The student in PyTorch, on any torch device."""
from __future__ import annotations

import numpy as np
import torch

from vl2spike_ros.core.backends import BackendRequest
from vl2spike_ros.errors import InputError


class TorchBackend:
    name = "torch"

    def __init__(self, request: BackendRequest) -> None:
        if request.model_file is not None:
            raise InputError(f"model file {request.model_file}: backend torch runs the checkpoint itself; "
                             "an exported model needs backend 'onnxruntime'")
        self.student = request.student.to(request.device).eval()
        self.device = request.device

    @torch.inference_mode()
    def __call__(self, frames: np.ndarray) -> np.ndarray:
        batch = torch.from_numpy(frames).to(self.device).permute(0, 3, 1, 2).float() / 255.0
        return self.student(batch).descriptor.float().cpu().numpy()


create = TorchBackend
