"""The package's shape, checked: subpackages in layers that import only downwards, no import circles,
and classes and functions small enough to read in one sitting."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parent.parent / "datasette_imgsearch"
# Bottom to top. A module imports from its own room or from rooms on lower floors only.
LAYERS = [
    {"errors", "lru"},
    {"images"},
    {"catalog"},
    {"models"},
    {"vectors", "text"},
    {"search", "duplicates"},
    {"build", "settings", "status"},
    {"sql", "web"},
    {"cli"},
    {"__init__", "__main__"},
]
MAX_CLASS_LINES = 250
MAX_FUNCTION_LINES = 50


def modules() -> dict[str, ast.Module]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = ast.parse(path.read_text(), str(path))
    return found


def room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def floor(module: str) -> int:
    return next(number for number, rooms in enumerate(LAYERS) if room(module) in rooms)


def imports(module: str, tree: ast.Module) -> set[str]:
    """The package's modules that ``module`` imports, wherever in it (functions included)."""
    found = set()
    package = module if module.count(".") == 0 else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            if base.split(".")[0] == "datasette_imgsearch":
                found.add(base)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.split(".")[0] == "datasette_imgsearch")
    return found - {module}


TREES = modules()


def test_every_room_has_a_floor() -> None:
    assert {room(module) for module in TREES} <= set().union(*LAYERS)


@pytest.mark.parametrize("module", sorted(TREES))
def test_imports_go_down_or_stay_in_the_room(module: str) -> None:
    upward = [name for name in imports(module, TREES[module])
              if floor(name) > floor(module) or (floor(name) == floor(module) and room(name) != room(module))]
    assert upward == [], f"{module} imports from a higher floor or a peer room"


def test_there_are_no_import_circles() -> None:
    graph = {module: {name for name in imports(module, tree) if name in TREES} for module, tree in TREES.items()}
    visiting: list[str] = []
    done: set[str] = set()

    def visit(module: str) -> None:
        if module in visiting:
            raise AssertionError("import circle: " + " -> ".join(visiting[visiting.index(module):] + [module]))
        if module in done:
            return
        visiting.append(module)
        for name in sorted(graph[module]):
            visit(name)
        visiting.pop()
        done.add(module)

    for module in sorted(graph):
        visit(module)


def sizes() -> list[tuple[str, str, int]]:
    found = []
    for module, tree in TREES.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                found.append(("class", f"{module}.{node.name}", node.end_lineno - node.lineno + 1))
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                found.append(("function", f"{module}.{node.name}", node.end_lineno - node.lineno + 1))
    return found


def test_no_class_is_longer_than_250_lines() -> None:
    assert [(name, lines) for kind, name, lines in sizes() if kind == "class" and lines > MAX_CLASS_LINES] == []


def test_no_function_is_longer_than_50_lines() -> None:
    assert [(name, lines) for kind, name, lines in sizes() if kind == "function" and lines > MAX_FUNCTION_LINES] == []
