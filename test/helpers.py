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


def ivfpq_grows_from_empty(dim: int, fingerprint: str) -> bool:
    """Whether an empty IVF-PQ PlaceMap takes keyframes one at a time (planned: it collects them in a
    flat index until there are enough to train); tests expect mapping or a clear refusal accordingly."""
    from vl2spike_ros.core.place_map import PlaceMap
    from vl2spike_ros.errors import InputError

    vector = np.zeros((1, dim), dtype=np.float32)
    vector[0, 0] = 1.0
    try:
        PlaceMap(dim, fingerprint, "ivfpq").add(vector)
    except InputError:
        return False
    return True
