"""The exported student with its spiking blocks in 8-bit integer arithmetic (ONNX Runtime's QDQ
quantisation: int8 weights per output channel, uint8 activations, calibrated min-max ranges).

What is quantised: the transformer blocks' convolutions (attention q/k/v and projection, MLP), whose
inputs are spikes. What stays float: the patch embedding (the image's first convolutions and the
positional encoding, which see pixels and whose errors every later layer inherits), the attention
products and the final projection to the descriptor. Quantising the patch embedding or the
attention products too moved the shipped student's Recall@1 on the test stretch by more than half a
point (test/test_int8_backend.py).

Calibration frames are windows over scikit-image's shipped photographs (no download, no dataset
needed on the robot); the agreement checks run on Nordland, which calibration never sees.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from vl2spike_ros.core.atomic_files import atomic_path
from vl2spike_ros.core.onnx_export import ONNX_INPUT, cache_directory
from vl2spike_ros.core.preprocess import fit_to_input

# Weights whose names start with this belong to the patch embedding, which stays float.
PATCH_EMBEDDING = "student.backbone.patch_embed."
CALIBRATION_WINDOWS = 24  # per photograph
CALIBRATION_FORMAT = "int8-qdq-v2"  # changes when what is quantised, or how, changes


def calibration_frames(height: int, width: int, channels: int) -> np.ndarray:
    """uint8 [N, height, width, channels]: windows sliding across scikit-image's photographs, each
    fitted to the input as the encoder fits a camera frame."""
    import cv2
    import skimage.data

    photos = [skimage.data.astronaut(), skimage.data.coffee(), skimage.data.chelsea(), skimage.data.rocket(),
              skimage.data.stereo_motorcycle()[0], skimage.data.immunohistochemistry()]
    frames = []
    for photo in photos:
        window = min(photo.shape[0], photo.shape[1] * height // width)
        window_width = window * width // height
        for left in np.linspace(0, photo.shape[1] - window_width, CALIBRATION_WINDOWS).astype(int):
            frame = fit_to_input(np.ascontiguousarray(photo[:window, left:left + window_width]), height, width)
            frames.append(cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)[:, :, None] if channels == 1 else frame)
    return np.stack(frames)


def quantised_nodes(model) -> tuple[list[str], list[str]]:
    """(nodes to quantise, nodes kept float) among the graph's Conv and MatMul nodes."""
    quantise, keep = [], []
    for node in model.graph.node:
        if node.op_type == "Conv":
            (keep if node.input[1].startswith(PATCH_EMBEDDING) else quantise).append(node.name)
        elif node.op_type == "MatMul":  # the attention products and the projection
            keep.append(node.name)
    return quantise, keep


def quantise_onnx(float_path: str | Path, path: str | Path, frames: np.ndarray) -> Path:
    """Writes the integer model of the float export at `float_path` to `path` (atomically), calibrated
    on `frames` (uint8 [N, H, W, C] at the input size); the float model's metadata is kept."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Frames(CalibrationDataReader):
        def __init__(self) -> None:
            self._frames = iter(frames[i:i + 1] for i in range(len(frames)))

        def get_next(self):
            batch = next(self._frames, None)
            return None if batch is None else {ONNX_INPUT: batch}

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as work:
        prepared = Path(work) / "prepared.onnx"
        # Shapes and constant folding first, so every Conv and MatMul sees known shapes; the dynamic
        # batch dimension defeats the symbolic pass, which the ONNX shape inference replaces.
        quant_pre_process(str(float_path), str(prepared), skip_symbolic_shape=True)
        quantise, keep = quantised_nodes(onnx.load(str(prepared)))
        quantised = Path(work) / "quantised.onnx"
        quantize_static(str(prepared), str(quantised), Frames(), quant_format=QuantFormat.QDQ, per_channel=True,
                        weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8,
                        op_types_to_quantize=["Conv"], nodes_to_quantize=quantise, nodes_to_exclude=keep)
        model = onnx.load(str(quantised))
        source = onnx.load_model(str(float_path), load_external_data=False)
        del model.metadata_props[:]
        model.metadata_props.extend(source.metadata_props)
        entry = model.metadata_props.add()
        entry.key, entry.value = "quantisation", CALIBRATION_FORMAT
        with atomic_path(path) as temporary:
            onnx.save_model(model, str(temporary))
    return path


def cached_int8_path(float_path: Path) -> Path:
    """The integer model of a cached float export, keyed by it and by the quantisation's version."""
    import onnxruntime

    return (cache_directory() / "onnx-int8"
            / f"{float_path.stem}-{CALIBRATION_FORMAT}-ort{onnxruntime.__version__}.onnx")
