"""Small builders shared by tests: tiny students and real photographs; the training package check."""
import importlib.util
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from vl2spike_ros.core.checkpoint import save_checkpoint
from vl2spike_ros.model import SpikformerStudent, StudentConfig

# Why tests that need the training package skip, where it is absent: a colcon install on a ROS 2
# machine carries the runtime only. None where it is installed (its imports then run as usual).
TRAINING_MISSING = ("needs the training package vl2spike_training, not installed here (pip install ./training; "
                    "a colcon install on a ROS 2 machine carries the runtime only)"
                    if importlib.util.find_spec("vl2spike_training") is None else None)


def require_training() -> None:
    """Skips the calling test where the training package is absent (modules that import it at the top
    are skipped by conftest.py)."""
    if TRAINING_MISSING:
        pytest.skip(TRAINING_MISSING)


TINY_CONFIG = dict(embed_dims=32, num_heads=2, depths=1, descriptor_dim=32, timesteps=2)


def tiny_student(seed: int = 0, **overrides) -> SpikformerStudent:
    torch.manual_seed(seed)
    return SpikformerStudent(StudentConfig(**{**TINY_CONFIG, **overrides})).eval()


def write_tiny_checkpoint(path: Path, seed: int = 0, **overrides) -> Path:
    save_checkpoint(path, tiny_student(seed, **overrides), {"kind": "test", "seed": seed})
    return path


def photo(name: str = "astronaut", size: tuple[int, int] | None = None) -> np.ndarray:
    """A real RGB photograph that scikit-image ships (no download)."""
    import skimage.data

    image = getattr(skimage.data, name)()
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    image = np.ascontiguousarray(image[:, :, :3]).astype(np.uint8)
    if size is not None:
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    return image


def jpeg_size_bomb(width: int = 20000, height: int = 20000) -> bytes:
    """A JPEG of a few hundred bytes whose frame header claims `width` x `height` pixels (decoded,
    gigabytes): an 8x8 JPEG with its start-of-frame size fields rewritten."""
    ok, encoded = cv2.imencode(".jpg", np.full((8, 8, 3), 128, np.uint8))
    assert ok
    data = bytearray(encoded.tobytes())
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    return bytes(data)
