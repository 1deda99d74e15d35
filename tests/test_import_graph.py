"""No import circle inside the project's packages: an AST-built module graph and a cycle search (issue 17).

Every ``import`` statement is an edge, wherever it stands: at module level, inside a function (a lazy import) or
under ``if TYPE_CHECKING``. A lazy import does not fail when the modules load, but the two modules still depend on
each other, and the layering is what this test guards. Parent packages are not edges: importing ``a.b.c`` first runs
``a/__init__`` and ``a/b/__init__`` to completion, so a package that re-exports its children (``mixer_snn``) forms no
circle with them. ``from a.b import c`` is an edge to the module ``a.b.c`` when it exists, else to ``a.b``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGES = ("mixer_snn", "spiking_ssm", "snn_engine", "kernel_model")

Graph = dict[str, dict[str, str]]  # module -> {imported module: "path:line" of the first import of it}


def module_files(root: Path, packages: tuple[str, ...]) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` file under ``root/<package>`` (a package is its ``__init__``)."""
    modules = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _absolute(node: ast.ImportFrom, name: str, is_package: bool) -> str:
    """The module a ``from ... import`` names, with a relative one (``from .x``) resolved against ``name``."""
    if not node.level:
        return node.module or ""
    base = name.split(".") if is_package else name.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(name: str, path: Path, known: set[str], root: Path) -> dict[str, str]:
    """The project modules that ``path`` (module ``name``) imports anywhere in its body, each with its first line."""
    found: dict[str, str] = {}
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = _absolute(node, name, path.name == "__init__.py")
            targets = [f"{module}.{alias.name}" if f"{module}.{alias.name}" in known else module
                       for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:  # ``import a.b.c`` of a non-module attribute path
                target = target.rpartition(".")[0]
            if target and target != name:
                found.setdefault(target, f"{path.relative_to(root)}:{node.lineno}")
    return found


def import_graph(root: Path, packages: tuple[str, ...] = PACKAGES) -> Graph:
    modules = module_files(root, packages)
    return {name: imports_of(name, path, set(modules), root) for name, path in modules.items()}


def find_cycle(graph: Graph) -> list[str] | None:
    """One import circle as ``[m0, m1, ..., m0]``, or ``None``; depth-first in sorted order, so it is reproducible."""
    state: dict[str, str] = {}  # "open" while on the current path, "done" once all its imports are explored
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = "open"
        path.append(module)
        for target in sorted(graph.get(module, {})):
            if state.get(target) == "open":
                return path[path.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[module] = "done"
        return None

    for module in sorted(graph):
        if module not in state and (cycle := visit(module)):
            return cycle
    return None


def describe(cycle: list[str], graph: Graph) -> str:
    """``a -> b (a.py:3) -> a (b.py:7)``: the circle with the line of each import."""
    steps = [cycle[0]] + [f"{target} ({graph[source][target]})" for source, target in zip(cycle, cycle[1:])]
    return " -> ".join(steps)


def test_the_packages_have_no_import_circle(repo):
    graph = import_graph(repo)
    assert {"mixer_snn.model", "spiking_ssm.sdn.network", "spiking_ssm.lm.language_model"} <= set(graph)
    cycle = find_cycle(graph)
    assert cycle is None, f"import circle: {describe(cycle, graph)}"


def test_the_layering_runs_one_way(repo):
    """The model calls the folding code and the exporter, which take the model duck-typed and never import it."""
    graph = import_graph(repo)
    assert "mixer_snn.fold" in graph["mixer_snn.model"] and "mixer_snn.nir_export" in graph["mixer_snn.model"]
    for lower in ("mixer_snn.fold", "mixer_snn.folded", "mixer_snn.mfi", "mixer_snn.nir_export"):
        assert "mixer_snn.model" not in graph[lower] and "mixer_snn" not in graph[lower], lower
    assert "spiking_ssm.somas" not in graph["spiking_ssm.somas.lif_parallel"]


def test_no_runtime_module_imports_the_kernel_model(repo):
    """The compile-and-model tools (:mod:`kernel_model`) stay outside the runtime import path: no module of the
    packages a run imports reaches them (they import the kernels, never the other way)."""
    graph = import_graph(repo)
    assert {"kernel_model.plans", "spiking_ssm.kernels.soma"} <= set(graph)
    users = {module: sorted(t for t in targets if t.startswith("kernel_model")) for module, targets in graph.items()
             if not module.startswith("kernel_model")}
    assert not {m: t for m, t in users.items() if t}, users


def test_the_engine_shows_its_rooms(repo):
    """At most ten modules at the engine's top level; the rest lives in its rooms (and the somas in one room)."""
    top = sorted(p.name for p in (repo / "snn_engine").glob("*.py"))
    assert len(top) <= 10, top
    rooms = {p.name for p in (repo / "snn_engine").iterdir() if (p / "__init__.py").is_file()}
    assert {"protection", "training", "measure", "data"} <= rooms
    somas = repo / "spiking_ssm" / "somas"
    assert {"__init__.py", "sdn.py", "lif.py", "sltt.py", "lif_parallel.py", "lif_scan.py"} <= {
        p.name for p in somas.glob("*.py")}
    assert "def make_ssm_neuron" in (somas / "__init__.py").read_text()
    assert not (repo / "spiking_ssm" / "neurons.py").exists() and not (repo / "spiking_ssm" / "lif_parallel.py").exists()


def _package(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


def test_a_lazy_import_closing_a_circle_is_found_and_named(tmp_path):
    root = _package(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/model.py": "from pkg.fold import fold\n",
        "pkg/fold.py": "import torch\n\n\ndef fold(m):\n    from pkg import model\n    return model\n",
    })
    graph = import_graph(root, ("pkg",))
    assert graph["pkg.fold"] == {"pkg.model": "pkg/fold.py:5"}  # ``from pkg import model`` is the module
    cycle = find_cycle(graph)
    assert cycle == ["pkg.fold", "pkg.model", "pkg.fold"]
    assert describe(cycle, graph) == "pkg.fold -> pkg.model (pkg/fold.py:5) -> pkg.fold (pkg/model.py:1)"


@pytest.mark.parametrize("statement", ["from . import a", "from .a import thing", "import pkg.sub.a",
                                       "from ..sub import a", "from pkg.sub.a import thing as other"])
def test_every_import_form_is_an_edge(tmp_path, statement):
    root = _package(tmp_path, {
        "pkg/__init__.py": "from pkg.sub.b import thing\n",  # a re-exporting package: no edge back to it
        "pkg/sub/__init__.py": "",
        "pkg/sub/a.py": "from pkg.sub.b import thing\n",
        "pkg/sub/b.py": f"thing = 1\n\n\nclass Lazy:\n    def load(self):\n        {statement}\n",
    })
    graph = import_graph(root, ("pkg",))
    assert "pkg.sub.a" in graph["pkg.sub.b"], graph
    assert find_cycle(graph) == ["pkg.sub.b", "pkg.sub.a", "pkg.sub.b"]  # reached from pkg/__init__


def test_a_package_re_exporting_its_children_is_no_circle(tmp_path):
    root = _package(tmp_path, {
        "pkg/__init__.py": "from pkg.model import Model\n",
        "pkg/model.py": "from pkg.blocks import Block\n\n\nclass Model(Block):\n    pass\n",
        "pkg/blocks.py": "class Block:\n    pass\n",
    })
    assert find_cycle(import_graph(root, ("pkg",))) is None


def test_the_files_started_first_exist(repo):
    """tests/conftest.py's RUN_FIRST names files by their name: a renamed file would silently lose its early start."""
    from tests.conftest import RUN_FIRST

    missing = [name for name in RUN_FIRST if not (repo / "tests" / name).is_file()]
    assert not missing, f"RUN_FIRST in tests/conftest.py names files that are not in tests/: {missing}"
