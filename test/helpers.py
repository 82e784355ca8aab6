"""Small builders shared by tests: tiny students and real photographs."""
from pathlib import Path

import cv2
import numpy as np
import torch

from vl2spike_ros.core.checkpoint import save_checkpoint
from vl2spike_ros.model import SpikformerStudent, StudentConfig

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
