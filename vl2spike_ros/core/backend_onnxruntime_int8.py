"""The student in ONNX Runtime with its spiking blocks in 8-bit integer arithmetic (`onnx_quantize`),
on the CPU. Without a model file, the float export is quantised on first use into the user cache.
Descriptors stay those of the checkpoint within a cosine of 0.995 (test/test_int8_backend.py), so
maps built with the float backends serve it too."""
from __future__ import annotations

from vl2spike_ros.core.backend_onnxruntime import OnnxRuntimeBackend, exported_model
from vl2spike_ros.core.backends import BackendRequest, BackendUnavailable
from vl2spike_ros.core.onnx_quantize import cached_int8_path, calibration_frames, quantise_onnx


class OnnxRuntimeInt8Backend(OnnxRuntimeBackend):
    name = "onnxruntime-int8"


def create(request: BackendRequest) -> OnnxRuntimeInt8Backend:
    if request.device.type != "cpu":
        raise BackendUnavailable(f"device {request.device}: the integer kernels are ONNX Runtime's CPU ones")
    path = request.model_file
    if path is None:
        float_path = exported_model(request)
        path = cached_int8_path(float_path)
        if not path.is_file():
            config = request.info.config
            quantise_onnx(float_path, path, calibration_frames(config.image_height, config.image_width,
                                                               config.in_channels))
    return OnnxRuntimeInt8Backend(path, request.info.fingerprint, request.device, request.threads)
