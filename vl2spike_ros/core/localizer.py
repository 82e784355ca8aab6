"""One frame in, one match out: the object that both the ROS node and offline evaluation call,
so that what is measured offline is what runs on the robot."""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from vl2spike_ros.core.encoder import DescriptorEncoder
from vl2spike_ros.errors import InputError
from vl2spike_ros.core.place_map import Place, PlaceMap
from vl2spike_ros.core.sequence import SequenceMatcher

MODES = ("localize", "map")


@dataclass
class Match:
    query_index: int
    place_ids: list[int]          # best first
    scores: list[float]           # same order; cosine similarity (sequence-averaged when L > 1)
    accepted: bool                # best score >= match_threshold
    latency_ms: float
    added_place_id: int | None = None  # mapping mode: the keyframe this frame became, if any

    @property
    def best_place_id(self) -> int | None:
        return self.place_ids[0] if self.place_ids else None

    def to_dict(self) -> dict:
        return asdict(self)


class Localizer:
    """Holds encoder, map and sequence matcher.

    In ``map`` mode a frame becomes a new place (keyframe) when its best single-frame similarity
    is below ``novelty_threshold`` or the map is empty.
    """

    def __init__(self, encoder: DescriptorEncoder, place_map: PlaceMap, top_k: int = 5,
                 sequence_length: int = 1, match_threshold: float = 0.0,
                 novelty_threshold: float = 0.9, mode: str = "localize") -> None:
        if place_map.fingerprint != encoder.fingerprint or place_map.dim != encoder.dim:
            raise InputError(
                f"map was built with model {place_map.fingerprint[:12]} (dim {place_map.dim}) but the "
                f"encoder is {encoder.fingerprint[:12]} (dim {encoder.dim}); rebuild the map")
        if top_k < 1:
            raise InputError(f"top_k must be >= 1, got {top_k}")
        if sequence_length < 1:
            raise InputError(f"sequence_length must be >= 1, got {sequence_length}")
        self.encoder = encoder
        self.place_map = place_map
        self.top_k = top_k
        self.match_threshold = match_threshold
        self.novelty_threshold = novelty_threshold
        self.sequence = SequenceMatcher(sequence_length)
        self.query_count = 0
        self.mode = "localize"
        self.set_mode(mode)

    @classmethod
    def from_paths(cls, checkpoint: str | Path | None, map_path: str | Path | None,
                   device: str = "cpu", index_kind: str = "flat", backend: str = "torch",
                   **options) -> "Localizer":
        """Loads a checkpoint (None: shipped model) and a map (None or missing in map mode: empty)."""
        encoder = DescriptorEncoder(checkpoint, device=device, backend=backend)
        if map_path and Path(map_path).exists():
            place_map = PlaceMap.load(map_path, expected_fingerprint=encoder.fingerprint,
                                      expected_dim=encoder.dim)
        elif options.get("mode", "localize") == "map":
            place_map = PlaceMap(encoder.dim, encoder.fingerprint, index_kind)
        else:
            raise InputError(f"map {map_path!r}: no such map directory; build one with "
                             "`vl2spike build-map` or start in mode 'map'")
        return cls(encoder, place_map, **options)

    @property
    def sequence_length(self) -> int:
        return self.sequence.length

    def set_mode(self, mode: str) -> None:
        if mode not in MODES:
            raise InputError(f"mode must be one of {MODES}, got {mode!r}")
        if mode == "localize" and len(self.place_map) == 0:
            raise InputError("cannot localise against an empty map; map first or load a map")
        self.mode = mode

    def localize(self, image: np.ndarray, encoding: str | None = None,
                 place: Place | None = None) -> Match:
        """Encodes one frame and matches it; ``place`` is the metadata used if it becomes a keyframe."""
        started = time.perf_counter()
        descriptor = self.encoder.encode_one(image, encoding)
        return self.match_descriptor(descriptor, place, started)

    def match_descriptor(self, descriptor: np.ndarray, place: Place | None = None,
                         started: float | None = None) -> Match:
        started = time.perf_counter() if started is None else started
        query_index = self.query_count
        self.query_count += 1
        place_ids: list[int] = []
        scores: list[float] = []
        best_single = -np.inf
        if len(self.place_map):
            k = min(self.top_k, len(self.place_map))
            if self.sequence.length == 1:
                # Single frames go through the index itself, so HNSW / IVF-PQ maps stay sublinear.
                top_scores, top_ids = self.place_map.search(descriptor[None, :], k)
                place_ids = [int(i) for i in top_ids[0]]
                scores = [float(s) for s in top_scores[0]]
                best_single = scores[0]
            else:
                similarity_row = self.place_map.similarities(descriptor[None, :])[0]
                best_single = float(similarity_row.max())
                sequence_scores = self.sequence.push(similarity_row)
                candidates = np.argpartition(-sequence_scores, k - 1)[:k]
                ranked = candidates[np.argsort(-sequence_scores[candidates], kind="stable")]
                place_ids = [int(i) for i in ranked]
                scores = [float(sequence_scores[i]) for i in ranked]
        accepted = bool(scores) and scores[0] >= self.match_threshold
        added = None
        if self.mode == "map" and (not len(self.place_map) or best_single < self.novelty_threshold):
            added = self.place_map.add(descriptor[None, :], [place] if place else None)[0]
        return Match(query_index=query_index, place_ids=place_ids, scores=scores, accepted=accepted,
                     latency_ms=(time.perf_counter() - started) * 1000.0, added_place_id=added)
