"""Each inference-path step of the student, measured against the step before it in the same run
(interleaved calls, so a busy machine slows every variant alike), with outputs checked identical:

1. naive: the image repeated T times through every layer;
2. first stage once per frame (`SpikformerStudent.forward`) with torch's max-pooling and the
   surrogate spike function;
3. + max-pooling without indices;
4. + spikes through a plain Heaviside step (no surrogate) -- the shipped inference path;
5. the same student exported to ONNX Runtime (`--backend onnxruntime`).
Map search and node latency are in `vl2spike benchmark`.

    .venv/bin/python benchmarks/student_steps.py [--checkpoint CKPT] [--threads 1] [--repeats 40]
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time

import numpy as np
import torch
from torch import nn

from vl2spike_ros.core.encoder import DescriptorEncoder
from vl2spike_ros.model.student import MaxPoolWithoutIndices


def with_torch_pooling(model: nn.Module) -> nn.Module:
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, MaxPoolWithoutIndices):
                setattr(module, name, nn.MaxPool2d(child.kernel, child.stride, child.padding))
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=None, help="student checkpoint (default: the shipped model)")
    parser.add_argument("--threads", type=int, default=1, help="torch / onnxruntime threads")
    parser.add_argument("--repeats", type=int, default=40, help="interleaved rounds at batch 1 (batch 32: a quarter)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    encoder = DescriptorEncoder(args.checkpoint, backend="onnxruntime", threads=args.threads)
    shipped = encoder.model
    surrogate = copy.deepcopy(shipped)
    surrogate.spikes_without_surrogate = False
    torch_pooling = with_torch_pooling(copy.deepcopy(surrogate))
    config = encoder.config
    for batch in (1, 32):
        frames = np.random.default_rng(0).integers(0, 256, (batch, config.image_height, config.image_width,
                                                            config.in_channels), dtype=np.uint8)
        images = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255.0
        steps = {"1 naive T-fold": lambda: torch_pooling.forward_naive(images).descriptor,
                 "2 first stage once": lambda: torch_pooling(images).descriptor,
                 "3 + pooling without indices": lambda: surrogate(images).descriptor,
                 "4 + no surrogate (shipped)": lambda: shipped(images).descriptor,
                 "5 onnxruntime": lambda: torch.from_numpy(encoder.backend(frames))}
        samples: dict[str, list[float]] = {name: [] for name in steps}
        with torch.inference_mode():
            reference = steps["4 + no surrogate (shipped)"]()
            for name, step in steps.items():
                difference = float((step() - reference).abs().max())
                limit = 1e-5 if name.startswith("5") else 0.0
                if difference > limit:
                    raise SystemExit(f"{name}: descriptors differ from the shipped path by {difference}")
            for _ in range(args.repeats if batch == 1 else max(2, args.repeats // 4)):
                for name, step in steps.items():
                    started = time.perf_counter()
                    step()
                    samples[name].append((time.perf_counter() - started) * 1000.0)
        print(f"student {encoder.fingerprint[:12]}, batch {batch}, {args.threads} thread(s), median ms per batch:")
        previous = None
        for name, values in samples.items():
            median = statistics.median(values)
            change = f"  x{previous / median:.2f} vs the step before" if previous else ""
            print(f"  {name:30s} {median:9.2f}{change}")
            previous = median


if __name__ == "__main__":
    main()
