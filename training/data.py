"""Training data: image-folder classes and frame-aligned place traverses, held in memory as uint8.

Images are resized exactly as the runtime's DescriptorEncoder.preprocess does (RGB, INTER_AREA to
the student's size, /255 in float32), so what the student learns on is what it sees at run time.
The datasets here are small (Nordland64: 3,784 images of 32x64), so everything stays in memory
and an epoch costs no disk reads.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vl2spike_ros.sources.image_folders import IMAGE_SUFFIXES, ImageFolderSequence
from vl2spike_ros.core.encoder import resize_for_student
from vl2spike_ros.errors import InputError
from vl2spike_ros.core.images import read_image
from vl2spike_ros.model import StudentConfig


def to_student_tensor(images: list[np.ndarray], config: StudentConfig) -> torch.Tensor:
    """RGB uint8 images -> uint8 [N, C, H, W]; `as_float` turns a batch into the network input."""
    stacked = np.stack([resize_for_student(image, config) for image in images])
    return torch.from_numpy(stacked).permute(0, 3, 1, 2).contiguous()


def as_float(batch: torch.Tensor) -> torch.Tensor:
    return batch.float() / 255.0


@dataclass
class PlaceTraverses:
    """Two traverses of one route; row i of both is the same place."""

    names: list[str]              # file names shared by both traverses, in route order
    frames: np.ndarray            # original frame numbers, int64 [P]
    reference_raw: list[np.ndarray]  # RGB uint8 at native size (what a teacher sees)
    query_raw: list[np.ndarray]
    reference: torch.Tensor       # uint8 [P, C, H, W] at the student's size
    query: torch.Tensor

    def __len__(self) -> int:
        return len(self.names)


def load_place_traverses(reference_dir: str | Path, query_dir: str | Path, config: StudentConfig,
                         max_places: int = 0) -> PlaceTraverses:
    if not reference_dir or not query_dir:
        raise InputError("place data: set data.reference and data.query to two image folders "
                         "(e.g. nordland64/summer and nordland64/winter)")
    reference = ImageFolderSequence(reference_dir)
    query = ImageFolderSequence(query_dir)
    query_index = {frame.source: frame.index for frame in query.frames}
    shared = [frame for frame in reference.frames if frame.source in query_index]
    if len(shared) < 2:
        raise InputError(f"place data: {reference_dir} and {query_dir} share {len(shared)} file "
                         "names; expected frame-aligned traverses (same name = same place)")
    if max_places:
        shared = shared[:max_places]
    reference_raw = [reference.read(frame.index) for frame in shared]
    query_raw = [query.read(query_index[frame.source]) for frame in shared]
    return PlaceTraverses(
        names=[frame.source for frame in shared],
        frames=np.array([frame.frame for frame in shared], dtype=np.int64),
        reference_raw=reference_raw,
        query_raw=query_raw,
        reference=to_student_tensor(reference_raw, config),
        query=to_student_tensor(query_raw, config),
    )


@dataclass(frozen=True)
class PlaceSplit:
    train: np.ndarray      # place indices used for training
    heldout: np.ndarray    # place indices held out for evaluation
    description: str


def split_places(num_places: int, block_size: int, holdout_every: int, guard_places: int) -> PlaceSplit:
    """Blocks of `block_size` consecutive places; block b is held out when b % k == k - 1.

    Neighbouring places look alike, so `guard_places` training places on each side of a held-out
    block are dropped: no training image is within that many places of a held-out one.
    """
    if block_size <= 0 or holdout_every < 2 or guard_places < 0:
        raise InputError("place split: block_size must be positive, holdout_every >= 2, guard_places >= 0")
    block = np.arange(num_places) // block_size
    heldout_mask = block % holdout_every == holdout_every - 1
    if not heldout_mask.any():
        raise InputError(f"place split: {num_places} places give no held-out block of {block_size} "
                         f"(every {holdout_every}th); use fewer places per block")
    near_heldout = np.zeros(num_places, dtype=bool)
    for offset in range(-guard_places, guard_places + 1):
        shifted = np.roll(heldout_mask, offset)
        if offset > 0:
            shifted[:offset] = False
        elif offset < 0:
            shifted[offset:] = False
        near_heldout |= shifted
    train = np.flatnonzero(~near_heldout)
    heldout = np.flatnonzero(heldout_mask)
    if len(train) < 2:
        raise InputError(f"place split: only {len(train)} training places remain; use more places")
    blocks = sorted(set(block[heldout].tolist()))
    description = (f"places in blocks of {block_size} along the route; blocks {blocks} "
                   f"(every {holdout_every}th, {len(heldout)} places) held out; {guard_places} "
                   f"training places dropped beside each held-out block; {len(train)} training places")
    return PlaceSplit(train=train, heldout=heldout, description=description)


@dataclass
class ClassImages:
    raw: list[np.ndarray]         # RGB uint8 at native size
    images: torch.Tensor          # uint8 [N, C, H, W] at the student's size
    labels: torch.Tensor          # int64 [N]
    class_names: list[str]


def load_class_folders(root: str | Path, config: StudentConfig, max_per_class: int = 0,
                       class_names: list[str] | None = None) -> ClassImages:
    """<root>/<class>/*.jpg; `class_names` (from the training split) fixes the label order."""
    if not root:
        raise InputError("classification data: set data.train and data.val to image folders "
                         "laid out as <root>/<class>/<image>")
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"classification data {root}: not a directory (expected <root>/<class>/<image>)")
    found = sorted(entry.name for entry in root.iterdir() if entry.is_dir())
    names = class_names if class_names is not None else found
    missing = sorted(set(names) - set(found))
    if missing:
        raise InputError(f"classification data {root}: classes {missing} of the training set are missing")
    if len(names) < 2:
        raise InputError(f"classification data {root}: {len(names)} class folder(s); expected at least 2")
    raw, labels = [], []
    for label, name in enumerate(names):
        files = sorted(file for file in (root / name).iterdir()
                       if file.is_file() and file.suffix.lower() in IMAGE_SUFFIXES)
        if max_per_class:
            files = files[:max_per_class]
        if not files:
            raise InputError(f"classification data {root / name}: no images "
                             f"({', '.join(suffix[1:] for suffix in IMAGE_SUFFIXES)})")
        raw.extend(read_image(file) for file in files)
        labels.extend([label] * len(files))
    return ClassImages(raw=raw, images=to_student_tensor(raw, config),
                       labels=torch.tensor(labels, dtype=torch.int64), class_names=list(names))


def augment(batch: torch.Tensor, generator: torch.Generator, max_shift: int = 3) -> torch.Tensor:
    """float [B, C, H, W] in [0, 1]: random translation (reflect-padded) and contrast/brightness.

    A camera never stops at exactly the same spot twice, hence the shifts; light changes with
    weather and season, hence the photometric jitter (patch normalisation removes much of it, but
    not the clipping it causes).
    """
    size_b, _, height, width = batch.shape
    padded = torch.nn.functional.pad(batch, (max_shift,) * 4, mode="reflect")
    offsets = torch.randint(0, 2 * max_shift + 1, (size_b, 2), generator=generator)
    shifted = torch.stack([
        padded[i, :, dy:dy + height, dx:dx + width] for i, (dy, dx) in enumerate(offsets.tolist())
    ])
    contrast = 1.0 + (torch.rand(size_b, 1, 1, 1, generator=generator) - 0.5) * 0.6
    brightness = (torch.rand(size_b, 1, 1, 1, generator=generator) - 0.5) * 0.3
    mean = shifted.mean(dim=(1, 2, 3), keepdim=True)
    return ((shifted - mean) * contrast + mean + brightness).clamp(0.0, 1.0)
