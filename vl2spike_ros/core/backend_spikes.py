"""The integer-spike student run on binary spike trains (core/spike_train.py), on the CPU: the
spike-driven path a chip that takes only binary spikes would run. Slower than the others; its
descriptors are the integer path's, and `last` keeps the spike levels and synaptic counts of the
last batch."""
from __future__ import annotations

import numpy as np
import torch

from vl2spike_ros.core.backends import BackendRequest
from vl2spike_ros.core.spike_train import SpikeTrainResult, SpikeTrainStudent
from vl2spike_ros.errors import InputError


class SpikeTrainBackend:
    name = "spikes"

    def __init__(self, request: BackendRequest) -> None:
        if request.model_file is not None:
            raise InputError(f"model file {request.model_file}: backend spikes runs the checkpoint itself; "
                             "an exported model needs backend 'onnxruntime'")
        if request.device.type != "cpu":
            raise InputError(f"device {request.device}: backend spikes runs on the CPU; use --device cpu")
        self.student = SpikeTrainStudent(request.student)
        self.last: SpikeTrainResult | None = None

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        images = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float() / 255.0
        self.last = self.student(images)
        return self.last.descriptors.float().numpy()


create = SpikeTrainBackend
