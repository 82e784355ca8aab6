"""The test folder as pytest sees it: every file it collects (test_*.py) holds tests, so shared
helpers live in modules it does not collect (helpers.py, node_fixtures.py, training_fixtures.py)."""
import ast
import importlib
import subprocess
import sys
from pathlib import Path

TEST_FOLDER = Path(__file__).resolve().parent


def defines_tests(path: Path) -> bool:
    """A test function or Test class anywhere in the module (test_launch.py defines its own under a
    condition: launch_testing present or not)."""
    return any(isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name.lower().startswith("test")
               for node in ast.walk(ast.parse(path.read_text())))


def test_every_collected_module_holds_tests():
    helpers_named_as_tests = [path.name for path in sorted(TEST_FOLDER.glob("test_*.py")) if not defines_tests(path)]
    assert not helpers_named_as_tests, f"modules pytest collects but that hold no test: {helpers_named_as_tests}"


def test_the_launch_test_finds_its_sibling_modules_and_names_that_exist():
    # `launch_test test/test_launch.py` runs without PYTHONPATH=test: the file puts its own folder on
    # sys.path before it imports a sibling. It runs only where launch_testing imports, so what it
    # imports from this package is checked here as well.
    siblings = {path.stem for path in TEST_FOLDER.glob("*.py")}
    source = (TEST_FOLDER / "test_launch.py").read_text()
    tree = ast.parse(source)
    path_line = source[:source.index("sys.path.insert(0, str(Path(__file__).resolve().parent))")].count("\n") + 1
    sibling_imports = [node for node in ast.walk(tree) if isinstance(node, ast.Import)
                       and any(alias.name.split(".")[0] in siblings for alias in node.names)]
    sibling_imports += [node for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                        and (node.module or "").split(".")[0] in siblings]
    assert all(node.lineno > path_line for node in sibling_imports), [node.lineno for node in sibling_imports]
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("vl2spike_ros"):
            module = importlib.import_module(node.module)
            for alias in node.names:
                assert hasattr(module, alias.name), f"test_launch.py: {node.module} has no {alias.name}"


def test_without_the_training_package_the_folder_collects_and_what_needs_it_skips_saying_why():
    """A colcon install on a ROS 2 machine carries the runtime only: pytest over this folder there
    (`colcon test`, or the launch tests) must collect every module, the launch tests among them, and
    skip what needs vl2spike_training with the reason, not stop at an ImportError."""
    hide_training = ("import sys; sys.modules['vl2spike_training'] = None; import pytest; "
                     "sys.exit(pytest.main(sys.argv[1:]))")
    result = subprocess.run([sys.executable, "-c", hide_training, "--collect-only", "-q", "-rs", "-p", "no:cacheprovider",
                             str(TEST_FOLDER)], cwd=TEST_FOLDER.parent, capture_output=True, text=True, timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    needs_training = ["test_distributed_training.py", "test_training_pipeline.py", "test_training_protocol.py"]
    skipped = [line for line in output.splitlines() if line.startswith("SKIPPED")]
    assert needs_training and all(any(name in line and "needs the training package" in line for line in skipped)
                                  for name in needs_training), (needs_training, skipped)
    assert "test_launch.py" in output
