"""The reference traverse in memory at the student's input size, split into frames to adapt on and
held-out frames for the self-check, and the positive pairs drawn from it.

Route (`neighbours`): frames are in driving order, so a frame and one a step or two away show the
same place from a slightly other spot; every HOLDOUT_EVERY-th stretch of STRETCH frames is held out,
with GUARD frames on each side left out of both sets, so no training pair reaches into it. Places
that are not a route (`views`): every HOLDOUT_EVERY-th image is held out, and a frame's positive is
another view of itself.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from vl2spike_ros.core.encoder import resize_for_student
from vl2spike_ros.core.images import to_rgb
from vl2spike_ros.errors import InputError
from vl2spike_ros.model import StudentConfig
from vl2spike_ros.sources.frames import ImageSequence

POSITIVES = ("neighbours", "views")
STRETCH = 10
HOLDOUT_EVERY = 5
GUARD = 2
NEIGHBOUR_REACH = 2          # a route frame's positive lies up to this many frames away
MIN_HELD_OUT = 10
MIN_TRAINING = 40


@dataclass
class Traverse:
    images: torch.Tensor      # uint8 [N, C, H, W], what the encoder feeds the student
    training: np.ndarray      # positions of the frames adapted on
    held_out: np.ndarray      # positions of the self-check frames
    positives: str            # "neighbours" or "views"

    def __len__(self) -> int:
        return len(self.images)

    def batch(self, positions: np.ndarray) -> torch.Tensor:
        return self.images[torch.as_tensor(positions)].float() / 255.0

    def sample_pairs(self, count: int, generator: torch.Generator) -> tuple[np.ndarray, np.ndarray]:
        """`count` anchors (distinct training frames) and a positive for each."""
        order = torch.randperm(len(self.training), generator=generator)[:count].numpy()
        anchors = self.training[order]
        if self.positives == "views":
            return anchors, anchors
        offsets = torch.randint(-NEIGHBOUR_REACH, NEIGHBOUR_REACH + 1, (len(anchors),), generator=generator).numpy()
        candidates = anchors + offsets
        # A neighbour outside the training frames (held out, guard, past the end) falls back to the anchor.
        usable = np.isin(candidates, self.training)
        return anchors, np.where(usable, candidates, anchors)

    def related(self, first: np.ndarray, second: np.ndarray) -> np.ndarray:
        """bool [len(first), len(second)]: the pair shows the same place (never a negative)."""
        reach = 0 if self.positives == "views" else 2 * NEIGHBOUR_REACH
        return np.abs(first[:, None] - second[None, :]) <= reach


def split_positions(count: int, positives: str) -> tuple[np.ndarray, np.ndarray]:
    positions = np.arange(count)
    if positives == "views":
        held = positions % HOLDOUT_EVERY == HOLDOUT_EVERY - 1
        return positions[~held], positions[held]
    stretch = positions // STRETCH
    held = stretch % HOLDOUT_EVERY == HOLDOUT_EVERY - 1
    near_held = np.zeros(count, dtype=bool)
    for offset in range(-GUARD, GUARD + 1):
        guarded = positions[held] + offset
        near_held[guarded[(guarded >= 0) & (guarded < count)]] = True
    return positions[~held & ~near_held], positions[held]


def read_traverse(sequence: ImageSequence, config: StudentConfig, positives: str,
                  label: str, progress: bool = True) -> Traverse:
    """Every frame of `sequence`, fitted to the input as the encoder fits it; refuses a traverse too
    short to hold out enough frames for the self-check."""
    if positives not in POSITIVES:
        raise InputError(f"positives {positives!r}: expected one of {POSITIVES}")
    count = len(sequence)
    training, held_out = split_positions(count, positives)
    if len(held_out) < MIN_HELD_OUT or len(training) < MIN_TRAINING:
        raise InputError(f"images {label}: {count} frames; adaptation needs at least {MIN_TRAINING} to adapt on "
                         f"and {MIN_HELD_OUT} held out for its self-check (about "
                         f"{minimum_frames(positives)} frames)")
    images = np.empty((count, config.in_channels, config.image_height, config.image_width), dtype=np.uint8)
    for frame, image in tqdm(sequence, total=count, unit="img", desc="reading reference", disable=not progress):
        images[frame.index] = resize_for_student(to_rgb(image), config).transpose(2, 0, 1)
    return Traverse(torch.from_numpy(images), training, held_out, positives)


def minimum_frames(positives: str) -> int:
    count = 1
    while True:
        training, held_out = split_positions(count, positives)
        if len(held_out) >= MIN_HELD_OUT and len(training) >= MIN_TRAINING:
            return count
        count += 1
