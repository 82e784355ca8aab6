"""Save and load a student: weights in safetensors (no pickle), config and provenance as JSON.

One file: safetensors keeps a string->string metadata header beside the tensors, so config,
provenance and fingerprint travel with the weights and cannot be separated from them.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch
from safetensors.torch import save_file

from vl2spike_ros.errors import InputError
from vl2spike_ros.core.atomic_files import atomic_path
from vl2spike_ros.model import SpikformerStudent, StudentConfig
from vl2spike_ros.core.tensor_files import read_safetensors

CHECKPOINT_FORMAT = "vl2spike-student"
CHECKPOINT_FORMAT_VERSION = 1
DEFAULT_CHECKPOINT_NAME = "default_student.safetensors"


@dataclass(frozen=True)
class CheckpointInfo:
    path: Path
    config: StudentConfig
    fingerprint: str
    provenance: dict


def fingerprint_of(config_json: str, state: dict[str, torch.Tensor]) -> str:
    """sha256 over the config JSON as stored and every tensor's name, dtype, shape and bytes.

    The stored JSON, not a re-serialised config, so that a config field added later (with a
    default) does not change the fingerprint of existing checkpoints and their maps.
    """
    digest = hashlib.sha256(config_json.encode())
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def default_checkpoint_path() -> Path:
    """The student shipped inside the package (`vl2spike_ros/models/`)."""
    return Path(str(resources.files("vl2spike_ros") / "models" / DEFAULT_CHECKPOINT_NAME))


def resolve_checkpoint_path(path: str | Path | None) -> Path:
    if path is None or str(path) == "":
        shipped = default_checkpoint_path()
        if not shipped.is_file():
            raise InputError(f"no shipped student model at {shipped}; pass --checkpoint "
                             "(`vl2spike init-checkpoint --out FILE` writes an untrained one)")
        return shipped
    return Path(path)


def save_checkpoint(path: str | Path, model: SpikformerStudent, provenance: dict | None = None) -> str:
    """Writes atomically; returns the fingerprint."""
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}
    config_json = model.config.to_json()
    fingerprint = fingerprint_of(config_json, state)
    metadata = {
        "format": CHECKPOINT_FORMAT,
        "format_version": str(CHECKPOINT_FORMAT_VERSION),
        "config": config_json,
        "provenance": json.dumps(provenance or {}, sort_keys=True),
        "fingerprint": fingerprint,
    }
    path = Path(path)
    if path.is_dir():
        raise InputError(f"checkpoint output {path}: is a directory; expected a file path such as "
                         f"{path / 'student.safetensors'}")
    if not path.parent.is_dir():
        raise InputError(f"checkpoint output {path}: its folder {path.parent} does not exist")
    with atomic_path(path) as temporary:
        save_file(state, str(temporary), metadata=metadata)
    return fingerprint


def read_checkpoint(path: str | Path | None) -> tuple[CheckpointInfo, dict[str, torch.Tensor]]:
    """Reads and verifies a checkpoint without building a model."""
    path = resolve_checkpoint_path(path)
    if not path.is_file():
        raise InputError(f"checkpoint {path}: no such file")
    expected = f"a {CHECKPOINT_FORMAT} safetensors file written by vl2spike"
    state, metadata = read_safetensors(path, "checkpoint", f"expected {expected}")
    if metadata.get("format") != CHECKPOINT_FORMAT:
        raise InputError(f"checkpoint {path}: format {metadata.get('format')!r:.60}; expected {expected}")
    if metadata.get("format_version") != str(CHECKPOINT_FORMAT_VERSION):
        raise InputError(f"checkpoint {path}: format version {metadata.get('format_version')!r:.60}; "
                         f"this vl2spike reads version {CHECKPOINT_FORMAT_VERSION}")
    try:
        config = StudentConfig.from_dict(json.loads(metadata["config"]))
        provenance = json.loads(metadata.get("provenance", "{}"))
    except InputError as error:
        raise InputError(f"checkpoint {path}: {error}") from None
    except (KeyError, ValueError, TypeError) as error:
        raise InputError(f"checkpoint {path}: config metadata unreadable ({str(error)[:200]})") from None
    except RecursionError:
        raise InputError(f"checkpoint {path}: config metadata unreadable (JSON nested too deeply)") from None
    fingerprint = fingerprint_of(metadata["config"], state)
    if fingerprint != metadata.get("fingerprint"):
        raise InputError(f"checkpoint {path}: contents do not match its recorded fingerprint "
                         "(modified or corrupted file)")
    return CheckpointInfo(path=path, config=config, fingerprint=fingerprint, provenance=provenance), state


def load_checkpoint(path: str | Path | None) -> tuple[SpikformerStudent, CheckpointInfo]:
    """Builds the student from a checkpoint (None: the shipped model), in eval mode."""
    info, state = read_checkpoint(path)
    model = SpikformerStudent(info.config)
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as error:  # a tensor whose shape disagrees with the config
        raise InputError(f"checkpoint {info.path}: weights do not fit its config "
                         f"({str(error).splitlines()[-1].strip()})") from None
    if result.missing_keys or result.unexpected_keys:
        raise InputError(f"checkpoint {info.path}: weights do not fit its config "
                         f"(missing {result.missing_keys[:3]}, unexpected {result.unexpected_keys[:3]})")
    return model.eval(), info
