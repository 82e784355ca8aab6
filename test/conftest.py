"""Shared test set-up: real data paths and a quiet, single-threaded torch (2 shared cores)."""
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
