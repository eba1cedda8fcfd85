"""The package's layers: no module imports a higher layer, and no two subpackages import each
other. The flow reads bottom-up: errors -> wire -> acs -> audio -> call -> processors, then the
daemon around them (config, ops, server), then the tools (testing, simulate) and the cli."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "gateway"

# Lower numbers are lower layers. A module may import its own layer and the ones below.
LAYERS = {
    "errors": 0,
    "wire": 1,
    "acs": 2,
    "packets": 2,
    "audio": 3,
    "call": 4,
    "processors": 5,
    "config": 6,
    "config_reference": 6,
    "config_settings": 6,
    "logs": 6,
    "ops": 7,
    "server": 8,
    "control": 8,
    "records": 8,
    "testing": 9,
    "simulate": 9,
    "cli": 10,
    "show": 10,
    "__main__": 10,
    "__init__": 10,
}


def _part(module: str) -> str:
    """The top-level part of `gateway.X.Y` (X), or the module itself for `gateway.X`."""
    if not module.count("."):
        return "__init__"
    name = module.split(".")[1]
    exists = (PACKAGE / name).is_dir() or (PACKAGE / f"{name}.py").is_file()
    return name if exists else "__init__"  # a name defined in gateway/__init__.py


def _imports(path: Path) -> set[str]:
    """Absolute gateway modules that `path` imports (relative imports resolved)."""
    relative = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(relative.parts)
    package = parts[:-1] if parts[-1] != "__init__" else parts[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if module == "gateway":  # from gateway import x, y: each name is a module
                found.update(f"gateway.{alias.name}" for alias in node.names)
            elif module.startswith("gateway"):
                found.add(module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("gateway."))
    return found


def _graph() -> dict[str, dict[str, set[str]]]:
    """part -> imported part -> the files that import it."""
    graph: dict[str, dict[str, set[str]]] = {}
    for path in PACKAGE.rglob("*.py"):
        module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        here = _part(module if not module.endswith(".__init__") else module[: -len(".__init__")])
        if path.parent == PACKAGE and path.name == "__init__.py":
            here = "__init__"
        for imported in _imports(path):
            there = _part(imported)
            if there != here:
                graph.setdefault(here, {}).setdefault(there, set()).add(path.name)
    return graph


def test_every_part_has_a_layer() -> None:
    parts = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir()}
    parts -= {"py", "__pycache__", "py.typed"}
    unknown = {p for p in parts if not p.startswith(".") and p not in LAYERS and p != "py"}
    assert not unknown, f"give these a layer in LAYERS: {sorted(unknown)}"


def test_no_module_imports_a_higher_layer() -> None:
    upward = [
        f"{here} ({', '.join(sorted(files))}) imports {there}"
        for here, targets in _graph().items()
        for there, files in targets.items()
        if LAYERS[there] > LAYERS[here]
    ]
    assert upward == []


def test_no_two_parts_import_each_other() -> None:
    graph = _graph()
    cycles = sorted(
        f"{a} <-> {b}" for a in graph for b in graph[a] if a < b and a in graph.get(b, {})
    )
    assert cycles == []
