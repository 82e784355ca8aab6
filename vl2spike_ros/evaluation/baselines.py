"""The hand-made reference every place-recognition figure here is compared with: patch-normalised
pixels (grayscale, 8x8 patches each brought to zero mean and unit deviation, sum of absolute
differences), and Recall@K of any full similarity matrix, single frame or with sequence matching.

Our own implementation in numpy (no library ships this classic baseline in a form that matches the
Nordland protocol); distances are computed in chunks of queries so that a long route fits memory.
"""
from __future__ import annotations

import numpy as np
from tqdm import tqdm

from vl2spike_ros.core.preprocess import DEFAULT_RESIZE_MODE, fit_to_input
from vl2spike_ros.core.sequence import sequence_scores
from vl2spike_ros.errors import InputError
from vl2spike_ros.evaluation.metrics import RECALL_KS, evaluate_rankings, frame_tolerance_positives, pr_curve
from vl2spike_ros.evaluation.runner import EvaluationResult
from vl2spike_ros.sources.frames import ImageSequence

PATCH_SIZE = 8
BASELINE_SIZE = (32, 64)  # height, width: Nordland64's size, where the project's reference figures come from


def patch_normalise(images: np.ndarray, patch_size: int = PATCH_SIZE) -> np.ndarray:
    """Grayscale images float/uint8 [N, H, W] -> float32 [N, H*W], each patch_size x patch_size patch
    at zero mean and unit deviation (a flat patch becomes zeros). H and W must be multiples of it."""
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 3:
        raise InputError(f"patch_normalise: expected grayscale images [N, H, W], got shape {images.shape}")
    count, height, width = images.shape
    if height % patch_size or width % patch_size:
        raise InputError(f"patch_normalise: image size {height}x{width} is not a multiple of {patch_size}")
    patches = images.reshape(count, height // patch_size, patch_size, width // patch_size, patch_size)
    mean = patches.mean(axis=(2, 4), keepdims=True)
    deviation = patches.std(axis=(2, 4), keepdims=True)
    normalised = (patches - mean) / np.where(deviation > 1e-6, deviation, 1.0)
    return normalised.reshape(count, height * width)


def patchnorm_descriptors(rgb_images, size: tuple[int, int] = BASELINE_SIZE,
                          resize_mode: str = DEFAULT_RESIZE_MODE) -> np.ndarray:
    """RGB (or grayscale) uint8 images of any size -> patch-normalised float32 [N, H*W] at `size`."""
    gray = []
    for image in rgb_images:
        image = np.asarray(image)
        fitted = fit_to_input(image, size[0], size[1], resize_mode).astype(np.float32)
        gray.append(fitted.mean(axis=2) if fitted.ndim == 3 else fitted)  # channel mean: equal weights
    if not gray:
        raise InputError("patch-normalised pixels: no images")
    return patch_normalise(np.stack(gray))


def sad_similarity(query: np.ndarray, reference: np.ndarray, chunk_bytes: int = 256 << 20) -> np.ndarray:
    """float32 [Q, N] = minus the mean absolute difference between descriptors (higher is closer)."""
    query = np.asarray(query, dtype=np.float32)
    reference = np.asarray(reference, dtype=np.float32)
    if query.ndim != 2 or reference.ndim != 2 or query.shape[1] != reference.shape[1]:
        raise InputError(f"sad_similarity: descriptors of shapes {query.shape} and {reference.shape} "
                         "do not match ([Q, D] and [N, D])")
    rows = max(1, chunk_bytes // max(1, 4 * reference.size))
    similarity = np.empty((len(query), len(reference)), dtype=np.float32)
    for start in range(0, len(query), rows):
        block = query[start:start + rows, None, :] - reference[None, :, :]
        similarity[start:start + rows] = -np.abs(block).mean(axis=2)
    return similarity


def evaluate_similarity(similarity: np.ndarray, query_frames, reference_frames, tolerance: int,
                        sequence_length: int = 1) -> EvaluationResult:
    """Recall@K, PR curve, PR-AUC and recall at 100% precision of a [Q, N] similarity matrix (queries
    in route order), with the runtime's sequence matching when sequence_length > 1 (the scores the
    Localizer computes one query at a time)."""
    scores = sequence_scores(similarity, sequence_length) if sequence_length > 1 else np.asarray(similarity)
    depth = min(max(RECALL_KS), scores.shape[1])
    ranked = np.argsort(-scores, axis=1, kind="stable")[:, :depth]
    ranked_scores = np.take_along_axis(scores, ranked, axis=1)
    ranked[~np.isfinite(ranked_scores)] = -1  # references sequence matching could not score
    positives = frame_tolerance_positives(query_frames, reference_frames, tolerance)
    metrics = evaluate_rankings(ranked, ranked_scores[:, 0], positives)
    top1_correct = positives.hits(ranked[:, :1])[:, 0]
    precision, recall, _ = pr_curve(ranked_scores[:, 0], top1_correct, positives.has_positive)
    metrics.update(tolerance=tolerance, sequence_length=sequence_length)
    return EvaluationResult(metrics=metrics, ranked_ids=ranked, ranked_scores=ranked_scores,
                            precision=precision, recall=recall)


def evaluate_patchnorm(reference: ImageSequence, query: ImageSequence, tolerance: int,
                       sequence_length: int = 1, resize_mode: str = DEFAULT_RESIZE_MODE) -> EvaluationResult:
    """`vl2spike evaluate --baseline patchnorm`: the same ground truth and metrics as a model's run."""
    descriptors = [patchnorm_descriptors((image for _, image in tqdm(sequence, total=len(sequence), desc=label)),
                                         resize_mode=resize_mode)
                   for sequence, label in ((reference, "reference"), (query, "query"))]
    result = evaluate_similarity(sad_similarity(descriptors[1], descriptors[0]),
                                 [frame.frame for frame in query.frames],
                                 [frame.frame for frame in reference.frames], tolerance, sequence_length)
    result.metrics.update(checkpoint_fingerprint=None, baseline=f"patchnorm ({PATCH_SIZE}x{PATCH_SIZE} patches, "
                          f"{BASELINE_SIZE[1]}x{BASELINE_SIZE[0]} pixels, {resize_mode}, sum of absolute differences)")
    return result
