"""What changes between the drive that made the map and a later visit to the same places, as random
image transforms on float [B, C, H, W] batches in [0, 1] at the student's input size.

Viewpoint: the robot never stops at exactly the same spot (zoom, lateral and vertical shift, a small
roll), one affine warp. Condition: the light (darkness, gamma), the camera's response (low contrast,
per-channel gain), the season and weather (a colour cast, a blend towards a haze or snow tint, loss
of colour), focus and motion (blur) and sensor noise. Every transform draws from the generator it is
given, so one seed gives one set of views.

Plain batched torch rather than torchvision: its wheels pin another torch than the CPU build the
runtime installs, and each transform here is a few tensor operations on 64x32 images.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

MAX_ZOOM = 1.2            # a random crop of 83..100% of the frame
MAX_SHIFT = (0.10, 0.06)  # lateral and vertical, as a fraction of the frame (a lane or a step aside)
MAX_ROLL_DEGREES = 3.0


def _uniform(generator: torch.Generator, size: int, low: float, high: float) -> torch.Tensor:
    return low + (high - low) * torch.rand(size, generator=generator)


def _chosen(generator: torch.Generator, size: int, probability: float) -> torch.Tensor:
    return (torch.rand(size, generator=generator) < probability).float()


def change_viewpoint(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    size = batch.shape[0]
    scale = 1.0 / _uniform(generator, size, 1.0, MAX_ZOOM)
    angle = torch.deg2rad(_uniform(generator, size, -MAX_ROLL_DEGREES, MAX_ROLL_DEGREES))
    # Normalised coordinates: a shift of 2 is the whole frame.
    shift_x = 2.0 * _uniform(generator, size, -MAX_SHIFT[0], MAX_SHIFT[0])
    shift_y = 2.0 * _uniform(generator, size, -MAX_SHIFT[1], MAX_SHIFT[1])
    aspect = batch.shape[-1] / batch.shape[-2]
    cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
    # Rotation in pixel space: the normalised axes differ in length by the aspect ratio.
    theta = torch.stack([torch.stack([cos, -sin / aspect, shift_x], dim=1),
                         torch.stack([sin * aspect, cos, shift_y], dim=1)], dim=1)
    grid = F.affine_grid(theta, list(batch.shape), align_corners=False)
    return F.grid_sample(batch, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def change_colour(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Seasonal casts (per-channel gain, a blend towards a random tint) and loss of colour."""
    size, channels = batch.shape[:2]
    if channels == 1:
        return batch
    gains = 1.0 + 0.25 * (2.0 * torch.rand(size, channels, 1, 1, generator=generator) - 1.0)
    out = batch * gains
    tint = 0.6 + 0.4 * torch.rand(size, channels, 1, 1, generator=generator)  # haze, snow, dusk
    amount = (_uniform(generator, size, 0.0, 0.35) * _chosen(generator, size, 0.5)).view(-1, 1, 1, 1)
    out = out * (1.0 - amount) + tint * amount
    gray = out.mean(dim=1, keepdim=True)
    loss = (_uniform(generator, size, 0.0, 1.0) * _chosen(generator, size, 0.4)).view(-1, 1, 1, 1)
    return out * (1.0 - loss) + gray * loss


def change_exposure(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Darkness, gamma and low contrast."""
    size = batch.shape[0]
    dark = _chosen(generator, size, 0.4)
    level = (1.0 - dark + dark * _uniform(generator, size, 0.2, 0.7)).view(-1, 1, 1, 1)
    gamma = torch.exp(_uniform(generator, size, math.log(0.5), math.log(2.0))).view(-1, 1, 1, 1)
    out = (batch.clamp(0.0, 1.0) * level).clamp_min(1e-4).pow(gamma)
    flat = _chosen(generator, size, 0.5)
    contrast = (1.0 - flat + flat * _uniform(generator, size, 0.3, 0.9)).view(-1, 1, 1, 1)
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    return (out - mean) * contrast + mean


def blur(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A Gaussian of sigma 0..1.2 pixels on half the frames (a 5x5 kernel, per frame)."""
    size, channels = batch.shape[:2]
    sigma = _uniform(generator, size, 0.05, 1.2) * _chosen(generator, size, 0.5) + 0.05
    taps = torch.arange(-2, 3, dtype=batch.dtype)
    kernel = torch.exp(-0.5 * (taps[None, :] / sigma[:, None]) ** 2)
    kernel = kernel / kernel.sum(dim=1, keepdim=True)  # [B, 5]
    # One separable kernel per frame: frames become channels of a grouped convolution.
    flat = batch.reshape(1, size * channels, *batch.shape[2:])
    per_channel = kernel.repeat_interleave(channels, dim=0)
    flat = F.conv2d(F.pad(flat, (2, 2, 0, 0), mode="replicate"), per_channel[:, None, None, :], groups=size * channels)
    flat = F.conv2d(F.pad(flat, (0, 0, 2, 2), mode="replicate"), per_channel[:, None, :, None], groups=size * channels)
    return flat.reshape(batch.shape)


def add_noise(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    sigma = _uniform(generator, batch.shape[0], 0.0, 0.05).view(-1, 1, 1, 1)
    return batch + sigma * torch.randn(batch.shape, generator=generator)


def change_conditions(batch: torch.Tensor, generator: torch.Generator, viewpoint: bool = True) -> torch.Tensor:
    """Another visit to the places of `batch`: viewpoint (unless `viewpoint` is False), colour,
    exposure, blur and noise, each drawn per frame."""
    out = change_viewpoint(batch, generator) if viewpoint else batch
    out = change_colour(out, generator)
    out = change_exposure(out, generator)
    out = blur(out, generator)
    return add_noise(out, generator).clamp(0.0, 1.0)
