"""The import rules docs/layout.md describes, read from the source (no imports run):
no cycles between the package's modules, the node reaches the core only through the localizer, no
module uses another's private names, and the runtime never imports the training package."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "vl2spike_ros"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every vl2spike_ros module (or package) `path` imports, at top level or inside functions."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def import_graph() -> dict[str, set[str]]:
    raw = {module_name(path): imports_of(path) for path in PACKAGE.rglob("*.py")}
    return {module: {name for name in names if name in raw and name != module} for module, names in raw.items()}


def test_no_import_cycles():
    graph = import_graph()
    finished: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        for dependency in sorted(graph[module]):
            assert dependency not in path, "import cycle: " + " -> ".join(path[path.index(dependency):] + [dependency])
            if dependency not in finished:
                visit(dependency, path + [dependency])
        finished.add(module)

    for module in sorted(graph):
        visit(module, [module])


def test_node_reaches_the_core_only_through_the_localizer():
    core = {name for name in imports_of(PACKAGE / "ros" / "node.py") if name.startswith("vl2spike_ros.core")}
    assert core <= {"vl2spike_ros.core.localizer", "vl2spike_ros.core.localizer.Localizer",
                    "vl2spike_ros.core.localizer.MapUpdateError"}, core


def test_runtime_never_imports_training():
    for path in PACKAGE.rglob("*.py"):
        assert not any(name.split(".")[0] in ("training", "vl2spike_training") for name in imports_of(path)), path


def test_no_module_imports_a_private_name_of_another():
    # What one module needs from another is public and documented there (e.g. BagSequence.raw_messages).
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("vl2spike_ros"):
                private = [alias.name for alias in node.names if alias.name.startswith("_")]
                assert not private, f"{path.relative_to(PACKAGE.parent)} imports {private} from {node.module}"
