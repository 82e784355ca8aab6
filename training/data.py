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


def student_size_images(images: torch.Tensor) -> list[np.ndarray]:
    """uint8 [N, C, H, W] -> RGB uint8 [H, W, C] arrays (for teachers that take images)."""
    return list(images.permute(0, 2, 3, 1).numpy())


def as_float(batch: torch.Tensor) -> torch.Tensor:
    return batch.float() / 255.0


@dataclass
class PlaceTraverses:
    """Two traverses of one route; row i of both is the same place (the same frame number)."""

    names: list[str]              # reference file names, in route order
    frames: np.ndarray            # frame numbers both traverses have, int64 [P]
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
    # Paired by frame number, as evaluation's ground truth pairs them, in the folders' route order.
    reference = ImageFolderSequence(reference_dir)
    query = ImageFolderSequence(query_dir)
    query_index = {frame.frame: frame.index for frame in query.frames}
    shared = [frame for frame in reference.frames if frame.frame in query_index]
    if len(shared) < 2:
        raise InputError(f"place data: {reference_dir} and {query_dir} share {len(shared)} frame "
                         "numbers; expected frame-aligned traverses (same frame number = same place)")
    if max_places:
        shared = shared[:max_places]
    reference_raw = [reference.read(frame.index) for frame in shared]
    query_raw = [query.read(query_index[frame.frame]) for frame in shared]
    return PlaceTraverses(
        names=[frame.source for frame in shared],
        frames=np.array([frame.frame for frame in shared], dtype=np.int64),
        reference_raw=reference_raw,
        query_raw=query_raw,
        reference=to_student_tensor(reference_raw, config),
        query=to_student_tensor(query_raw, config),
    )


SPLITS = ("blocks", "route_tail")


@dataclass(frozen=True)
class PlaceSplit:
    name: str              # "blocks" or "route_tail"
    train: np.ndarray      # place indices used for training
    heldout: np.ndarray    # validation: place indices for every choice (early stopping, configs, levers)
    test: np.ndarray       # test stretch: never used for any choice (empty for "blocks")
    description: str

    def named_sets(self) -> dict[str, np.ndarray]:
        sets = {"validation": self.heldout, "test": self.test}
        return {name: places for name, places in sets.items() if len(places)}


def _block_split(candidates: np.ndarray, block_size: int, holdout_every: int,
                 guard_places: int) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Blocks of `block_size` consecutive candidates; block b is held out when b % k == k - 1.

    Neighbouring places look alike, so `guard_places` training places on each side of a held-out
    block are dropped: no training image is within that many places of a held-out one.
    """
    if block_size <= 0 or holdout_every < 2 or guard_places < 0:
        raise InputError("place split: block_size must be positive, holdout_every >= 2, guard_places >= 0")
    count = len(candidates)
    block = np.arange(count) // block_size
    heldout_mask = block % holdout_every == holdout_every - 1
    if not heldout_mask.any():
        raise InputError(f"place split: {count} places give no held-out block of {block_size} "
                         f"(every {holdout_every}th); use fewer places per block")
    near_heldout = np.zeros(count, dtype=bool)
    for offset in range(-guard_places, guard_places + 1):
        shifted = np.roll(heldout_mask, offset)
        if offset > 0:
            shifted[:offset] = False
        elif offset < 0:
            shifted[offset:] = False
        near_heldout |= shifted
    train = candidates[~near_heldout]
    if len(train) < 2:
        raise InputError(f"place split: only {len(train)} training places remain; use more places")
    return train, candidates[heldout_mask], sorted(set(block[heldout_mask].tolist()))


def split_places(num_places: int, block_size: int, holdout_every: int, guard_places: int) -> PlaceSplit:
    """The "blocks" split: validation blocks interleaved with training blocks along the whole route
    (no test stretch). Held-out blocks sit between training blocks of the same terrain, so their
    figures measure interpolation, not generalisation to new track."""
    train, heldout, blocks = _block_split(np.arange(num_places), block_size, holdout_every, guard_places)
    description = (f"blocks: places in blocks of {block_size} along the route; blocks {blocks} "
                   f"(every {holdout_every}th, {len(heldout)} places) held out for validation; {guard_places} "
                   f"training places dropped beside each held-out block; {len(train)} training places; "
                   "no test stretch")
    return PlaceSplit("blocks", train, heldout, np.array([], dtype=np.int64), description)


def split_route_tail(frames: np.ndarray, block_size: int, holdout_every: int, guard_places: int,
                     validation_until_frame: int, test_after_frame: int, test_in_training: bool = False) -> PlaceSplit:
    """The "route_tail" split, by position along the route.

    test stretch = every place with frame number > `test_after_frame`: new track, never used for any
    choice; validation = interleaved blocks of the places with frame <= `validation_until_frame`
    (with guard places); training = the rest of those. Places in between are a guard and unused.
    `test_in_training` (only for a final model) adds the test stretch to training, which then
    leaves no test figure that means anything; the description says so.
    """
    if validation_until_frame >= test_after_frame:
        raise InputError(f"place split route_tail: data.validation_until_frame ({validation_until_frame}) must be "
                         f"below data.test_after_frame ({test_after_frame})")
    development = np.flatnonzero(frames <= validation_until_frame)
    test = np.flatnonzero(frames > test_after_frame)
    if len(development) < 2 or len(test) == 0:
        raise InputError(f"place split route_tail: {len(development)} places with frame <= {validation_until_frame} "
                         f"and {len(test)} with frame > {test_after_frame}; expected both parts non-empty")
    train, heldout, blocks = _block_split(development, block_size, holdout_every, guard_places)
    description = (f"route_tail: test stretch = {len(test)} places with frame > {test_after_frame}; validation = "
                   f"blocks {blocks} of {block_size} places (every {holdout_every}th, {len(heldout)} places) among the "
                   f"places with frame <= {validation_until_frame}, {guard_places} guard places dropped beside each; "
                   f"{len(train)} training places")
    if test_in_training:
        train = np.concatenate([train, test])
        description += (f"; the test stretch JOINS TRAINING ({len(train)} training places): its figures are "
                        "not held out")
    return PlaceSplit("route_tail", train, heldout, test, description)


def make_split(data: dict, frames: np.ndarray) -> PlaceSplit:
    """The split named by data.split, from the data section of a training config."""
    if data["split"] == "blocks":
        return split_places(len(frames), data["block_size"], data["holdout_every"], data["guard_places"])
    return split_route_tail(frames, data["block_size"], data["holdout_every"], data["guard_places"],
                            data["validation_until_frame"], data["test_after_frame"], data["test_in_training"])


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
