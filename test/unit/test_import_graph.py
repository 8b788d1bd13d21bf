"""The import graph of vlm_ros, read with ast (every import, also those inside functions): no cycle between
modules or between parts, and the runtime imports no development code."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO

# The one declaration of the runtime / development split. These modules and packages are development code:
# the embedded model's scenes, training data, construction, training and evaluation, test fixtures and fault
# injection, and the tools (benchmarks, bags, replay, regression harness, demo: user-facing commands, imported by
# nothing in the runtime). Everything else in vlm_ros is runtime and must not import them.
DEVELOPMENT = (
    "vlm_ros.embedded.build",
    "vlm_ros.embedded.evaluate",
    "vlm_ros.embedded.motion",
    "vlm_ros.embedded.scenes",
    "vlm_ros.embedded.tasks",
    "vlm_ros.embedded.train",
    "vlm_ros.testing",
    "vlm_ros.tools",
)

Edges = dict[tuple[str, str], str]  # (importer, imported) -> "file:line" of the first such import


def module_files(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of the package at `root` (a package is its __init__)."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def imported_modules(module: str, path: Path, known: set[str]) -> list[tuple[str, int]]:
    """(module, line) for each import in `path` of a module in `known` (the package's own)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from . / .. import
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            # `from a import b` imports the module a.b when there is one, else a name of module a
            found += [(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base, node.lineno)
                      for alias in node.names]
    return [(name, line) for name, line in found if name in known]


def module_graph(root: Path) -> Edges:
    files = module_files(root)
    edges: Edges = {}
    for module, path in files.items():
        for target, line in imported_modules(module, path, set(files)):
            if target != module:
                edges.setdefault((module, target), f"{path.relative_to(root.parent)}:{line}")
    return edges


def is_development(module: str) -> bool:
    return any(module == d or module.startswith(d + ".") for d in DEVELOPMENT)


def part(module: str) -> str:
    """The part a module belongs to: its DEVELOPMENT entry, else its sub-package or top-level module."""
    for d in DEVELOPMENT:
        if module == d or module.startswith(d + "."):
            return d
    return ".".join(module.split(".")[:2])


def part_graph(edges: Edges) -> Edges:
    out: Edges = {}
    for (a, b), where in edges.items():
        if part(a) != part(b):
            out.setdefault((part(a), part(b)), where)
    return out


def find_cycle(edges) -> list[str]:
    """A cycle [a, b, ..., a] of the directed graph given by its edges (pairs), or [] when it has none."""
    graph: dict[str, list[str]] = {}
    for a, b in edges:
        graph.setdefault(a, []).append(b)
    state: dict[str, int] = {}  # 1: on the current path, 2: done (no cycle through it)
    path: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = 2
        path.pop()
        return []

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return []


def runtime_to_development(edges: Edges) -> list[str]:
    return [f"{where}: {a} -> {b}" for (a, b), where in sorted(edges.items())
            if not is_development(a) and is_development(b)]


def describe(cycle: list[str], edges: Edges) -> str:
    return "\n".join(f"  {a} -> {b}  ({edges[a, b]})" for a, b in zip(cycle, cycle[1:], strict=False))


EDGES = module_graph(REPO / "vlm_ros")


def test_no_import_cycle_between_modules():
    cycle = find_cycle(EDGES)
    assert not cycle, "import cycle:\n" + describe(cycle, EDGES)


def test_no_import_cycle_between_parts():
    """Parts: core, models, engine, export, pipeline, backends, ros, the embedded model's runtime, each development
    entry. A cycle here is two parts that need each other (e.g. engine -> export -> engine)."""
    parts = part_graph(EDGES)
    cycle = find_cycle(parts)
    assert not cycle, "import cycle between parts:\n" + describe(cycle, parts)


def test_the_runtime_imports_no_development_code():
    bad = runtime_to_development(EDGES)
    assert not bad, "runtime modules import development code:\n" + "\n".join(bad)


def test_every_development_entry_exists():
    modules = module_files(REPO / "vlm_ros")
    for entry in DEVELOPMENT:
        assert entry in modules, f"{entry} is declared as development code but is no module or package"


def test_imports_in_every_form_are_seen(tmp_path):
    pkg = tmp_path / "vlm_ros"
    (pkg / "sub").mkdir(parents=True)
    files = {
        "__init__.py": "",
        "a.py": "import vlm_ros.b\nfrom vlm_ros.sub import c\nfrom vlm_ros.sub.d import NAME\nimport os\n",
        "b.py": "def f():\n    from .sub import d\n    return d\n",  # lazy and relative
        "sub/__init__.py": "from . import c\n",
        "sub/c.py": "from ..b import f\n",
        "sub/d.py": "NAME = 1\n",
    }
    for name, text in files.items():
        (pkg / name).write_text(text)
    assert set(module_graph(pkg)) == {("vlm_ros.a", "vlm_ros.b"), ("vlm_ros.a", "vlm_ros.sub.c"),
                                      ("vlm_ros.a", "vlm_ros.sub.d"), ("vlm_ros.b", "vlm_ros.sub.d"),
                                      ("vlm_ros.sub", "vlm_ros.sub.c"), ("vlm_ros.sub.c", "vlm_ros.b")}


def test_the_cycle_finder_finds_a_seeded_cycle_and_nothing_in_a_dag():
    dag = [("a", "b"), ("a", "c"), ("b", "d"), ("c", "d"), ("d", "e")]  # a diamond: no cycle
    assert find_cycle(dag) == []
    cycle = find_cycle([*dag, ("e", "b")])
    assert cycle == ["b", "d", "e", "b"]
    assert find_cycle([("x", "x")]) == ["x", "x"]
    # seeded into the real graph: the core importing the pipeline closes a loop, at module and part level
    seeded = {**EDGES, ("vlm_ros.core.types", "vlm_ros.pipeline"): "seeded"}
    assert "vlm_ros.core.types" in find_cycle(seeded) and "vlm_ros.core" in find_cycle(part_graph(seeded))
    # the engine importing the exporter again is a cycle between parts (not between modules)
    seeded = {**EDGES, ("vlm_ros.engine.graph_engine", "vlm_ros.export"): "seeded"}
    assert set(find_cycle(part_graph(seeded))) == {"vlm_ros.engine", "vlm_ros.export"}


def test_a_seeded_runtime_import_of_development_code_is_reported():
    seeded = {**EDGES, ("vlm_ros.models.llava", "vlm_ros.embedded.tasks"): "vlm_ros/models/llava.py:1"}
    assert "vlm_ros/models/llava.py:1: vlm_ros.models.llava -> vlm_ros.embedded.tasks" in runtime_to_development(seeded)
    assert not any(is_development(m) for m in ("vlm_ros.embedded.model", "vlm_ros.embedded.prompt", "vlm_ros.ros.node"))
    assert all(is_development(m) for m in ("vlm_ros.tools.soak", "vlm_ros.testing.faults", "vlm_ros.embedded.train"))
