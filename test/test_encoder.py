import cv2
import numpy as np
import pytest

from helpers import photo, write_tiny_checkpoint
from vl2spike_ros.core.encoder import DescriptorEncoder
from vl2spike_ros.errors import InputError


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    path = write_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "student.safetensors")
    return DescriptorEncoder(path, batch_size=3)


def test_descriptors_are_float32_unit_rows(encoder):
    images = [photo(name) for name in ("astronaut", "coffee", "chelsea", "rocket", "camera")]
    descriptors = encoder.encode(images)
    assert descriptors.dtype == np.float32
    assert descriptors.shape == (5, encoder.dim)
    np.testing.assert_allclose(np.linalg.norm(descriptors, axis=1), 1.0, atol=1e-5)


def test_batching_does_not_change_results(encoder):
    images = [photo(name, (200, 100)) for name in ("astronaut", "coffee", "chelsea", "rocket")]
    batched = encoder.encode(images)
    single = np.stack([encoder.encode_one(image) for image in images])
    np.testing.assert_allclose(batched, single, atol=1e-5)


def test_encodings_of_the_same_picture_agree(encoder):
    rgb = photo("coffee", (128, 64))
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])
    reference = encoder.encode_one(rgb)
    np.testing.assert_allclose(encoder.encode_one(bgr, "bgr8"), reference, atol=1e-5)
    np.testing.assert_allclose(encoder.encode_one(rgba), reference, atol=1e-5)
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    np.testing.assert_allclose(encoder.encode_one(gray), encoder.encode_one(np.dstack([gray] * 3)), atol=1e-5)


def test_any_image_size(encoder):
    for size in ((17, 9), (64, 32), (1024, 768)):
        assert encoder.encode_one(photo("astronaut", size)).shape == (encoder.dim,)


def test_empty_input_gives_empty_matrix(encoder):
    assert encoder.encode([]).shape == (0, encoder.dim)


def test_unavailable_cuda_is_a_clear_error(tmp_path):
    pytest.importorskip("torch")
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA; the error path needs a machine without it")
    path = write_tiny_checkpoint(tmp_path / "student.safetensors")
    with pytest.raises(InputError, match="CUDA is not available"):
        DescriptorEncoder(path, device="cuda")
