"""Shared test set-up: real data paths, a quiet, single-threaded torch (2 shared cores), and one
private ONNX export cache for the whole run, so each model is exported once (the default backend
exports on first use)."""
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
NORDLAND = SHARED_DATA / "nordland64"
CIFAR10 = SHARED_DATA / "cifar10"


def require_dir(path: Path) -> Path:
    if not path.is_dir():
        pytest.skip(f"development data not found at {path} (see ../shared/data/README.md)")
    return path


@pytest.fixture
def nordland() -> Path:
    return require_dir(NORDLAND)


@pytest.fixture(scope="session", autouse=True)
def onnx_cache(tmp_path_factory):
    """A private user cache for the run (inherited by the commands tests start), never the real one."""
    with pytest.MonkeyPatch.context() as patch:
        directory = tmp_path_factory.mktemp("xdg_cache")
        patch.setenv("XDG_CACHE_HOME", str(directory))
        yield directory


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    from helpers import write_tiny_checkpoint

    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "student.safetensors")


@pytest.fixture(scope="session")
def tiny_onnx(tiny_checkpoint):
    """The tiny student exported once, into the run's cache, where the default backend finds it."""
    from vl2spike_ros.core.encoder import DescriptorEncoder

    return DescriptorEncoder(tiny_checkpoint, backend="onnxruntime").backend.path
