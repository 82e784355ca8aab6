"""Where the student runs, one module per backend, chosen by name.

A backend takes uint8 [B, H, W, C] RGB frames at the student's input size and returns float32
[B, D] unit-length descriptors; every backend gives a checkpoint's descriptors (same fingerprint),
so a map built with one is valid for the others. A backend is a module with a function
`create(request: BackendRequest) -> Backend`; adding one is that module plus its line in
REGISTERED. Modules are imported only when chosen, so a backend's runtime (onnxruntime,
TensorRT, ...) is needed only by those who use it.

"auto" (the default) is DEFAULT_BACKEND, the fastest, and FALLBACK_BACKEND, with one line saying
why, where the default cannot start (its runtime is missing, the export fails, no CUDA provider).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Protocol

import numpy as np

from vl2spike_ros.errors import InputError

if TYPE_CHECKING:
    import torch

    from vl2spike_ros.core.checkpoint import CheckpointInfo
    from vl2spike_ros.model import SpikformerStudent

REGISTERED: dict[str, str] = {
    "onnxruntime": "vl2spike_ros.core.backend_onnxruntime",
    "onnxruntime-int8": "vl2spike_ros.core.backend_onnxruntime_int8",
    "torch": "vl2spike_ros.core.backend_torch",
    "spikes": "vl2spike_ros.core.backend_spikes",
}
AUTO = "auto"
# 2-4x faster than torch on CPU; its descriptors equal torch's to 1e-5 but for the rare frame where an
# integer spike sits within float error of its rounding boundary (test_onnx_backend.py bounds those).
DEFAULT_BACKEND = "onnxruntime"
FALLBACK_BACKEND = "torch"


class Backend(Protocol):
    name: str

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        """uint8 [B, H, W, C] RGB frames at the input size -> float32 [B, D] unit-length descriptors."""


@dataclass(frozen=True)
class BackendRequest:
    """What a backend is made from. `student` is on the CPU: a backend that runs it elsewhere moves it."""

    student: SpikformerStudent
    info: CheckpointInfo
    device: torch.device
    model_file: Path | None = None  # a model the backend runs instead of its own (e.g. an exported .onnx)
    threads: int | None = None      # CPU threads; None: torch's thread count


class BackendUnavailable(Exception):
    """The backend cannot run here (its runtime is missing, its export failed): "auto" falls back."""


def backend_names() -> tuple[str, ...]:
    return (AUTO, *REGISTERED)


def torch_device(device: str) -> torch.device:
    """A torch device, refused with one line where it does not exist on this machine."""
    import torch

    try:
        parsed = torch.device(device)
    except RuntimeError as error:
        raise InputError(f"device {device!r}: {error}") from None
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {device!r}: CUDA is not available on this machine; use 'cpu'")
    if parsed.type not in ("cpu", "cuda"):
        raise InputError(f"device {device!r}: expected 'cpu' or 'cuda[:N]'")
    return parsed


def _create(name: str, request: BackendRequest) -> Backend:
    try:
        return importlib.import_module(REGISTERED[name]).create(request)
    except ImportError as error:
        raise BackendUnavailable(f"{error}") from None


def make_backend(name: str, request: BackendRequest, report: Callable[[str], None]) -> Backend:
    """The backend `name`; for "auto", the default or else the fallback, telling `report` why."""
    if name not in backend_names():
        raise InputError(f"backend must be one of {backend_names()}, got {name!r}")
    if name == AUTO and request.model_file is None:
        try:
            return _create(DEFAULT_BACKEND, request)
        except BackendUnavailable as error:
            report(f"backend {DEFAULT_BACKEND} unavailable ({error}); using {FALLBACK_BACKEND}")
            return _create(FALLBACK_BACKEND, request)
    try:
        return _create(DEFAULT_BACKEND if name == AUTO else name, request)
    except BackendUnavailable as error:
        raise InputError(f"backend {name}: cannot run here ({error})") from None
