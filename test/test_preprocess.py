"""Fitting images of other aspect ratios to the model's input: crop, squeeze, letterbox; the encoder
and training use the same function."""
import cv2
import numpy as np
import pytest
import torch

from helpers import photo, write_tiny_checkpoint
from vl2spike_ros.core.encoder import DescriptorEncoder
from vl2spike_ros.core.preprocess import RESIZE_MODES, fit_to_input
from vl2spike_ros.errors import InputError
from vl2spike_ros.model import StudentConfig


def banded(height: int, width: int, band: int) -> np.ndarray:
    """Grey image with a red band at the top, a blue band at the bottom, green bands at the sides."""
    image = np.full((height, width, 3), 128, dtype=np.uint8)
    image[:band] = (255, 0, 0)
    image[-band:] = (0, 0, 255)
    image[band:-band, :band] = (0, 255, 0)
    image[band:-band, -band:] = (0, 255, 0)
    return image


def test_an_image_of_the_models_aspect_ratio_is_only_resized_in_every_mode():
    image = photo("astronaut", (320, 160))
    plain = cv2.resize(image, (64, 32), interpolation=cv2.INTER_AREA)
    for mode in RESIZE_MODES:
        assert np.array_equal(fit_to_input(image, 32, 64, mode), plain)


@pytest.mark.parametrize("height, width", [(480, 640), (720, 1280)])
def test_crop_keeps_the_centre_band_of_a_camera_frame(height, width):
    image = banded(height, width, band=40)
    cropped = fit_to_input(image, 32, 64, "crop")
    kept = round(width * 32 / 64)
    top = (height - kept) // 2
    assert np.array_equal(cropped, cv2.resize(image[top:top + kept], (64, 32), interpolation=cv2.INTER_AREA))
    assert not (cropped[..., 0] > 200).any() and not (cropped[..., 2] > 200).any()  # top and bottom cut


def test_squeeze_keeps_everything_and_distorts():
    image = banded(480, 640, band=40)
    squeezed = fit_to_input(image, 32, 64, "squeeze")
    assert (squeezed[0, :, 0] > 200).all() and (squeezed[-1, :, 2] > 200).all()
    assert np.array_equal(squeezed, cv2.resize(image, (64, 32), interpolation=cv2.INTER_AREA))


def test_letterbox_keeps_the_aspect_ratio_and_fills_with_the_mean_colour():
    image = banded(480, 640, band=40)
    boxed = fit_to_input(image, 32, 64, "letterbox")
    inner_width = round(640 * 32 / 480)            # 43 pixels wide, centred
    left = (64 - inner_width) // 2
    mean = image.reshape(-1, 3).mean(axis=0).round()
    assert (boxed[:, :left] == mean).all() and (boxed[:, left + inner_width:] == mean).all()
    inner = boxed[:, left:left + inner_width]
    assert (inner[0, 5:-5, 0] > 150).all() and (inner[-1, 5:-5, 2] > 150).all()  # nothing cut


def test_tall_and_grayscale_images_are_fitted_too():
    tall = photo("camera")[:, :200, 0]                  # 512x200, one channel
    for mode in RESIZE_MODES:
        assert fit_to_input(tall, 32, 64, mode).shape == (32, 64)
        assert fit_to_input(tall[:, :, None], 32, 64, mode).shape == (32, 64, 1)


def test_bad_mode_or_image_is_refused():
    with pytest.raises(InputError, match="resize mode 'stretch'"):
        fit_to_input(photo(), 32, 64, "stretch")
    with pytest.raises(InputError, match="non-empty"):
        fit_to_input(np.zeros((0, 10, 3), np.uint8), 32, 64)
    with pytest.raises(InputError, match="resize_mode"):
        StudentConfig(resize_mode="stretch")


def test_the_encoder_uses_the_checkpoints_resize_mode(tmp_path):
    frame = photo("astronaut", (640, 480))
    for mode in RESIZE_MODES:
        encoder = DescriptorEncoder(write_tiny_checkpoint(tmp_path / f"{mode}.safetensors", resize_mode=mode))
        expected = torch.from_numpy(fit_to_input(frame, 32, 64, mode)).permute(2, 0, 1).float()[None] / 255.0
        assert torch.equal(encoder.preprocess([frame]), expected)
