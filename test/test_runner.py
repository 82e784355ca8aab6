"""Offline jobs of evaluation/runner.py on maps the CLI did not build itself."""
import numpy as np

from helpers import photo, write_tiny_checkpoint
from vl2spike_ros.cli import main
from vl2spike_ros.core.encoder import DescriptorEncoder
from vl2spike_ros.core.place_map import Place, PlaceMap
from vl2spike_ros.evaluation.metrics import frame_tolerance_positives
from vl2spike_ros.evaluation.runner import evaluate_descriptors

NAMES = ("astronaut", "coffee", "chelsea", "rocket", "camera", "brick", "grass", "gravel")


def test_evaluate_map_without_frame_numbers_says_what_is_missing(tmp_path, capsys):
    # A map that vpr_node assembled from a live stream: places carry a source and stamp, no frame.
    import cv2

    checkpoint = write_tiny_checkpoint(tmp_path / "student.safetensors")
    encoder = DescriptorEncoder(checkpoint)
    images = [photo(NAMES[i % len(NAMES)], (64, 32)) for i in range(24)]
    place_map = PlaceMap(encoder.dim, encoder.fingerprint)
    place_map.add(encoder.encode(images), [Place(place_id=i, source=f"/image@{i}.000000000", stamp=float(i))
                                           for i in range(24)])
    place_map.save(tmp_path / "map")
    query = tmp_path / "query"
    query.mkdir()
    for i, image in enumerate(images):
        cv2.imwrite(str(query / f"images-{i:05d}.png"), np.roll(image, 2, axis=1))
    code = main(["evaluate", "--map", str(tmp_path / "map"), "--query", str(query), "--checkpoint",
                 str(checkpoint), "--out", str(tmp_path / "eval")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "24 of 24 places have no frame number" in err and "--radius" in err
    assert not (tmp_path / "eval").exists()


def test_metrics_name_the_search_that_ranked_the_places(tmp_path):
    """Sequence matching scores every place exactly, so an hnsw map's figures with L > 1 are exact ones."""
    encoder = DescriptorEncoder(write_tiny_checkpoint(tmp_path / "student.safetensors"))
    descriptors = encoder.encode([photo(NAMES[i % len(NAMES)], (64, 32)) for i in range(24)])
    place_map = PlaceMap(encoder.dim, encoder.fingerprint, "hnsw")
    place_map.add(descriptors)
    positives = frame_tolerance_positives(np.arange(24), np.arange(24), 0)
    single = evaluate_descriptors(encoder, place_map, descriptors, positives).metrics
    sequence = evaluate_descriptors(encoder, place_map, descriptors, positives, sequence_length=3).metrics
    assert (single["index"], single["map_index"]) == ("hnsw", "hnsw")
    assert (sequence["index"], sequence["map_index"]) == ("exact", "hnsw")
