"""Encode speed of the student (per backend) and of the reference: a CLIP ViT-B/32 image tower of
the standard shape (768 wide, 12 layers, 12 heads, 224x224 input, random weights: the time does
not depend on the values), in PyTorch and exported to ONNX Runtime as the student is, so each
ratio compares two models in one runtime; energy per frame of both (design §5)."""
from __future__ import annotations

import contextlib
import io
import logging
import time
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from vl2spike_ros.benchmark.measure import sample_ms
from vl2spike_ros.core.encoder import DescriptorEncoder
from vl2spike_ros.core.energy import count_macs, estimate_energy
from vl2spike_ros.core.onnx_export import ONNX_OPSET
from vl2spike_ros.errors import InputError

VIT_IMAGE_SIZE = 224


def sample_frames(encoder: DescriptorEncoder, count: int) -> list[np.ndarray]:
    """Real frames at the student's input size (the demo route's photographs, cycled), so spike
    rates and therefore energy are those of real images."""
    from vl2spike_ros.demo.route import build_demo_route

    reference = build_demo_route()[0]
    return [frame for frame in encoder.frames([reference[i % len(reference)] for i in range(count)])]


def batch_fps(function: Callable[[], object], batch: int, repeats: int) -> float:
    """Frames per second of `repeats` calls (the batch-1 timings before it warmed the model up)."""
    started = time.perf_counter()
    for _ in range(repeats):
        function()
    return batch * repeats / (time.perf_counter() - started)


def interleaved_ms(calls: dict[str, Callable[[], object]], per_round: dict[str, int], rounds: int,
                   warmup: int = 3) -> dict[str, list[list[float]]]:
    """Wall times in ms, in rounds: each round times every call `per_round[name]` times, one after
    the other, so on a shared machine both sides of a ratio see the same load (a ratio of two
    separately timed phases moved from 19 to 30 between runs here)."""
    for call in calls.values():
        for _ in range(warmup):
            call()
    timed: dict[str, list[list[float]]] = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            timed[name].append(sample_ms(call, per_round[name], warmup=0))
    return timed


def median_round_ratio(slow: list[list[float]], fast: list[list[float]]) -> float:
    """The median over rounds of slow's median / fast's median in the same round."""
    return float(np.median([np.median(a) / np.median(b) for a, b in zip(slow, fast)]))


def student_batch32_fps(encoder: DescriptorEncoder, frames: list[np.ndarray], batch_repeats: int) -> float:
    batch = [frames[i % len(frames)] for i in range(32)]
    return round(batch_fps(lambda: encoder.encode(batch), 32, batch_repeats), 1)


def vit_b32(device: torch.device):
    try:
        from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection
    except ImportError:
        raise InputError("the ViT-B/32 reference needs transformers (requirements-dev.txt)") from None

    torch.manual_seed(0)
    config = CLIPVisionConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                              num_attention_heads=12, image_size=VIT_IMAGE_SIZE, patch_size=32,
                              projection_dim=512)
    return CLIPVisionModelWithProjection(config).eval().to(device), config


def vit_macs(model, config, device: torch.device) -> float:
    """MACs per frame: Conv/Linear layers by hook, plus the two attention products (Q Kᵀ and
    A V: tokens² x width each, per layer), which are not modules."""
    tokens = (config.image_size // config.patch_size) ** 2 + 1
    layer_macs = count_macs(model, torch.zeros(1, 3, config.image_size, config.image_size, device=device))
    return layer_macs + config.num_hidden_layers * 2 * tokens * tokens * config.hidden_size


class ImageTower(torch.nn.Module):
    """pixels [B, 3, 224, 224] -> image embeddings: the ViT as one graph to export."""

    def __init__(self, model) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixels).image_embeds


def vit_onnxruntime(model, work: Path, threads: int) -> tuple[Callable[[], object], float]:
    """The ViT-B/32 `model` exported to ONNX as the student is (torch's dynamo exporter, opset
    ONNX_OPSET) in an ONNX Runtime CPU session with `threads` threads: a batch-1 call to time, and
    the largest difference of its embeddings from PyTorch's on one frame (it is the same network)."""
    import onnxruntime

    tower = ImageTower(model).eval().cpu()
    pixels = torch.rand(1, 3, VIT_IMAGE_SIZE, VIT_IMAGE_SIZE)
    path = work / "vit_b32.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with torch.inference_mode(False), contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's notes on transformers' internals
        torch.onnx.export(tower, (pixels,), dynamo=True, opset_version=ONNX_OPSET, input_names=["pixels"],
                          output_names=["embeds"], verbose=False).save(str(path))
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    try:
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    finally:
        path.unlink()  # 350 MB of weights, in memory now
    feed = {"pixels": pixels.numpy()}
    with torch.inference_mode():
        difference = float(np.abs(session.run(None, feed)[0] - tower(pixels).numpy()).max())
    return (lambda: session.run(None, feed)), difference


def vit_runners(device: torch.device) -> tuple[Callable[[], object], Callable[[], float], float, torch.nn.Module]:
    """The ViT-B/32 at batch 1 (a call to time), its batch-32 frames/s (given repeats), its MACs per
    frame, and the model."""
    model, config = vit_b32(device)
    one = torch.rand(1, 3, VIT_IMAGE_SIZE, VIT_IMAGE_SIZE, device=device)
    thirty_two = torch.rand(32, 3, VIT_IMAGE_SIZE, VIT_IMAGE_SIZE, device=device)

    def run(images: torch.Tensor) -> Callable[[], object]:
        def call() -> object:
            with torch.inference_mode():
                out = model(pixel_values=images).image_embeds
            if device.type == "cuda":
                torch.cuda.synchronize()
            return out
        return call

    def fps_batch32(batch_repeats: int) -> float:
        return round(batch_fps(run(thirty_two), 32, batch_repeats), 2)

    return run(one), fps_batch32, vit_macs(model, config, device), model


def student_energy(encoder: DescriptorEncoder, frames: list[np.ndarray]) -> dict:
    report = estimate_energy(encoder.model, encoder.preprocess(frames).to(encoder.model_device))
    return {"snn_energy_pj": report.snn_energy_pj, "ann_energy_pj": report.ann_energy_pj,
            "ratio_vs_ann": report.ratio, "snn_int8_energy_pj": report.snn_int8_energy_pj,
            "ann_int8_energy_pj": report.ann_int8_energy_pj, "ratio_int8_vs_ann": report.ratio_int8,
            "frames": report.num_frames}

