"""Teacher features computed once and kept on disk, keyed so a stale cache is never used.

The key hashes the teacher's identity (weights, config, preprocessing) and the exact pixels of
every image in order. A cache file records both in its metadata; reading one whose record does
not match the teacher and images at hand is refused, never silently reused.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from vl2spike_ros.errors import InputError
from vl2spike_ros.core.atomic_files import atomic_path

from .teachers import Teacher

CACHE_FORMAT = "vl2spike-teacher-features"


def images_digest(images: Sequence[np.ndarray]) -> str:
    digest = hashlib.sha256()
    for image in images:
        array = np.ascontiguousarray(image)
        digest.update(f"{array.shape}|{array.dtype}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def cache_key(teacher: Teacher, image_digest: str) -> str:
    return hashlib.sha256(f"{teacher.identity}\n{image_digest}".encode()).hexdigest()


def _read_cache(path: Path, teacher: Teacher, image_digest: str) -> torch.Tensor:
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            features = handle.get_tensor("features")
    except Exception as error:  # safetensors raises several types for foreign or truncated files
        raise InputError(f"teacher feature cache {path}: unreadable ({type(error).__name__}); "
                         "delete it to recompute") from None
    if metadata.get("format") != CACHE_FORMAT:
        raise InputError(f"teacher feature cache {path}: not a {CACHE_FORMAT} file")
    if metadata.get("teacher_identity") != teacher.identity:
        raise InputError(f"teacher feature cache {path}: written by another teacher "
                         f"({metadata.get('teacher_identity', '?')[:60]}...), not by {teacher.description}; "
                         "point teacher.feature_cache elsewhere or delete the file")
    if metadata.get("images_digest") != image_digest:
        raise InputError(f"teacher feature cache {path}: computed for other images than these "
                         f"({metadata.get('count')} images recorded, {features.shape[0]} stored); "
                         "delete it to recompute")
    return features


def teacher_features(teacher: Teacher, images: Sequence[np.ndarray], cache: str | Path,
                     progress_label: str = "") -> torch.Tensor:
    """float [N, E] teacher embeddings of `images`, from the cache or computed and cached.

    `cache` is a directory (one file per teacher and image set, found by key) or one file
    (which must then belong to this teacher and these images).
    """
    cache = Path(cache)
    image_digest = images_digest(images)
    path = cache if cache.suffix == ".safetensors" else cache / f"{progress_label or 'features'}-{cache_key(teacher, image_digest)[:24]}.safetensors"
    if path.is_file():
        return _read_cache(path, teacher, image_digest)
    path.parent.mkdir(parents=True, exist_ok=True)
    features = teacher.embed_images(images).float().contiguous()
    if features.shape[0] != len(images):
        raise InputError(f"teacher {teacher.description}: returned {features.shape[0]} embeddings "
                         f"for {len(images)} images")
    metadata = {"format": CACHE_FORMAT, "teacher_identity": teacher.identity,
                "images_digest": image_digest, "count": str(len(images))}
    with atomic_path(path) as temporary:
        save_file({"features": features}, str(temporary), metadata=metadata)
    return features
