"""The ONNX Runtime backend: export with metadata, the fingerprint-keyed cache, refusals, and
descriptors / Recall@1 equal to PyTorch's (on Nordland where the data is present)."""
import os
import sys

import cv2
import numpy as np
import onnx
import pytest

from conftest import NORDLAND, require_dir
from helpers import photo, write_tiny_checkpoint
from vl2spike_ros.cli import main as vl2spike
from vl2spike_ros.core.encoder import DescriptorEncoder
from vl2spike_ros.core.onnx_export import cached_onnx_path
from vl2spike_ros.errors import InputError
from vl2spike_ros.evaluation.metrics import evaluate_rankings, frame_tolerance_positives
from vl2spike_ros.core.place_map import PlaceMap

NORDLAND_SUBSET = 300


def test_export_carries_fingerprint_and_config(tiny_checkpoint, tiny_onnx):
    encoder = DescriptorEncoder(tiny_checkpoint, backend="torch")
    metadata = {entry.key: entry.value for entry in onnx.load(str(tiny_onnx)).metadata_props}
    assert metadata["fingerprint"] == encoder.fingerprint
    assert metadata["config"] == encoder.config.to_json()
    assert metadata["input"].startswith("uint8 [B, 32, 64, 3]")
    assert vl2spike(["export", "--checkpoint", str(tiny_checkpoint), "--out", str(tiny_onnx)]) == 2  # no --overwrite


def test_descriptors_agree_with_pytorch_at_any_batch(tiny_checkpoint, tiny_onnx):
    images = [photo(name, (160, 90)) for name in ("astronaut", "coffee", "chelsea", "rocket", "camera")]
    torch_encoder = DescriptorEncoder(tiny_checkpoint, batch_size=3, backend="torch")
    onnx_encoder = DescriptorEncoder(tiny_checkpoint, batch_size=3, backend="onnxruntime", onnx_model=tiny_onnx)
    expected = torch_encoder.encode(images)
    assert np.abs(onnx_encoder.encode(images) - expected).max() <= 1e-5
    assert np.abs(onnx_encoder.encode_one(images[1]) - expected[1]).max() <= 1e-5


def test_the_default_backend_is_onnxruntime_from_the_cache_exported_once(tiny_checkpoint, tiny_onnx, onnx_cache):
    path = cached_onnx_path(DescriptorEncoder(tiny_checkpoint, backend="torch").fingerprint)
    assert path == tiny_onnx and path.is_relative_to(onnx_cache)
    written = path.stat().st_mtime_ns
    lines = []
    again = DescriptorEncoder(tiny_checkpoint, report=lines.append)
    assert again.backend.name == "onnxruntime" and again.backend.path == path and not lines
    assert path.stat().st_mtime_ns == written
    assert not [name for name in os.listdir(path.parent) if name.endswith(".tmp.onnx")]  # no temp files left


def test_the_cache_key_names_the_exporter_versions(monkeypatch):
    import torch

    before = cached_onnx_path("f" * 64)
    monkeypatch.setattr(torch, "__version__", "9.9.9")
    monkeypatch.setattr(onnx, "__version__", "8.8.8")
    after = cached_onnx_path("f" * 64)
    assert after != before and "torch9.9.9" in after.name and "onnx8.8.8" in after.name


def test_without_onnxruntime_the_default_falls_back_to_torch_with_one_line(tiny_checkpoint, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime raises ImportError
    lines = []
    encoder = DescriptorEncoder(tiny_checkpoint, report=lines.append)
    assert encoder.backend.name == "torch"
    assert len(lines) == 1 and lines[0].startswith("backend onnxruntime unavailable (") \
        and lines[0].endswith("); using torch"), lines
    with pytest.raises(InputError, match="backend onnxruntime: cannot run here"):
        DescriptorEncoder(tiny_checkpoint, backend="onnxruntime")


def test_with_cuda_the_export_is_from_the_student_on_the_cpu(tmp_path, monkeypatch):
    """No GPU needed: the device is taken as CUDA, and the model handed to the exporter is looked at."""
    import torch

    from vl2spike_ros.core import backend_onnxruntime, encoder

    checkpoint = write_tiny_checkpoint(tmp_path / "student.safetensors", seed=2)  # not in the cache
    monkeypatch.setattr(encoder, "torch_device", lambda device: torch.device("cuda", 0))
    exported_from = []

    def export(student, info, path):
        exported_from.append({parameter.device.type for parameter in student.parameters()})
        raise RuntimeError("stop after looking")

    monkeypatch.setattr(backend_onnxruntime, "export_onnx", export)
    with pytest.raises(InputError, match="export to ONNX failed: RuntimeError stop after looking"):
        DescriptorEncoder(checkpoint, device="cuda", backend="onnxruntime")
    assert exported_from == [{"cpu"}]


def test_a_model_from_another_checkpoint_is_refused(tmp_path, tiny_onnx):
    other = write_tiny_checkpoint(tmp_path / "other.safetensors", seed=1)
    with pytest.raises(InputError, match="was exported from model .* but the checkpoint is"):
        DescriptorEncoder(other, backend="onnxruntime", onnx_model=tiny_onnx)
    not_onnx = tmp_path / "bad.onnx"
    not_onnx.write_bytes(b"not a model")
    with pytest.raises(InputError, match="bad.onnx: not readable as ONNX"):
        DescriptorEncoder(other, backend="onnxruntime", onnx_model=not_onnx)


def test_unknown_backend_and_absent_cuda_fail_with_one_line(tiny_checkpoint):
    with pytest.raises(InputError, match="backend must be one of"):
        DescriptorEncoder(tiny_checkpoint, backend="tensorrt")
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="CUDA is not available on this machine"):
            DescriptorEncoder(tiny_checkpoint, device="cuda", backend="onnxruntime")


def test_a_backend_is_one_module_and_one_line(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    """mean_colour_backend.py, registered by name: the encoder and the command take it, and a map built
    with it holds its descriptors."""
    from mean_colour_backend import MeanColourBackend
    from vl2spike_ros.core.backends import REGISTERED

    monkeypatch.setitem(REGISTERED, "mean-colour", "mean_colour_backend")
    images = [photo(name, (64, 32)) for name in ("astronaut", "coffee", "chelsea")]
    encoder = DescriptorEncoder(tiny_checkpoint, backend="mean-colour")
    assert isinstance(encoder.backend, MeanColourBackend)
    descriptors = encoder.encode(images)
    assert descriptors.shape == (3, encoder.dim) and np.allclose(np.linalg.norm(descriptors, axis=1), 1.0)
    folder = tmp_path / "images"
    folder.mkdir()
    for index, image in enumerate(images):
        cv2.imwrite(str(folder / f"images-{index:05d}.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    assert vl2spike(["build-map", "--images", str(folder), "--checkpoint", str(tiny_checkpoint), "--backend",
                     "mean-colour", "--out", str(tmp_path / "map")]) == 0
    np.testing.assert_allclose(PlaceMap.load(tmp_path / "map").descriptors, descriptors, atol=1e-6)


def read_subset(folder, count):
    names = sorted(os.listdir(folder))[:count]
    images = [cv2.cvtColor(cv2.imread(str(folder / name)), cv2.COLOR_BGR2RGB) for name in names]
    frames = [int(name.split("-")[1].split(".")[0]) for name in names]
    return images, np.array(frames)


def test_nordland_descriptors_agree_but_for_a_few_frames_and_recall_by_no_more():
    """The shipped model on the first 300 places of Nordland: a map built with one backend serves
    the other; the descriptors agree to 1e-5 on all but at most 10% of the frames (those whose
    integer spikes round the other way), which keep a cosine of at least 0.99; Recall@1 differs by
    no more than the share of those frames. Not equality: see the comment below."""
    nordland = require_dir(NORDLAND)
    references, reference_frames = read_subset(nordland / "summer", NORDLAND_SUBSET)
    queries, query_frames = read_subset(nordland / "winter", NORDLAND_SUBSET)
    positives = frame_tolerance_positives(query_frames, reference_frames, 10)
    recalls = {}
    descriptors = {}
    for backend in ("torch", "onnxruntime"):
        encoder = DescriptorEncoder(backend=backend)
        descriptors[backend] = encoder.encode(queries)
        place_map = PlaceMap(encoder.dim, encoder.fingerprint, "flat")
        place_map.add(encoder.encode(references) if backend == "torch" else descriptors["map"])
        if backend == "torch":
            descriptors["map"] = place_map.descriptors.copy()  # the torch-built map, reused below
        scores, ids = place_map.search(descriptors[backend], 20)
        recalls[backend] = evaluate_rankings(ids, scores[:, 0], positives)["recall@1"]
    # Integer spikes round membrane potentials: where one sits within float error of a level
    # boundary, the two runtimes' summation orders can put it on either side, which moves that
    # frame's descriptor a little. Every other frame agrees to 1e-5.
    moved = np.abs(descriptors["onnxruntime"] - descriptors["torch"]).max(axis=1) > 1e-5
    cosines = (descriptors["onnxruntime"] * descriptors["torch"]).sum(axis=1)
    print(f"{moved.sum()} of {len(moved)} descriptors moved; lowest cosine {cosines.min():.5f}; "
          f"Recall@1 {recalls['torch']:.2f} / {recalls['onnxruntime']:.2f}")
    assert moved.mean() <= 0.1 and cosines.min() >= 0.99  # measured: 19 of 300 moved, cosine >= 0.997
    assert abs(recalls["onnxruntime"] - recalls["torch"]) <= 100 * moved.sum() / len(moved)
