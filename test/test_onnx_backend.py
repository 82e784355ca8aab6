"""The ONNX Runtime backend: export with metadata, the fingerprint-keyed cache, refusals, and
descriptors / Recall@1 equal to PyTorch's (on Nordland where the data is present)."""
import os

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


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A private user cache, so no test reads or writes the real one."""
    with pytest.MonkeyPatch.context() as patch:
        directory = tmp_path_factory.mktemp("xdg_cache")
        patch.setenv("XDG_CACHE_HOME", str(directory))
        yield directory


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "student.safetensors")


@pytest.fixture(scope="module")
def exported(tiny, tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "student.onnx"
    assert vl2spike(["export", "--checkpoint", str(tiny), "--format", "onnx", "--out", str(path)]) == 0
    return path


def test_export_carries_fingerprint_and_config(tiny, exported):
    encoder = DescriptorEncoder(tiny)
    metadata = {entry.key: entry.value for entry in onnx.load(str(exported)).metadata_props}
    assert metadata["fingerprint"] == encoder.fingerprint
    assert metadata["config"] == encoder.config.to_json()
    assert metadata["input"].startswith("uint8 [B, 32, 64, 3]")
    assert vl2spike(["export", "--checkpoint", str(tiny), "--out", str(exported)]) == 2  # no --overwrite


def test_descriptors_agree_with_pytorch_at_any_batch(tiny, exported):
    images = [photo(name, (160, 90)) for name in ("astronaut", "coffee", "chelsea", "rocket", "camera")]
    torch_encoder = DescriptorEncoder(tiny, batch_size=3)
    onnx_encoder = DescriptorEncoder(tiny, batch_size=3, backend="onnxruntime", onnx_model=exported)
    expected = torch_encoder.encode(images)
    assert np.abs(onnx_encoder.encode(images) - expected).max() <= 1e-5
    assert np.abs(onnx_encoder.encode_one(images[1]) - expected[1]).max() <= 1e-5


def test_first_use_exports_into_the_cache_once(cache):
    encoder = DescriptorEncoder(backend="onnxruntime")  # the shipped model; Nordland reuses the export
    path = cached_onnx_path(encoder.fingerprint)
    assert path.is_file() and path.is_relative_to(cache)
    written = path.stat().st_mtime_ns
    again = DescriptorEncoder(backend="onnxruntime")
    assert path.stat().st_mtime_ns == written
    assert again.backend.path == path
    assert not [name for name in os.listdir(path.parent) if name != path.name]  # no temp files left


def test_a_model_from_another_checkpoint_is_refused(tmp_path, exported):
    other = write_tiny_checkpoint(tmp_path / "other.safetensors", seed=1)
    with pytest.raises(InputError, match="was exported from model .* but the checkpoint is"):
        DescriptorEncoder(other, backend="onnxruntime", onnx_model=exported)
    not_onnx = tmp_path / "bad.onnx"
    not_onnx.write_bytes(b"not a model")
    with pytest.raises(InputError, match="bad.onnx: not readable as ONNX"):
        DescriptorEncoder(other, backend="onnxruntime", onnx_model=not_onnx)


def test_unknown_backend_and_absent_cuda_fail_with_one_line(tiny):
    with pytest.raises(InputError, match="backend must be one of"):
        DescriptorEncoder(tiny, backend="tensorrt")
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="CUDA is not available on this machine"):
            DescriptorEncoder(tiny, device="cuda", backend="onnxruntime")


def read_subset(folder, count):
    names = sorted(os.listdir(folder))[:count]
    images = [cv2.cvtColor(cv2.imread(str(folder / name)), cv2.COLOR_BGR2RGB) for name in names]
    frames = [int(name.split("-")[1].split(".")[0]) for name in names]
    return images, np.array(frames)


def test_nordland_descriptors_and_recall_are_the_same(cache):
    """The shipped model on the first 300 places of Nordland: a map built with one backend serves
    the other, descriptors agree to 1e-5 and Recall@1 is identical."""
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
    assert np.abs(descriptors["onnxruntime"] - descriptors["torch"]).max() <= 1e-5
    assert recalls["onnxruntime"] == recalls["torch"]
