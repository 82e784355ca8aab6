"""Fitting a camera image of any aspect ratio to the model's fixed input size.

One function, used by the runtime encoder and by training alike, so what the student learns on is
what it sees at run time. Three modes:

- ``crop`` (default): the largest centred window of the model's aspect ratio, then resized. The
  scene keeps the geometry and pixel scale the student was trained on; for a 4:3 or 16:9 camera
  feeding a 2:1 model only sky and near ground are cut, which carry little about the place (and
  change most with weather and season).
- ``squeeze``: the whole frame resized to the input, distorting it (a 4:3 frame into a 2:1 input is
  compressed 1.5x vertically), so every structure has a shape the student never saw in training.
- ``letterbox``: the whole frame resized with its aspect ratio kept, padded with the mean colour;
  nothing is cut or distorted but the scene shrinks and part of the input carries no information.

For an image that already has the model's aspect ratio (Nordland, the demo route) the three are the
same plain resize.
"""
from __future__ import annotations

import cv2
import numpy as np

from vl2spike_ros.errors import InputError
from vl2spike_ros.model.config import DEFAULT_RESIZE_MODE, RESIZE_MODES


def fit_to_input(image: np.ndarray, height: int, width: int, mode: str = DEFAULT_RESIZE_MODE) -> np.ndarray:
    """uint8 [h, w] or [h, w, C] of any size -> the same layout at height x width (INTER_AREA)."""
    if mode not in RESIZE_MODES:
        raise InputError(f"resize mode {mode!r}: expected one of {RESIZE_MODES}")
    if image.ndim not in (2, 3) or image.shape[0] == 0 or image.shape[1] == 0:
        raise InputError(f"image of shape {image.shape}: expected a non-empty [H, W] or [H, W, C] array")
    source_height, source_width = image.shape[:2]
    if mode == "crop":
        # Integer arithmetic: a frame of exactly the model's aspect ratio is not cropped at all.
        if source_width * height > source_height * width:      # too wide: cut left and right
            kept = max(1, round(source_height * width / height))
            left = (source_width - kept) // 2
            image = image[:, left:left + kept]
        elif source_width * height < source_height * width:    # too tall: cut top and bottom
            kept = max(1, round(source_width * height / width))
            top = (source_height - kept) // 2
            image = image[top:top + kept]
        return _resize(image, height, width)
    if mode == "squeeze":
        return _resize(image, height, width)
    scale = min(height / source_height, width / source_width)
    inner_height = min(height, max(1, round(source_height * scale)))
    inner_width = min(width, max(1, round(source_width * scale)))
    inner = _resize(image, inner_height, inner_width)
    fill = image.reshape(-1, *image.shape[2:]).mean(axis=0).round().astype(image.dtype)
    canvas = np.empty((height, width, *image.shape[2:]), dtype=image.dtype)
    canvas[...] = fill
    top, left = (height - inner_height) // 2, (width - inner_width) // 2
    canvas[top:top + inner_height, left:left + inner_width] = inner
    return canvas


def _resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    resized = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
    return resized.reshape(height, width, *image.shape[2:])  # cv2 drops a trailing channel of 1
