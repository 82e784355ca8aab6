"""Places outside the main route: extra training domains and cross-domain validation sets.

A student that learns one railway at 64x32 learns that railway. Two kinds of extra training data
teach it what changes between visits elsewhere:

- ``pairs``: two folders where the same frame number is the same place seen at another time
  (spedtest: webcams at another season, weather or time of day). Only places with frame number
  <= ``train_until`` train; the rest stay unseen, so they can serve as a validation set.
- ``segments``: one traverse cut into segments (ietower: one indoor walk-through, one clip a
  segment, `labels.csv`); two frames of one segment at most ``positive_frames`` apart are the same
  place (a second or two of walking), frames of other segments are other places.

Every training step adds ``data.extra_per_batch`` places of each domain to the route's batch, seen
twice (pairs: both times; segments: two nearby frames), under the same augmentation.

Validation sets (``data.validation_sets``) are pairs of folders evaluated with the runtime's
metrics at every validation: the figures that say whether the descriptor holds up off the route.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vl2spike_ros.errors import InputError
from vl2spike_ros.model import StudentConfig
from vl2spike_ros.sources.image_folders import ImageFolderSequence

from .data import to_student_tensor

# Place ids of extra domains lie far beyond any route's, so the route's near-place mask never
# joins a route place and an extra one; a domain's places are spaced out so none of its own are
# near each other either.
EXTRA_ID_BASE = 10**9
EXTRA_ID_SPACING = 4


def _entry(entry: object, where: str, required: tuple[str, ...], optional: dict) -> dict:
    if not isinstance(entry, dict):
        raise InputError(f"training config: {where} must be a mapping, got {entry!r}")
    unknown = sorted(set(entry) - set(required) - set(optional))
    missing = [key for key in required if not entry.get(key)]
    if unknown or missing:
        raise InputError(f"training config: {where}: unknown keys {unknown} / missing keys {missing}; "
                         f"expected {list(required)} and optionally {sorted(optional)}")
    return {**optional, **entry}


def _paired_frames(reference_dir: str, query_dir: str, where: str):
    reference, query = ImageFolderSequence(reference_dir), ImageFolderSequence(query_dir)
    query_index = {frame.frame: frame.index for frame in query.frames}
    shared = [frame for frame in reference.frames if frame.frame in query_index]
    if len(shared) < 2:
        raise InputError(f"{where}: {reference_dir} and {query_dir} share {len(shared)} frame numbers; "
                         "expected paired folders (same frame number = same place)")
    return reference, query, query_index, shared


@dataclass
class PairedDomain:
    name: str
    reference: torch.Tensor       # uint8 [P, C, H, W] at the student's size
    query: torch.Tensor

    def sample(self, count: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(rows of `query`, rows of `reference`): `count` places, each seen at both times."""
        chosen = torch.randperm(len(self.reference), generator=generator)[:count]
        return chosen, chosen

    def images_for_digest(self) -> torch.Tensor:
        return torch.cat([self.reference, self.query])


@dataclass
class SegmentedDomain:
    name: str
    images: torch.Tensor          # uint8 [N, C, H, W] at the student's size
    segments: list[np.ndarray]    # frame indices of each segment (of two frames or more), in order
    positive_frames: int

    @property
    def query(self) -> torch.Tensor:
        return self.images

    @property
    def reference(self) -> torch.Tensor:
        return self.images

    def sample(self, count: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """One place from each of `count` segments: a frame and another at most positive_frames away."""
        chosen = torch.randperm(len(self.segments), generator=generator)[:count].tolist()
        anchors, positives = [], []
        for segment in (self.segments[index] for index in chosen):
            anchor = int(torch.randint(0, len(segment), (1,), generator=generator))
            low, high = max(0, anchor - self.positive_frames), min(len(segment) - 1, anchor + self.positive_frames)
            others = [position for position in range(low, high + 1) if position != anchor]
            other = others[int(torch.randint(0, len(others), (1,), generator=generator))]
            anchors.append(int(segment[anchor]))
            positives.append(int(segment[other]))
        return torch.tensor(anchors), torch.tensor(positives)

    def images_for_digest(self) -> torch.Tensor:
        return self.images


def load_paired_domain(entry: dict, config: StudentConfig, where: str) -> PairedDomain:
    entry = _entry(entry, where, ("name", "reference", "query"), {"kind": "pairs", "train_until": -1})
    reference, query, query_index, shared = _paired_frames(entry["reference"], entry["query"], where)
    if entry["train_until"] >= 0:
        shared = [frame for frame in shared if frame.frame <= entry["train_until"]]
    if len(shared) < 2:
        raise InputError(f"{where}: fewer than 2 places with frame number <= {entry['train_until']}")
    return PairedDomain(
        name=entry["name"],
        reference=to_student_tensor([reference.read(frame.index) for frame in shared], config),
        query=to_student_tensor([query.read(query_index[frame.frame]) for frame in shared], config),
    )


def load_segmented_domain(entry: dict, config: StudentConfig, where: str) -> SegmentedDomain:
    entry = _entry(entry, where, ("name", "images", "labels"),
                   {"kind": "segments", "segment_column": "clip", "positive_frames": 2})
    folder = ImageFolderSequence(entry["images"])
    labels = Path(entry["labels"])
    if not labels.is_file():
        raise InputError(f"{where}: labels {labels}: no such file (expected a CSV with columns index and "
                         f"{entry['segment_column']})")
    with labels.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    column = entry["segment_column"]
    if not rows or "index" not in rows[0] or column not in rows[0]:
        raise InputError(f"{where}: labels {labels}: expected columns 'index' and {column!r}")
    segment_of = {int(row["index"]): row[column] for row in rows}
    by_segment: dict[str, list[int]] = {}
    for frame in folder.frames:
        if frame.frame in segment_of:
            by_segment.setdefault(segment_of[frame.frame], []).append(frame.index)
    segments = [np.array(indices) for indices in by_segment.values() if len(indices) >= 2]
    if len(segments) < 2:
        raise InputError(f"{where}: {len(segments)} segments of two frames or more; expected several")
    return SegmentedDomain(
        name=entry["name"],
        images=to_student_tensor([folder.read(index) for index in range(len(folder))], config),
        segments=segments,
        positive_frames=max(1, int(entry["positive_frames"])),
    )


def load_extra_domains(entries: list, config: StudentConfig) -> list[PairedDomain | SegmentedDomain]:
    domains = []
    for position, entry in enumerate(entries):
        where = f"data.extra_domains[{position}]"
        kind = entry.get("kind", "pairs") if isinstance(entry, dict) else None
        if kind == "pairs":
            domains.append(load_paired_domain(entry, config, where))
        elif kind == "segments":
            domains.append(load_segmented_domain(entry, config, where))
        else:
            raise InputError(f"training config: {where}.kind must be pairs or segments, got {kind!r}")
    return domains


@dataclass
class ValidationSet:
    name: str
    reference: torch.Tensor
    query: torch.Tensor
    frames: np.ndarray
    tolerance: int


def load_validation_sets(entries: list, config: StudentConfig) -> list[ValidationSet]:
    sets = []
    for position, entry in enumerate(entries):
        where = f"data.validation_sets[{position}]"
        entry = _entry(entry, where, ("name", "reference", "query"), {"tolerance": 0, "from_frame": -1})
        reference, query, query_index, shared = _paired_frames(entry["reference"], entry["query"], where)
        shared = [frame for frame in shared if frame.frame >= entry["from_frame"]]
        if len(shared) < 2:
            raise InputError(f"{where}: fewer than 2 places with frame number >= {entry['from_frame']}")
        sets.append(ValidationSet(
            name=entry["name"],
            reference=to_student_tensor([reference.read(frame.index) for frame in shared], config),
            query=to_student_tensor([query.read(query_index[frame.frame]) for frame in shared], config),
            frames=np.array([frame.frame for frame in shared], dtype=np.int64),
            tolerance=int(entry["tolerance"]),
        ))
    return sets


def extra_place_ids(domain_position: int, count: int) -> torch.Tensor:
    start = EXTRA_ID_BASE * (domain_position + 1)
    return start + EXTRA_ID_SPACING * torch.arange(count, dtype=torch.int64)
