"""One frame in, one match out: the object that both the ROS node and offline evaluation call,
so that what is measured offline is what runs on the robot.

The node talks to nothing in `core` but this module: the localizer loads model and map, matches a
frame (with the best place's metadata and pose), adds keyframes in mapping mode and saves the map.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import faiss
import numpy as np

from vl2spike_ros.core.backends import AUTO
from vl2spike_ros.core.encoder import DescriptorEncoder, print_to_stderr
from vl2spike_ros.core.limits import MODES
from vl2spike_ros.core.place_map import Place, PlaceMap
from vl2spike_ros.core.sequence import SequenceMatcher
from vl2spike_ros.errors import InputError


# The map's mean counts as this many queries in the running mean of the queries (Localizer's `centre`).
CENTRE_PRIOR_FRAMES = 50


class MapUpdateError(RuntimeError):
    """The map refused a keyframe. Not the frame's fault, so the node reports it apart from bad input."""


@dataclass
class Match:
    query_index: int
    place_ids: list[int]          # best first; never -1 (an approximate index may find fewer than K,
                                  # sequence matching may score fewer)
    scores: list[float]           # same order; cosine similarity (sequence-averaged when L > 1)
    accepted: bool                # best score >= match_threshold
    latency_ms: float
    added_place_id: int | None = None  # mapping mode: the keyframe this frame became, if any
    best_place: Place | None = None    # metadata of place_ids[0]
    index_note: str | None = None      # for the log: the keyframe made the map (re)train its index
    stage_ms: dict[str, float] = field(default_factory=dict)  # "search", "sequence": where the time went

    @property
    def best_place_id(self) -> int | None:
        return self.place_ids[0] if self.place_ids else None

    @property
    def pose(self) -> list[float] | None:
        """The best place's pose (x, y, z, qx, qy, qz, qw) when the match is accepted and it has one."""
        return self.best_place.pose if self.accepted and self.best_place is not None else None

    def to_dict(self) -> dict:
        return asdict(self)


class Localizer:
    """Holds encoder, map and sequence matcher.

    In ``map`` mode a frame becomes a new place (keyframe) when its best single-frame similarity
    is below ``novelty_threshold`` or the map is empty. ``search_threads`` > 0 sets FAISS's OpenMP
    threads in whichever thread matches (0: FAISS's default, every core).

    ``centre`` standardises each traverse on its own: the map's descriptors are matched centred on
    their mean, and each query centred on the running mean of the queries so far (started at the
    map's mean with the weight of CENTRE_PRIOR_FRAMES queries, so the first ones are well-defined),
    both renormalised. What all frames of one traverse share (the season, the light, the camera)
    then counts less than what tells its places apart. Scores are cosines of centred descriptors.
    It needs a fixed map, so not in ``map`` mode.
    """

    def __init__(self, encoder: DescriptorEncoder, place_map: PlaceMap, top_k: int = 5,
                 sequence_length: int = 1, match_threshold: float = 0.0,
                 novelty_threshold: float = 0.9, mode: str = "localize", search_threads: int = 0,
                 centre: bool = False) -> None:
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
        self.search_threads = search_threads
        self.query_count = 0
        self.centre = centre
        self._search_map = _centred_copy(place_map) if centre else place_map
        self._query_sum = place_map.descriptor_mean.astype(np.float64) * CENTRE_PRIOR_FRAMES
        self._query_weight = float(CENTRE_PRIOR_FRAMES)
        self.mode = "localize"
        self.set_mode(mode)

    @classmethod
    def from_paths(cls, checkpoint: str | Path | None, map_path: str | Path | None,
                   device: str = "cpu", index_kind: str = "flat", num_threads: int = 0,
                   backend: str = AUTO, report: Callable[[str], None] = print_to_stderr,
                   **options) -> "Localizer":
        """Loads a checkpoint (None: shipped model) and a map (None or missing in map mode: empty);
        `num_threads` > 0 sets the CPU threads of torch, onnxruntime and FAISS; `backend` and
        `report` are the encoder's (see DescriptorEncoder)."""
        if num_threads > 0:
            import torch

            torch.set_num_threads(num_threads)
        encoder = DescriptorEncoder(checkpoint, device=device, backend=backend, report=report,
                                    threads=num_threads if num_threads > 0 else None)
        if map_path and Path(map_path).exists():
            place_map = PlaceMap.load(map_path, expected_fingerprint=encoder.fingerprint,
                                      expected_dim=encoder.dim)
        elif options.get("mode", "localize") == "map":
            place_map = PlaceMap(encoder.dim, encoder.fingerprint, index_kind)
        else:
            found = f"map {str(map_path)!r}: no such map directory" if map_path else "no map given (map_path is empty)"
            raise InputError(f"{found}; set map_path to a map directory built with `vl2spike build-map` "
                             "(`ros2 launch vl2spike_ros vpr.launch.py map_path:=DIR`), or start in mode 'map'")
        return cls(encoder, place_map, search_threads=num_threads, **options)

    @property
    def sequence_length(self) -> int:
        return self.sequence.length

    @property
    def sequence_frames(self) -> int:
        """Query frames the last match's scores average: 1 for single frames, up to sequence_length."""
        return self.sequence.frames if self.sequence.length > 1 else 1

    @property
    def search_index(self) -> str:
        """What ranks the places: the map's index for single frames; with sequences, exact
        similarities to every place ("exact"), whatever the map's index kind."""
        return self.place_map.index_kind if self.sequence.length == 1 else "exact"

    @property
    def map_size(self) -> int:
        return len(self.place_map)

    def set_mode(self, mode: str) -> None:
        if mode not in MODES:
            raise InputError(f"mode must be one of {MODES}, got {mode!r}")
        if mode == "localize" and len(self.place_map) == 0:
            raise InputError("cannot localise against an empty map; map first or load a map")
        if mode == "map" and self.centre:
            raise InputError("mode 'map' adds places, but centring (centre) needs a fixed map; turn centre off to map")
        self.mode = mode

    def restart(self) -> None:
        """Forget the recent queries and number queries from 0 again (robot moved, warm-up frames)."""
        self.sequence.reset()
        self.query_count = 0

    def localize(self, image: np.ndarray, encoding: str | None = None, source: str = "",
                 stamp: float | None = None, frames_skipped: int = 0) -> Match:
        """Encodes one frame and matches it. `source` and `stamp` describe the frame should it become
        a keyframe; `frames_skipped` counts frames dropped since the previous call (see match_descriptor)."""
        started = time.perf_counter()
        descriptor = self.encoder.encode_one(image, encoding)
        return self.match_descriptor(descriptor, source, stamp, frames_skipped, started)

    def match_descriptor(self, descriptor: np.ndarray, source: str = "", stamp: float | None = None,
                         frames_skipped: int = 0, started: float | None = None) -> Match:
        """Matches one descriptor. Sequence matching assumes consecutive frames, so after skipped
        frames it starts a new sequence rather than score a diagonal that is off by the gap."""
        started = time.perf_counter() if started is None else started
        if frames_skipped:
            self.sequence.reset()
        query_index = self.query_count
        self.query_count += 1
        if self.centre:
            descriptor = self._centred_query(descriptor)
        place_ids: list[int] = []
        scores: list[float] = []
        best_single = -np.inf
        stage_ms = {"search": 0.0, "sequence": 0.0}
        if len(self.place_map):
            k = min(self.top_k, len(self.place_map))
            if self.search_threads > 0:
                # OpenMP thread counts belong to the calling thread, and the node searches from its worker
                # thread: there FAISS took every core and spin-waited, which made a 27k flat search 10-15x
                # slower on a busy 2-core machine (docs/benchmark.md, node latency).
                faiss.omp_set_num_threads(self.search_threads)
            searching = time.perf_counter()
            if self.sequence.length == 1:
                # Single frames go through the index itself, so HNSW / IVF-PQ maps stay sublinear.
                top_scores, top_ids = self._search_map.search(descriptor[None, :], k)
                found = top_ids[0] >= 0  # approximate indexes mark "fewer than k found" with -1
                place_ids = [int(i) for i in top_ids[0][found]]
                scores = [float(s) for s in top_scores[0][found]]
                best_single = scores[0] if scores else -np.inf
                stage_ms["search"] = (time.perf_counter() - searching) * 1000.0
            else:
                similarity_row = self._search_map.similarities(descriptor[None, :])[0]
                best_single = float(similarity_row.max())
                sequencing = time.perf_counter()
                stage_ms["search"] = (sequencing - searching) * 1000.0
                sequence_scores = self.sequence.push(similarity_row)
                candidates = np.argpartition(-sequence_scores, k - 1)[:k]
                ranked = candidates[np.argsort(-sequence_scores[candidates], kind="stable")]
                ranked = ranked[np.isfinite(sequence_scores[ranked])]  # -inf: not scored (sequence.py)
                place_ids = [int(i) for i in ranked]
                scores = [float(sequence_scores[i]) for i in ranked]
                stage_ms["sequence"] = (time.perf_counter() - sequencing) * 1000.0
        accepted = bool(scores) and scores[0] >= self.match_threshold
        best_place = self.place_map.places[place_ids[0]] if place_ids else None
        added, index_note = None, None
        if self.mode == "map" and (not len(self.place_map) or best_single < self.novelty_threshold):
            trained_before = self.place_map.trained_count
            added = self.add_keyframe(descriptor, source, stamp, frame=query_index)
            index_note = self._training_note(trained_before)
        return Match(query_index=query_index, place_ids=place_ids, scores=scores, accepted=accepted,
                     latency_ms=(time.perf_counter() - started) * 1000.0, added_place_id=added,
                     best_place=best_place, index_note=index_note, stage_ms=stage_ms)

    def _centred_query(self, descriptor: np.ndarray) -> np.ndarray:
        self._query_sum += descriptor
        self._query_weight += 1.0
        return _unit(descriptor - self._query_sum / self._query_weight)

    def _training_note(self, trained_before: int) -> str | None:
        """A line for the log when the last keyframe made the map train its IVF-PQ index again."""
        trained = self.place_map.trained_count
        if trained == trained_before:
            return None
        options = self.place_map.index_options
        return (f"map index {self.place_map.index_kind} {'retrained' if trained_before else 'trained'} on "
                f"{trained} places: {options['nlist']} lists, {options['nprobe']} probed per search")

    def add_keyframe(self, descriptor: np.ndarray, source: str = "", stamp: float | None = None,
                     frame: int | None = None) -> int:
        """Adds a place with this descriptor and metadata; returns its id. Raises MapUpdateError
        when the map cannot take it."""
        place = Place(place_id=len(self.place_map), source=source, frame=frame, stamp=stamp)
        try:
            return self.place_map.add(descriptor[None, :], [place])[0]
        except InputError as error:
            raise MapUpdateError(f"the map ({self.place_map.index_kind}, {len(self.place_map)} places) "
                                 f"refused a keyframe: {error}") from error

    def save_map(self, path: str | Path) -> int:
        """Writes the map to `path` (atomically); returns the number of places saved."""
        self.place_map.save(path)
        return len(self.place_map)


def _unit(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)


def _centred_copy(place_map: PlaceMap) -> PlaceMap:
    """The map's places under the same index kind, their descriptors centred on the map's mean and renormalised."""
    offsets = place_map.descriptors - place_map.descriptor_mean
    if len(place_map) and np.linalg.norm(offsets, axis=1).min() < 1e-6:
        raise InputError(f"centre: a place of the map ({len(place_map)} places) is the map's mean, so it has no "
                         "direction once centred; use a map of several distinct places or turn centre off")
    centred = PlaceMap(place_map.dim, place_map.fingerprint, place_map.index_kind, **place_map.index_options)
    centred.add(_unit(offsets), place_map.places)
    return centred
