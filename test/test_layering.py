"""The import rules docs/layout.md describes, read from the source (no imports run): imports only
go down the layers (and so have no cycles between layers), no cycles between the package's modules,
the node reaches the core only through the localizer, no module uses another's private names, and
the runtime never imports the training package."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "vl2spike_ros"
# Bottom first: a module may import from its own layer and the ones below, never from one above.
LAYERS = (
    ("errors", "cli_arguments", "model", "core"),
    ("sources",),
    ("evaluation",),
    ("adaptation",),
    ("ros",),
    ("demo", "benchmark"),
    ("cli",),
)


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


def layer_of(module: str) -> int:
    top = module.split(".")[1] if "." in module else ""
    if top == "":
        return 0  # the package's own __init__
    for number, names in enumerate(LAYERS):
        if top in names:
            return number
    raise AssertionError(f"{module} is in no layer: add vl2spike_ros.{top} to LAYERS")


def test_imports_only_go_down_the_layers():
    upward = [f"{module} ({LAYERS[layer_of(module)][0]}) imports {dependency} ({LAYERS[layer_of(dependency)][0]})"
              for module, dependencies in sorted(import_graph().items()) for dependency in sorted(dependencies)
              if layer_of(dependency) > layer_of(module)]
    assert not upward, "imports that go up the layers: " + "; ".join(upward)


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
