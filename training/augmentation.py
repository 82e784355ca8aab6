"""Training-time image augmentation on float [B, C, H, W] batches in [0, 1], in plain torch.

torchvision is not used: its wheels pin a different torch than the CPU build installed here, and
every operation below is a few batched tensor ops on 64x32 images (cheap beside the student).

Policies (data.augment_policy):
- ``shift``: a small reflect-padded translation and global contrast/brightness jitter.
- ``strong``: what changes between two passes of a train over new track: the camera's position and
  attitude (random resized crop, lateral shift, small rotation and perspective, all one projective
  warp), the light and the camera's response (per-channel gain, gamma, contrast, saturation),
  focus and motion (blur), sensor noise, and occluders (random erasing).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from vl2spike_ros.errors import InputError

AUGMENT_POLICIES = ("shift", "strong")


def augment(batch: torch.Tensor, generator: torch.Generator, policy: str = "shift",
            max_shift: int = 3) -> torch.Tensor:
    if policy == "shift":
        return shift_and_jitter(batch, generator, max_shift)
    if policy == "strong":
        return strong_augment(batch, generator)
    raise InputError(f"augmentation policy {policy!r}: expected one of {AUGMENT_POLICIES}")


def shift_and_jitter(batch: torch.Tensor, generator: torch.Generator, max_shift: int = 3) -> torch.Tensor:
    """Random translation (reflect-padded) and contrast/brightness.

    A camera never stops at exactly the same spot twice, hence the shifts; light changes with
    weather and season, hence the photometric jitter (patch normalisation removes much of it, but
    not the clipping it causes).
    """
    size_b, _, height, width = batch.shape
    padded = F.pad(batch, (max_shift,) * 4, mode="reflect")
    offsets = torch.randint(0, 2 * max_shift + 1, (size_b, 2), generator=generator)
    shifted = torch.stack([
        padded[i, :, dy:dy + height, dx:dx + width] for i, (dy, dx) in enumerate(offsets.tolist())
    ])
    contrast = 1.0 + (_uniform(generator, size_b, 1, 1, 1) - 0.5) * 0.6
    brightness = (_uniform(generator, size_b, 1, 1, 1) - 0.5) * 0.3
    mean = shifted.mean(dim=(1, 2, 3), keepdim=True)
    return ((shifted - mean) * contrast + mean + brightness).clamp(0.0, 1.0)


def _uniform(generator: torch.Generator, *shape: int, low: float = 0.0, high: float = 1.0) -> torch.Tensor:
    return low + (high - low) * torch.rand(*shape, generator=generator)


def random_homographies(size_b: int, generator: torch.Generator) -> torch.Tensor:
    """[B, 3, 3] maps from output to input coordinates (normalised to [-1, 1]).

    Zoom 1.0-1.25 with a little aspect change (random resized crop: the view from a slightly other
    distance), lateral shift up to 12% of the width and vertical up to 6% of the height, rotation
    up to 4 degrees (track cant, camera mount), perspective up to 0.08 (camera yaw and pitch).
    """
    zoom = _uniform(generator, size_b, low=0.8, high=1.0)          # input span: zoom in by up to 1.25
    aspect = torch.exp(_uniform(generator, size_b, low=-0.08, high=0.08))
    angle = _uniform(generator, size_b, low=-4.0, high=4.0) * math.pi / 180.0
    shift_x = _uniform(generator, size_b, low=-0.12, high=0.12) * 2.0
    shift_y = _uniform(generator, size_b, low=-0.06, high=0.06) * 2.0
    perspective = _uniform(generator, size_b, 2, low=-0.08, high=0.08)
    cos, sin = torch.cos(angle), torch.sin(angle)
    matrix = torch.zeros(size_b, 3, 3)
    matrix[:, 0, 0] = zoom * aspect * cos
    matrix[:, 0, 1] = -zoom * sin
    matrix[:, 1, 0] = zoom * aspect * sin
    matrix[:, 1, 1] = zoom * cos
    matrix[:, 0, 2] = shift_x
    matrix[:, 1, 2] = shift_y
    matrix[:, 2, :2] = perspective
    matrix[:, 2, 2] = 1.0
    return matrix


def warp(batch: torch.Tensor, homographies: torch.Tensor) -> torch.Tensor:
    """Samples each image through its homography (bilinear, reflection at the borders)."""
    size_b, _, height, width = batch.shape
    ys = torch.linspace(-1 + 1 / height, 1 - 1 / height, height)
    xs = torch.linspace(-1 + 1 / width, 1 - 1 / width, width)
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    points = torch.stack([grid_x, grid_y, torch.ones_like(grid_x)], dim=-1).reshape(1, -1, 3)
    mapped = points @ homographies.transpose(1, 2)                       # [B, H*W, 3]
    mapped = mapped[..., :2] / mapped[..., 2:].clamp(min=1e-3)
    return F.grid_sample(batch, mapped.reshape(size_b, height, width, 2), mode="bilinear",
                         padding_mode="reflection", align_corners=False)


def photometric(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Per-image gain per channel (colour cast), saturation, contrast, brightness and gamma."""
    size_b, channels = batch.shape[:2]
    gain = _uniform(generator, size_b, channels, 1, 1, low=0.85, high=1.15)
    images = batch * gain
    if channels == 3:
        gray = images.mean(dim=1, keepdim=True)
        saturation = _uniform(generator, size_b, 1, 1, 1, low=0.5, high=1.5)
        images = gray + (images - gray) * saturation
    mean = images.mean(dim=(1, 2, 3), keepdim=True)
    contrast = _uniform(generator, size_b, 1, 1, 1, low=0.6, high=1.4)
    brightness = _uniform(generator, size_b, 1, 1, 1, low=-0.15, high=0.15)
    images = ((images - mean) * contrast + mean + brightness).clamp(0.0, 1.0)
    gamma = torch.exp(_uniform(generator, size_b, 1, 1, 1, low=-0.4, high=0.4))
    return images.clamp(min=1e-4) ** gamma


def blur(batch: torch.Tensor, generator: torch.Generator, probability: float = 0.3) -> torch.Tensor:
    """Blends each chosen image with its 3x3 Gaussian blur by a random amount (defocus, motion)."""
    size_b, channels = batch.shape[:2]
    kernel_1d = torch.tensor([0.25, 0.5, 0.25])
    kernel = (kernel_1d[:, None] * kernel_1d[None, :]).expand(channels, 1, 3, 3)
    blurred = F.conv2d(F.pad(batch, (1, 1, 1, 1), mode="replicate"), kernel, groups=channels)
    amount = _uniform(generator, size_b, 1, 1, 1) * (_uniform(generator, size_b, 1, 1, 1) < probability)
    return batch + (blurred - batch) * amount


def erase(batch: torch.Tensor, generator: torch.Generator, probability: float = 0.4) -> torch.Tensor:
    """Random erasing: one rectangle of 2-12% of the image per chosen image, filled with noise."""
    size_b, channels, height, width = batch.shape
    area = _uniform(generator, size_b, low=0.02, high=0.12) * height * width
    ratio = torch.exp(_uniform(generator, size_b, low=math.log(0.5), high=math.log(2.0)))
    box_h = (area / ratio).sqrt().clamp(1, height).long()
    box_w = (area * ratio).sqrt().clamp(1, width).long()
    top = (_uniform(generator, size_b) * (height - box_h + 1)).long()
    left = (_uniform(generator, size_b) * (width - box_w + 1)).long()
    rows = torch.arange(height)[None, :, None]
    cols = torch.arange(width)[None, None, :]
    inside = ((rows >= top[:, None, None]) & (rows < (top + box_h)[:, None, None])
              & (cols >= left[:, None, None]) & (cols < (left + box_w)[:, None, None]))
    chosen = _uniform(generator, size_b) < probability
    mask = (inside & chosen[:, None, None])[:, None]
    fill = _uniform(generator, size_b, channels, height, width)
    return torch.where(mask, fill, batch)


def strong_augment(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    images = warp(batch, random_homographies(batch.shape[0], generator))
    images = photometric(images, generator)
    images = blur(images, generator)
    noise = _uniform(generator, batch.shape[0], 1, 1, 1, high=0.03) * torch.randn(images.shape, generator=generator)
    images = (images + noise).clamp(0.0, 1.0)
    return erase(images, generator)
