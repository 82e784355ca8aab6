"""Reading safetensors files (weights without pickle) with one clear error for a bad file."""
from __future__ import annotations

import os

import torch
from safetensors import safe_open

from vl2spike_ros.errors import InputError


def read_safetensors(path: str | os.PathLike[str], label: str,
                     expected: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata); InputError naming `label`, `path` and what was `expected` when the file is
    truncated or foreign (safetensors raises several exception types for those)."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    except Exception as error:
        detail = str(error).splitlines()[0] if str(error) else "no detail"
        raise InputError(f"{label} {path}: unreadable ({type(error).__name__}: {detail}); {expected}") from None
    return tensors, metadata
