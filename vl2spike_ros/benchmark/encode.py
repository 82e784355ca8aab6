"""Encode speed of the student (per backend) and of the reference: a CLIP ViT-B/32 image tower of
the standard shape (768 wide, 12 layers, 12 heads, 224x224 input, random weights: the time does
not depend on the values); energy per frame of both (design §5)."""
from __future__ import annotations

import time
from typing import Callable

import numpy as np
import torch

from vl2spike_ros.benchmark.measure import percentile_summary, sample_ms
from vl2spike_ros.core.encoder import DescriptorEncoder
from vl2spike_ros.core.energy import count_macs, estimate_energy
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


def student_speed(encoder: DescriptorEncoder, frames: list[np.ndarray], repeats: int,
                  batch_repeats: int) -> dict:
    """Batch 1: one uint8 frame at the input size in, one descriptor out; and frames/s at batch 32."""
    single = sample_ms(lambda: encoder.encode_one(frames[0]), repeats, warmup=5)
    batch = [frames[i % len(frames)] for i in range(32)]
    return {"batch1_ms": percentile_summary(single),
            "fps_batch32": round(batch_fps(lambda: encoder.encode(batch), 32, batch_repeats), 1)}


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


def vit_speed(device: torch.device, repeats: int, batch_repeats: int) -> tuple[dict, float]:
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

    result = {"batch1_ms": percentile_summary(sample_ms(run(one), repeats, warmup=2)),
              "fps_batch32": round(batch_fps(run(thirty_two), 32, batch_repeats), 2)}
    return result, vit_macs(model, config, device)


def student_energy(encoder: DescriptorEncoder, frames: list[np.ndarray]) -> dict:
    report = estimate_energy(encoder.model, encoder.preprocess(frames).to(encoder.device))
    return {"snn_energy_pj": report.snn_energy_pj, "ann_energy_pj": report.ann_energy_pj,
            "ratio_vs_ann": report.ratio, "frames": report.num_frames}

