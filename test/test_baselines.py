"""Patch-normalised pixels, Recall@K of a whole similarity matrix, and `vl2spike evaluate --baseline`."""
import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import NORDLAND, require_dir
from vl2spike_ros.core.sequence import SequenceMatcher
from vl2spike_ros.evaluation.baselines import (evaluate_patchnorm, evaluate_similarity, patch_normalise,
                                                patchnorm_descriptors, sad_similarity)
from vl2spike_ros.errors import InputError
from vl2spike_ros.sources.image_folders import ImageFolderSequence
from training_fixtures import write_traverses


def test_every_patch_has_zero_mean_and_unit_deviation():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (3, 16, 24)).astype(np.float32)
    images[0, :8, :8] = 7.0                                       # a flat patch
    patches = patch_normalise(images).reshape(3, 2, 8, 3, 8)
    assert np.allclose(patches.mean(axis=(2, 4)), 0.0, atol=1e-5)
    deviation = patches.std(axis=(2, 4))
    assert np.allclose(deviation[0, 0, 0], 0.0) and np.allclose(np.delete(deviation.reshape(-1), 0), 1.0, atol=1e-4)
    with pytest.raises(InputError, match="multiple of 8"):
        patch_normalise(np.zeros((1, 12, 16)))


def test_chunked_sad_equals_the_direct_computation():
    rng = np.random.default_rng(1)
    query, reference = rng.normal(size=(13, 40)), rng.normal(size=(17, 40))
    direct = -np.abs(query[:, None] - reference[None]).mean(axis=2)
    assert np.allclose(sad_similarity(query, reference, chunk_bytes=1000), direct, atol=1e-5)
    with pytest.raises(InputError, match="do not match"):
        sad_similarity(query, reference[:, :5])


def test_recall_of_a_similarity_matrix_single_frame_and_with_sequences():
    rng = np.random.default_rng(2)
    count = 60
    frames = np.arange(count) * 10
    similarity = rng.normal(0, 1.0, (count, count)).astype(np.float32) + 1.5 * np.eye(count, dtype=np.float32)
    single = evaluate_similarity(similarity, frames, frames, tolerance=0).metrics
    hits = (similarity.argmax(axis=1) == np.arange(count)).mean() * 100
    assert single["recall@1"] == pytest.approx(hits)
    sequence = evaluate_similarity(similarity, frames, frames, tolerance=0, sequence_length=10)
    matcher = SequenceMatcher(10)                                   # the robot's online matcher
    online = np.array([matcher.push(row).argmax() for row in similarity])
    assert np.array_equal(sequence.ranked_ids[:, 0], online)
    assert sequence.metrics["recall@1"] > single["recall@1"]


def test_patchnorm_matches_the_reference_figure_on_nordland():
    """../shared/data/README.md: patch-normalised pixels, 8x8, SAD, +-10 frames: Recall@1 25.1%."""
    nordland = require_dir(NORDLAND)
    summer, winter = ImageFolderSequence(nordland / "summer"), ImageFolderSequence(nordland / "winter")
    result = evaluate_patchnorm(summer, winter, tolerance=10)
    assert result.metrics["recall@1"] == pytest.approx(25.1, abs=0.05)


def test_cli_baseline_patchnorm_writes_metrics(tmp_path):
    summer, winter = write_traverses(tmp_path / "route", places=30)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "vl2spike_ros.cli", "evaluate", "--reference", str(summer),
               "--query", str(winter), "--baseline", "patchnorm", "--sequence-length", "3", "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["baseline"].startswith("patchnorm") and metrics["sequence_length"] == 3
    assert metrics["recall@1"] == 100.0  # the same random scene per place, darker and noisier
    assert (out / "pr_curve.png").is_file()
    descriptors = patchnorm_descriptors([ImageFolderSequence(summer).read(0)])
    assert descriptors.shape == (1, 64 * 32)
    refused = subprocess.run(command[:4] + ["--map", str(tmp_path), *command[6:]], capture_output=True,
                             text=True, timeout=120)
    assert refused.returncode == 2 and "needs --reference" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1


def test_baseline_resize_mode_fits_other_aspect_ratios_its_own_way(tmp_path):
    from helpers import photo

    square = photo("astronaut", (96, 96))
    crop, letterbox = (patchnorm_descriptors([square], resize_mode=mode) for mode in ("crop", "letterbox"))
    assert not np.allclose(crop, letterbox)
    summer, winter = write_traverses(tmp_path / "route", places=24)
    result = evaluate_patchnorm(ImageFolderSequence(summer), ImageFolderSequence(winter), 0,
                                resize_mode="letterbox")
    assert "letterbox" in result.metrics["baseline"]
