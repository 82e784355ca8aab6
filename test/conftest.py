"""Shared test set-up: real data paths, a quiet, single-threaded torch (2 shared cores), one private
ONNX export cache for the whole run, so each model is exported once (the default backend exports on
first use), and modules that import the training package skipped with the reason where it is absent."""
import ast
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
NORDLAND = SHARED_DATA / "nordland64"
CIFAR10 = SHARED_DATA / "cifar10"


class _SkippedModule(pytest.Module):
    """A test module reported as skipped, with the reason, instead of being imported."""

    def collect(self):
        pytest.skip(self.skip_reason)


def _imports_training_at_the_top(path: Path) -> bool:
    tree = ast.parse(path.read_text())
    return any(isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "vl2spike_training"
               or isinstance(node, ast.Import) and any(a.name.split(".")[0] == "vl2spike_training" for a in node.names)
               for node in tree.body)


@pytest.hookimpl(tryfirst=True)
def pytest_pycollect_makemodule(module_path, parent):
    # Before launch_testing's plugin, which imports every module to look for a launch test, outside
    # pytest's handling of collection errors: an ImportError, or a module-level skip, there would end
    # the whole run, the launch tests with it.
    from helpers import TRAINING_MISSING

    if TRAINING_MISSING and module_path.name.startswith("test_") and _imports_training_at_the_top(module_path):
        module = _SkippedModule.from_parent(parent, path=module_path)
        module.skip_reason = f"{module_path.name} {TRAINING_MISSING}"
        return module
    return None


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
