"""Images of any size and common encoding in, L2-normalised float32 descriptors out."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable, Iterable, Sequence

import cv2
import numpy as np
import torch
from tqdm import tqdm

from vl2spike_ros.core.backends import AUTO, BackendRequest, make_backend, torch_device
from vl2spike_ros.core.checkpoint import load_checkpoint
from vl2spike_ros.errors import InputError
from vl2spike_ros.core.images import to_rgb
from vl2spike_ros.core.preprocess import fit_to_input
from vl2spike_ros.model import StudentConfig


def resize_for_student(rgb: np.ndarray, config: StudentConfig) -> np.ndarray:
    """RGB uint8 of any size -> uint8 [H, W, C] at the student's input size; training uses it too,
    so what the student learns on is what it sees at run time."""
    resized = fit_to_input(rgb, config.image_height, config.image_width, config.resize_mode)
    if config.in_channels == 1:
        resized = cv2.cvtColor(resized, cv2.COLOR_RGB2GRAY)[:, :, None]
    return resized


def print_to_stderr(line: str) -> None:
    print(line, file=sys.stderr)


class DescriptorEncoder:
    """Loads a student checkpoint (None: the shipped model) and encodes batches of images.

    `backend` names where the student runs (see `core.backends`): "auto" (ONNX Runtime, exported on
    first use into the user cache, or else PyTorch, telling `report` why), "onnxruntime" (or
    `onnx_model`, an exported model) or "torch", on `device`.
    """

    def __init__(self, checkpoint: str | Path | None = None, device: str = "cpu",
                 batch_size: int = 32, backend: str = AUTO,
                 onnx_model: str | Path | None = None, threads: int | None = None,
                 report: Callable[[str], None] = print_to_stderr) -> None:
        if batch_size <= 0:
            raise InputError(f"batch_size must be positive, got {batch_size}")
        self.device = torch_device(device)
        self.model, self.info = load_checkpoint(checkpoint)
        self.config = self.info.config
        self.batch_size = batch_size
        request = BackendRequest(self.model, self.info, self.device,
                                 None if onnx_model is None else Path(onnx_model), threads)
        self.backend = make_backend(backend, request, report)

    @property
    def model_device(self) -> torch.device:
        """Where the PyTorch student is (the device with backend torch, else the CPU), for energy estimates."""
        return next(self.model.parameters()).device

    @property
    def fingerprint(self) -> str:
        return self.info.fingerprint

    @property
    def dim(self) -> int:
        return self.config.descriptor_dim

    def frame(self, image: np.ndarray, encoding: str | None = None) -> np.ndarray:
        """An RGB/BGR/gray/RGBA uint8 (or mono16) array of any size -> uint8 [H, W, C] at the input size."""
        return resize_for_student(to_rgb(np.asarray(image), encoding), self.config)

    def frames(self, images: Sequence[np.ndarray], encoding: str | None = None) -> np.ndarray:
        """Images as `frame` takes them -> uint8 [B, H, W, C] at the input size."""
        return np.stack([self.frame(image, encoding) for image in images])

    def preprocess(self, images: Sequence[np.ndarray], encoding: str | None = None) -> torch.Tensor:
        """Images as `frames` takes them -> float [B, C, H, W] in [0, 1] (what the student sees)."""
        return torch.from_numpy(self.frames(images, encoding)).permute(0, 3, 1, 2).float() / 255.0

    def encode(self, images: Iterable[np.ndarray], encoding: str | None = None,
               progress: bool = False, total: int | None = None,
               description: str = "encoding") -> np.ndarray:
        """Returns float32 [N, D]; rows are unit length.

        Each image is resized to the input size as it arrives and the full-size one dropped, so memory
        depends on the batch size times the input size, not on the size of the images.
        """
        chunks: list[np.ndarray] = []
        pending: list[np.ndarray] = []
        bar = tqdm(total=total, unit="img", desc=description, disable=not progress)

        def flush() -> None:
            chunks.append(self.backend(np.stack(pending)))
            bar.update(len(pending))
            pending.clear()

        for image in images:
            pending.append(self.frame(image, encoding))
            del image
            if len(pending) == self.batch_size:
                flush()
        if pending:
            flush()
        bar.close()
        if not chunks:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.ascontiguousarray(np.concatenate(chunks), dtype=np.float32)

    def encode_one(self, image: np.ndarray, encoding: str | None = None) -> np.ndarray:
        return self.encode([image], encoding)[0]

    def encode_frames(self, frames: np.ndarray) -> np.ndarray:
        """uint8 [B, H, W, C] already at the input size (`frames`) -> float32 [B, D]: the student
        alone, so a caller can time resizing and encoding apart."""
        return self.backend(frames)
