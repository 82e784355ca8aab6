"""Whether the integer backend gives the float path's answers, on a Nordland-layout folder (summer
map, winter queries): the cosine between the two backends' descriptors of every frame, and each
backend's Recall@1 (single frame, correct within one place) on the validation blocks and on the
test stretch (the split of docs/results.md)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from vl2spike_ros.benchmark.route_shape import SEASONS
from vl2spike_ros.errors import InputError
from vl2spike_ros.sources.image_folders import ImageFolderSequence

# docs/results.md: validation is places 300-399, 700-799 and 1100-1199 along the route; the test
# stretch every place with frame number above 18,200. A match is correct within one place (10 frames).
VALIDATION_BLOCKS = ((300, 400), (700, 800), (1100, 1200))
TEST_STRETCH_AFTER_FRAME = 18_200
TOLERANCE_FRAMES = 10


def split_places(frames: np.ndarray) -> dict[str, np.ndarray]:
    """Positions along the route of the validation blocks and of the test stretch."""
    validation = np.concatenate([np.arange(start, min(stop, len(frames))) for start, stop in VALIDATION_BLOCKS])
    return {"validation": validation, "test": np.flatnonzero(frames > TEST_STRETCH_AFTER_FRAME)}


def recall_at_1(reference: np.ndarray, queries: np.ndarray, frames: np.ndarray) -> float:
    """Percent of queries whose best reference lies within TOLERANCE_FRAMES of the query's frame."""
    best = np.argmax(queries @ reference.T, axis=1)
    return float(100.0 * np.mean(np.abs(frames[best] - frames) <= TOLERANCE_FRAMES))


def _route(data: Path) -> tuple[list, list, np.ndarray]:
    folders = [data / season for season in SEASONS]
    if not all(folder.is_dir() for folder in folders):
        raise InputError(f"{data}: expected two frame-aligned traverses {data}/summer and {data}/winter, "
                         "e.g. nordland64")
    reference, query = (ImageFolderSequence(folder) for folder in folders)
    query_index = {frame.source: frame.index for frame in query.frames}
    shared = [frame for frame in reference.frames if frame.source in query_index]
    frames = np.array([frame.frame for frame in shared])
    places = np.concatenate(list(split_places(frames).values()))
    if places.size == 0:
        raise InputError(f"{data}: no place falls in the validation blocks or the test stretch")
    return ([(reference, shared[i].index) for i in places], [(query, query_index[shared[i].source]) for i in places],
            frames)


def integer_agreement(float_encoder, integer_encoder, data: str | Path) -> dict:
    """Cosines and Recall@1 of `integer_encoder` against `float_encoder` on the route at `data`."""
    summer, winter, frames = _route(Path(data))
    places = split_places(frames)
    order = np.concatenate(list(places.values()))
    images = [sequence.read(index) for sequence, index in summer + winter]
    described = {name: encoder.encode(images) for name, encoder in
                 (("float", float_encoder), ("integer", integer_encoder))}
    cosines = np.sum(described["float"] * described["integer"], axis=1)
    result = {"frames": len(images), "cosine_mean": round(float(cosines.mean()), 5),
              "cosine_min": round(float(cosines.min()), 5)}
    start = 0
    for split, members in places.items():
        rows = np.arange(start, start + len(members))
        start += len(members)
        for name, descriptors in described.items():
            result[f"recall_at_1_{split}_{name}"] = round(recall_at_1(
                descriptors[rows], descriptors[len(order) + rows], frames[members]), 2)
        result[f"recall_at_1_{split}_points"] = round(
            result[f"recall_at_1_{split}_integer"] - result[f"recall_at_1_{split}_float"], 2)
    return result
