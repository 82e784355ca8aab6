"""Offline jobs that the CLI and the demo share: build a map from a traverse, evaluate a query
traverse against a reference traverse. Matching goes through the `Localizer`, as on the robot."""
from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vl2spike_ros.sources.frames import ImageSequence
from vl2spike_ros.sources.image_folders import ImageFolderSequence
from vl2spike_ros.sources.traverses import open_sequence
from vl2spike_ros.core.encoder import DescriptorEncoder
from vl2spike_ros.errors import InputError
from vl2spike_ros.evaluation.metrics import (RECALL_KS, GroundTruth, evaluate_rankings, frame_tolerance_positives, metric_radius_positives,
                         plot_pr_curve, pr_curve)
from vl2spike_ros.core.atomic_files import write_json_atomic
from vl2spike_ros.core.localizer import Localizer
from vl2spike_ros.core.place_map import Place, PlaceMap
from vl2spike_ros.core.place_map.index_factory import AUTO as AUTO_INDEX, index_kind_for


def open_checked_sequence(path: str | Path, topic: str | None = None) -> ImageSequence:
    """Opens a folder or bag and refuses an unreadable image in a folder before any work is done."""
    if not Path(path).exists():
        raise InputError(f"images {path}: no such folder or bag")
    sequence = open_sequence(path, topic)
    if isinstance(sequence, ImageFolderSequence):
        sequence.check_readable()
    return sequence


def encode_sequence(encoder: DescriptorEncoder, sequence: ImageSequence, label: str,
                    progress: bool = True) -> np.ndarray:
    return encoder.encode((image for _, image in sequence), progress=progress, total=len(sequence),
                          description=f"encoding {label}")


def places_of(sequence: ImageSequence, poses: list[list[float]] | None = None) -> list[Place]:
    return [Place(place_id=frame.index, source=frame.source, frame=frame.frame, stamp=frame.stamp,
                  pose=poses[frame.index] if poses else None) for frame in sequence.frames]


def build_map(encoder: DescriptorEncoder, sequence: ImageSequence, index_kind: str = "flat",
              progress: bool = True, poses: list[list[float]] | None = None) -> PlaceMap:
    """Encodes a reference traverse; `poses` (one per frame, see poses.py) make `~/pose` possible.
    `index_kind` "auto" picks the kind from the number of places (index_factory.index_kind_for)."""
    places = places_of(sequence, poses)  # metadata first: bad poses fail before any encoding
    descriptors = encode_sequence(encoder, sequence, "reference", progress)
    if index_kind == AUTO_INDEX:
        index_kind = index_kind_for(len(descriptors))
    place_map = PlaceMap(encoder.dim, encoder.fingerprint, index_kind)
    place_map.add(descriptors, places)
    return place_map


@dataclass
class EvaluationResult:
    metrics: dict
    ranked_ids: np.ndarray     # [Q, max K]
    ranked_scores: np.ndarray  # [Q, max K]
    precision: np.ndarray      # PR curve over the top-1 score
    recall: np.ndarray


def require_enough_references(count: int) -> None:
    """Recall@20 (a design §3 key) needs at least 20 references; checked before any encoding."""
    max_k = max(RECALL_KS)
    if max_k > count:
        raise InputError(f"K={max_k} but the map holds only {count} places; "
                         "Recall@K needs at least K references")


def require_frame_numbers(place_map: PlaceMap) -> None:
    """Frame-tolerance ground truth compares frame numbers: refuse, before any encoding, a map whose
    places have none (a map assembled elsewhere, e.g. by vpr_node from a live stream)."""
    unnumbered = sum(place.frame is None for place in place_map.places)
    if unnumbered:
        raise InputError(f"--map: {unnumbered} of {len(place_map)} places have no frame number, so "
                         "--tolerance (frames) cannot tell which are right; give --radius with "
                         "--query-poses (the map needs poses) or rebuild the map from numbered images")


def evaluate_against_map(encoder: DescriptorEncoder, place_map: PlaceMap, query: ImageSequence,
                         tolerance: int, sequence_length: int = 1, progress: bool = True,
                         radius: float | None = None,
                         query_poses: list[list[float]] | None = None, centre: bool = False) -> EvaluationResult:
    """Recall@K and PR curve of `query` against a map. Ground truth: frame numbers within
    `tolerance`, or, with `radius`, positions within `radius` metres (map poses vs `query_poses`)."""
    if tolerance < 0:
        raise InputError(f"--tolerance must be >= 0 frames, got {tolerance}")
    if radius is not None and (query_poses is None or not place_map.has_poses):
        raise InputError("--radius needs poses for the map places (build-map --poses or "
                         "--reference-poses) and for the queries (--query-poses)")
    require_enough_references(len(place_map))
    if radius is None:
        require_frame_numbers(place_map)
    query_descriptors = encode_sequence(encoder, query, "query", progress)
    if radius is None:
        positives = frame_tolerance_positives(
            np.array([frame.frame for frame in query.frames]),
            np.array([place.frame for place in place_map.places]), tolerance)
    else:
        positives = metric_radius_positives(np.array(query_poses)[:, :3],
                                            np.array([place.pose for place in place_map.places])[:, :3], radius)
    result = evaluate_descriptors(encoder, place_map, query_descriptors, positives, sequence_length, centre)
    result.metrics.update(tolerance=tolerance, radius=radius)
    return result


def evaluate_descriptors(encoder: DescriptorEncoder, place_map: PlaceMap, query_descriptors: np.ndarray,
                         positives: GroundTruth, sequence_length: int = 1, centre: bool = False) -> EvaluationResult:
    """Matches encoded queries (in traverse order) through the `Localizer` and scores them."""
    localizer = Localizer(encoder, place_map, top_k=max(RECALL_KS), sequence_length=sequence_length, centre=centre)
    started = time.perf_counter()
    matches = [localizer.match_descriptor(descriptor) for descriptor in query_descriptors]
    matching_ms = (time.perf_counter() - started) * 1000.0 / max(len(matches), 1)
    # An approximate index may find fewer than K places: pad with id -1 (a miss) and score -inf.
    ranked_ids = np.full((len(matches), localizer.top_k), -1, dtype=np.int64)
    ranked_scores = np.full((len(matches), localizer.top_k), -np.inf, dtype=np.float32)
    for row, match in enumerate(matches):
        ranked_ids[row, : len(match.place_ids)] = match.place_ids
        ranked_scores[row, : len(match.scores)] = match.scores
    metrics = evaluate_rankings(ranked_ids, ranked_scores[:, 0], positives)
    top1_correct = positives.hits(ranked_ids[:, :1])[:, 0]  # -1 (no result) is never a hit
    precision, recall, _ = pr_curve(ranked_scores[:, 0], top1_correct, positives.has_positive)
    metrics.update(sequence_length=sequence_length, checkpoint_fingerprint=encoder.fingerprint,
                   index=localizer.search_index, map_index=place_map.index_kind,
                   matching_ms_per_query=round(matching_ms, 4), centre=centre)
    return EvaluationResult(metrics=metrics, ranked_ids=ranked_ids, ranked_scores=ranked_scores,
                            precision=precision, recall=recall)


def write_evaluation(result: EvaluationResult, out_dir: str | Path, title: str) -> None:
    """metrics.json, pr_curve.png and matches.json (per query: top-K ids and scores)."""
    out_dir = Path(out_dir)
    # The outermost folder this call creates (with its parents), to remove if it fails.
    created_folder = next((folder for folder in reversed([out_dir, *out_dir.parents]) if not folder.exists()), None)
    outputs = [out_dir / name for name in ("pr_curve.png", "matches.json", "metrics.json")]
    new_outputs = [path for path in outputs if not path.exists()]
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        plot_pr_curve(result.precision, result.recall, outputs[0], title)
        write_json_atomic(outputs[1], {
            "place_ids": result.ranked_ids.tolist(),
            "scores": np.round(result.ranked_scores, 6).tolist(),
        })
        write_json_atomic(outputs[2], result.metrics)
    except BaseException:
        # A failed evaluation (a full disk) leaves no half set of outputs and no folder it made.
        for path in new_outputs:
            path.unlink(missing_ok=True)
        if created_folder is not None:
            shutil.rmtree(created_folder, ignore_errors=True)
        raise
