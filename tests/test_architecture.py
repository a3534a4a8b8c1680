"""The package's shape, checked statically: no import cycles, a layer table of which area may
import which, a saved model that loads without the trainers or Ray, models that know nothing of
Ray or files, and no file over 500 lines.

Nothing of galray is imported here: every module under ``src/galray`` is parsed with :mod:`ast`.
An import statement anywhere in a module counts, including one inside a function or method (a
lazy import is still a dependency), except

* one under ``if TYPE_CHECKING:`` (or ``if typing.TYPE_CHECKING:``), which never runs, and
* one inside a module-level ``def __getattr__`` (PEP 562): a deferred re-export kept so that old
  pickles resolve.  These edges are listed apart, as "deferred", and are no dependency.

``scripts/import_graph.py`` prints the same graph and findings for a person.
"""

from __future__ import annotations

import ast
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest

PACKAGE = "galray"
SRC_ROOT = Path(__file__).resolve().parents[1] / "src"
MAX_LINES = 500

# --------------------------------------------------------------------------------------------
# The layer table
# --------------------------------------------------------------------------------------------
# An area is the first name under galray: galray.emulator.bundle is in area "emulator";
# galray.errors is area "errors"; the package root (galray/__init__.py) is area "galray".
# A row says which other areas that area may import (an area may always import itself).  An
# entry with a dot, such as "emulator.spec", allows that one module (and anything under it)
# rather than its whole area.

# Product packages: one trained model family each, with its own saved-model format in
# <product>/bundle.py and its settings in <product>/spec.py.  They never import each other.
# A new product package is one more word here.
PRODUCTS: tuple[str, ...] = ("emulator", "deepfield", "stamps", "estimator")


@dataclass(frozen=True)
class AllBut:
    """A layer-table row meaning: every area in the table except these."""

    excluded: frozenset[str]

    def __init__(self, *excluded: str) -> None:
        object.__setattr__(self, "excluded", frozenset(excluded))


# What every product package may build on.
PRODUCT_BASE = frozenset(
    {
        "errors",
        "io",
        "config",
        "datasets",
        "models",
        "evaluation",
        "tracking",
        "registry",
        "model_cache",
        "training",
        "console",
    }
)

LAYERS: dict[str, frozenset[str] | AllBut] = {
    "errors": frozenset(),  # the exception types; the bottom of everything
    "_version": frozenset(),  # the version string, readable without the package's API
    "console": frozenset(),  # first line, progress, the log file: stdlib (tqdm) only
    "io": frozenset({"errors"}),  # atomic writes, Parquet and file helpers
    "config": frozenset({"errors"}),  # loading and validating YAML configs
    "datasets": frozenset({"errors", "io", "config"}),  # catalogues, maps, simulation, readers
    "models": frozenset({"errors", "config"}),  # torch networks: no Ray, no files
    "evaluation": frozenset({"errors", "io", "config", "datasets"}),  # fidelity reports, plots
    "tracking": frozenset({"errors", "io", "config", "_version"}),  # MLflow runs, artifacts
    "model_cache": frozenset({"errors"}),  # models downloaded once, by registry identity
    # bundles <-> MLflow
    "registry": frozenset({"errors", "io", "config", "tracking", "_version", "model_cache"}),
    # shared training components and the job skeleton (which publishes through the registry)
    "training": frozenset({"errors", "io", "config", "tracking", "registry", "console"}),
    # Each product package: the shared base only, never another product.
    **dict.fromkeys(PRODUCTS, PRODUCT_BASE),
    # The product catalogue: knows each product by its spec module only, and trains one
    # (galray.train runs its spec through the job skeleton).
    "products": frozenset({"errors", "config", "training.job", *(f"{p}.spec" for p in PRODUCTS)}),
    # sweeps
    "tune": frozenset({"errors", "io", "config", "tracking", "training", "products", "console"}),
    "commands": AllBut("cli"),  # subcommand bodies wire everything together; only cli is above
    "cli": frozenset({"errors", "commands", "console", PACKAGE}),  # the argparse entry point
    PACKAGE: frozenset({"errors", "_version", "emulator"}),  # the root: errors, version, loaders
}

# A saved model (each product's bundle module and all it imports) must load without these.
SAVED_MODEL_FORBIDDEN_AREAS = ("training", "tune", "commands")
SAVED_MODEL_FORBIDDEN_THIRD_PARTY = ("ray",)

# Third-party packages that modules in galray.models may not import.
MODELS_FORBIDDEN_THIRD_PARTY = ("ray", "mlflow", "pyarrow", "astropy", "healpy")


# --------------------------------------------------------------------------------------------
# The import graph
# --------------------------------------------------------------------------------------------
RUNTIME = "runtime"  # a dependency: runs when the module or one of its functions runs
TYPING = "typing"  # under `if TYPE_CHECKING:`; never runs
DEFERRED = "deferred"  # inside a module-level __getattr__; a re-export for old pickles


@dataclass(frozen=True)
class Import:
    """One imported name, resolved: a module of the package, or a third-party top-level name."""

    source: str  # the importing module, e.g. galray.emulator.bundle
    target: str  # galray.x.y for the package's own modules; the top-level name otherwise
    line: int
    kind: str  # RUNTIME, TYPING or DEFERRED
    internal: bool


@dataclass
class ImportGraph:
    package: str
    modules: dict[str, Path] = field(default_factory=dict)  # module name -> file
    imports: list[Import] = field(default_factory=list)

    def edges(self, kind: str = RUNTIME) -> dict[str, dict[str, int]]:
        """Internal edges of one kind: source -> {target: first line}.  Every module is a key.
        A module's import of itself (``from galray.x import name`` in galray/x/__init__.py) is
        no edge."""
        out: dict[str, dict[str, int]] = {name: {} for name in self.modules}
        for imp in self.imports:
            if imp.internal and imp.kind == kind and imp.target != imp.source:
                out.setdefault(imp.source, {}).setdefault(imp.target, imp.line)
        return out

    def third_party(self, module: str, kinds: Iterable[str] = (RUNTIME,)) -> dict[str, int]:
        """Third-party top-level names that ``module`` imports: name -> first line."""
        wanted = set(kinds)
        out: dict[str, int] = {}
        for imp in self.imports:
            if imp.source == module and not imp.internal and imp.kind in wanted:
                out.setdefault(imp.target, imp.line)
        return out

    def deferred(self) -> list[tuple[str, str]]:
        return sorted(
            {(i.source, i.target) for i in self.imports if i.internal and i.kind == DEFERRED}
        )


def module_name(path: Path, src_root: Path) -> str:
    """``src/galray/emulator/bundle.py`` -> ``galray.emulator.bundle``; a package's
    ``__init__.py`` -> the package."""
    parts = list(path.relative_to(src_root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    if isinstance(test, ast.Name):
        return test.id == "TYPE_CHECKING"
    return isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"


def _import_statements(tree: ast.Module) -> list[tuple[ast.Import | ast.ImportFrom, str]]:
    """Every import statement in the module with its kind (RUNTIME, TYPING or DEFERRED)."""
    found: list[tuple[ast.Import | ast.ImportFrom, str]] = []

    def visit(nodes: Iterable[ast.AST], kind: str, module_level: bool) -> None:
        for node in nodes:
            if isinstance(node, ast.Import | ast.ImportFrom):
                found.append((node, kind))
            elif isinstance(node, ast.If) and _is_type_checking(node.test):
                visit(node.body, TYPING, module_level)
                visit(node.orelse, kind, module_level)  # the else branch runs
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                deferred = module_level and node.name == "__getattr__" and kind == RUNTIME
                visit(ast.iter_child_nodes(node), DEFERRED if deferred else kind, False)
            elif isinstance(node, ast.ClassDef):
                visit(ast.iter_child_nodes(node), kind, False)
            else:  # if/try/with/for bodies keep the scope they are in
                visit(ast.iter_child_nodes(node), kind, module_level)

    visit(tree.body, RUNTIME, True)
    return found


def _resolve(
    node: ast.Import | ast.ImportFrom,
    source: str,
    is_package: bool,
    modules: Mapping[str, Path],
    package: str,
) -> list[tuple[str, bool]]:
    """The (target, internal) pairs of one import statement."""
    if isinstance(node, ast.Import):
        out = []
        for alias in node.names:
            top = alias.name.split(".")[0]
            out.append((alias.name, True) if top == package else (top, False))
        return out

    if node.level:
        base_parts = source.split(".") if is_package else source.split(".")[:-1]
        up = node.level - 1
        if up >= len(base_parts):
            raise ValueError(
                f"{source}: relative import beyond the top of {package} (line {node.lineno})"
            )
        base_parts = base_parts[: len(base_parts) - up]
        base = ".".join(base_parts + ([node.module] if node.module else []))
    else:
        base = node.module or ""
        top = base.split(".")[0]
        if top != package:
            return [(top, False)]

    out = []
    for alias in node.names:
        candidate = f"{base}.{alias.name}"
        out.append((candidate if alias.name != "*" and candidate in modules else base, True))
    return out


def build_import_graph(src_root: Path, package: str = PACKAGE) -> ImportGraph:
    """Parse every module of ``src_root/package`` and resolve its imports."""
    graph = ImportGraph(package=package)
    files = sorted(p for p in (src_root / package).rglob("*.py") if "__pycache__" not in p.parts)
    for path in files:
        graph.modules[module_name(path, src_root)] = path
    for name, path in graph.modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        is_package = path.name == "__init__.py"
        for node, kind in _import_statements(tree):
            for target, internal in _resolve(node, name, is_package, graph.modules, package):
                graph.imports.append(Import(name, target, node.lineno, kind, internal))
    return graph


# --------------------------------------------------------------------------------------------
# Cycles
# --------------------------------------------------------------------------------------------
def strongly_connected_components(edges: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative.  Every component, each sorted, including single nodes."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    nodes = sorted(set(edges) | {t for targets in edges.values() for t in targets})

    def enter(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)

    for root in nodes:
        if root in index:
            continue
        enter(root)
        work = [(root, iter(sorted(edges.get(root, ()))))]
        while work:
            node, successors = work[-1]
            for nxt in successors:
                if nxt not in index:
                    enter(nxt)
                    work.append((nxt, iter(sorted(edges.get(nxt, ())))))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    components.append(sorted(component))
    return components


def _shortest_cycle(start: str, edges: Mapping[str, Iterable[str]], within: set[str]) -> list[str]:
    parent: dict[str, str | None] = {start: None}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for nxt in sorted(edges.get(node, ())):
            if nxt not in within:
                continue
            if nxt == start:
                path = [node]
                while (up := parent[path[-1]]) is not None:
                    path.append(up)
                return [*reversed(path), start]
            if nxt not in parent:
                parent[nxt] = node
                queue.append(nxt)
    return []


def find_cycles(edges: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """Cycles to show a person: for each strongly connected component of two or more modules
    (or one that imports itself), shortest cycles until every member is on one."""
    cycles = []
    for component in strongly_connected_components(edges):
        members = set(component)
        if len(component) == 1 and component[0] not in set(edges.get(component[0], ())):
            continue
        covered: set[str] = set()
        for node in component:
            if node not in covered:
                cycle = _shortest_cycle(node, edges, members)
                covered.update(cycle)
                cycles.append(cycle)
    return cycles


# --------------------------------------------------------------------------------------------
# Layers
# --------------------------------------------------------------------------------------------
def area_of(module: str, package: str = PACKAGE) -> str:
    parts = module.split(".")
    return package if len(parts) == 1 else parts[1]


def allowed_entries(area: str, layers: Mapping[str, frozenset[str] | AllBut]) -> frozenset[str]:
    row = layers[area]
    if isinstance(row, AllBut):
        return frozenset(layers) - row.excluded - {area}
    return row


def _entry_allows(entry: str, target: str, package: str) -> bool:
    if "." not in entry:
        return area_of(target, package) == entry
    full = f"{package}.{entry}"
    return target == full or target.startswith(full + ".")


@dataclass(frozen=True)
class LayerViolation:
    source: str
    target: str
    line: int
    package: str

    def __str__(self) -> str:
        return (
            f"{self.source} -> {self.target} "
            f"(area {area_of(self.source, self.package)} may not import "
            f"{area_of(self.target, self.package)})"
        )


def unknown_areas(
    graph: ImportGraph, layers: Mapping[str, frozenset[str] | AllBut]
) -> dict[str, list[str]]:
    """Areas with modules but no row in the table: area -> its modules."""
    out: dict[str, list[str]] = {}
    for module in graph.modules:
        area = area_of(module, graph.package)
        if area not in layers:
            out.setdefault(area, []).append(module)
    return out


def layer_violations(
    graph: ImportGraph, layers: Mapping[str, frozenset[str] | AllBut]
) -> list[LayerViolation]:
    """Runtime edges the table does not allow.  Edges out of an unknown area are not judged
    (see :func:`unknown_areas`); edges into one are violations."""
    out = []
    for source, targets in sorted(graph.edges().items()):
        area = area_of(source, graph.package)
        if area not in layers:
            continue
        entries = allowed_entries(area, layers)
        for target, line in sorted(targets.items()):
            if area_of(target, graph.package) == area:
                continue
            if not any(_entry_allows(e, target, graph.package) for e in entries):
                out.append(LayerViolation(source, target, line, graph.package))
    return out


# --------------------------------------------------------------------------------------------
# What a saved model reaches
# --------------------------------------------------------------------------------------------
def _ancestors(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(len(parts) - 1, 0, -1)]


def reach(graph: ImportGraph, start: str) -> dict[str, tuple[str, str] | None]:
    """Every module that importing ``start`` runs, with how it was reached:
    module -> (previous module, "import" or "package") or None for the start.  Importing a
    module also runs its parent packages' ``__init__``, so those are reached too."""
    edges = graph.edges()
    seen: dict[str, tuple[str, str] | None] = {start: None}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        steps = [(t, "import") for t in sorted(edges.get(node, ()))]
        steps += [(a, "package") for a in _ancestors(node) if a in graph.modules]
        for nxt, how in steps:
            if nxt not in seen:
                seen[nxt] = (node, how)
                queue.append(nxt)
    return seen


def _chain(seen: Mapping[str, tuple[str, str] | None], end: str) -> str:
    links = [end]
    node = end
    while (step := seen[node]) is not None:
        node, how = step
        links.append(" -> " if how == "import" else " -(its package)-> ")
        links.append(node)
    return "".join(reversed(links))


def saved_model_problems(graph: ImportGraph, start: str) -> list[str]:
    if start not in graph.modules:
        return [f"{start} does not exist (each product keeps its saved-model loader there)"]
    seen = reach(graph, start)
    forbidden = tuple(f"{graph.package}.{a}" for a in SAVED_MODEL_FORBIDDEN_AREAS)
    problems = []
    for module in sorted(seen):
        if module != start and any(module == f or module.startswith(f + ".") for f in forbidden):
            problems.append(_chain(seen, module))
            continue
        for name, line in sorted(graph.third_party(module).items()):
            if name in SAVED_MODEL_FORBIDDEN_THIRD_PARTY:
                problems.append(f"{_chain(seen, module)} (imports {name}, line {line})")
    return problems


# --------------------------------------------------------------------------------------------
# Other findings
# --------------------------------------------------------------------------------------------
def model_third_party_problems(graph: ImportGraph) -> list[str]:
    """Forbidden third-party imports in galray.models: every import statement counts, under
    TYPE_CHECKING too."""
    problems = []
    for module in sorted(graph.modules):
        if area_of(module, graph.package) != "models":
            continue
        names = graph.third_party(module, kinds=(RUNTIME, TYPING, DEFERRED))
        for name, line in sorted(names.items()):
            if name in MODELS_FORBIDDEN_THIRD_PARTY:
                problems.append(f"{module} imports {name} (line {line})")
    return problems


def long_files(package_dir: Path, limit: int = MAX_LINES) -> list[tuple[Path, int]]:
    """Files under ``package_dir`` (byte code aside) longer than ``limit`` physical lines."""
    out = []
    for path in sorted(package_dir.rglob("*")):
        if not path.is_file() or "__pycache__" in path.parts or path.suffix in {".pyc", ".so"}:
            continue
        count = len(path.read_bytes().splitlines())
        if count > limit:
            out.append((path, count))
    return out


# ============================================================================================
# The rules, on the real tree
# ============================================================================================
@pytest.fixture(scope="module")
def graph() -> ImportGraph:
    built = build_import_graph(SRC_ROOT)
    # Guard against passing on an empty or misread tree.
    assert len(built.modules) >= 10, f"only {len(built.modules)} modules found under {SRC_ROOT}"
    assert PACKAGE in built.modules
    assert any(built.edges().values()), "no internal imports found"
    return built


def _fail(title: str, lines: Iterable[str]) -> None:
    pytest.fail("\n".join([title, *(f"  {line}" for line in lines)]), pytrace=False)


def test_no_import_cycles(graph: ImportGraph) -> None:
    deferred = graph.deferred()
    print("deferred (module-level __getattr__, not a dependency):")
    for source, target in deferred:
        print(f"  {source} -> {target}")
    cycles = find_cycles(graph.edges())
    if cycles:
        _fail(
            f"{len(cycles)} import cycle(s) (lazy imports count; deferred edges do not):",
            [" -> ".join(c) for c in cycles],
        )


def test_layer_table(graph: ImportGraph) -> None:
    unknown = unknown_areas(graph, LAYERS)
    violations = layer_violations(graph, LAYERS)
    lines = [
        f"area {area!r} ({', '.join(sorted(mods))}) is not in the layer table: add a row for it "
        f"to LAYERS in tests/test_architecture.py saying which areas it may import"
        for area, mods in sorted(unknown.items())
    ]
    lines += [str(v) for v in violations]
    if lines:
        _fail(
            f"{len(unknown)} unknown area(s), {len(violations)} import(s) against the layer table:",
            lines,
        )


@pytest.mark.parametrize("product", PRODUCTS)
def test_saved_model_does_not_import_trainers(graph: ImportGraph, product: str) -> None:
    bundle = f"{PACKAGE}.{product}.bundle"
    problems = saved_model_problems(graph, bundle)
    if problems:
        forbidden = [f"{PACKAGE}.{a}" for a in SAVED_MODEL_FORBIDDEN_AREAS]
        _fail(
            f"loading {bundle} must not reach {', '.join(forbidden)} nor "
            f"{', '.join(SAVED_MODEL_FORBIDDEN_THIRD_PARTY)}:",
            problems,
        )


def test_models_know_no_ray_or_files(graph: ImportGraph) -> None:
    problems = model_third_party_problems(graph)
    if problems:
        _fail(
            f"{PACKAGE}.models may not import {', '.join(MODELS_FORBIDDEN_THIRD_PARTY)}:", problems
        )


def test_no_file_over_500_lines() -> None:
    package_dir = SRC_ROOT / PACKAGE
    offenders = long_files(package_dir)
    if offenders:
        _fail(
            f"{len(offenders)} file(s) over {MAX_LINES} lines:",
            [f"{p.relative_to(SRC_ROOT.parent)}: {n} lines" for p, n in offenders],
        )


def test_layer_table_is_consistent() -> None:
    """The table itself: names only known areas, products never allow each other, and the
    areas it allows form no cycle."""
    problems = []
    for area in LAYERS:
        row = LAYERS[area]
        names = row.excluded if isinstance(row, AllBut) else row
        for entry in names:
            if entry.split(".")[0] not in LAYERS:
                problems.append(f"row {area!r} names unknown area {entry!r}")
    for product in PRODUCTS:
        others = {e.split(".")[0] for e in allowed_entries(product, LAYERS)} & set(PRODUCTS)
        if others - {product}:
            problems.append(f"product {product!r} may import product(s) {sorted(others)}")
    area_edges = {
        area: {e.split(".")[0] for e in allowed_entries(area, LAYERS)} - {area} for area in LAYERS
    }
    problems += ["the table allows the cycle " + " -> ".join(c) for c in find_cycles(area_edges)]
    if problems:
        _fail("the layer table is inconsistent:", problems)


# ============================================================================================
# Self-tests: the checker on a synthetic package, so that the rules cannot pass vacuously
# ============================================================================================
TOY = {
    "toy/__init__.py": "__version__ = '1'\n",
    # a -> b at module level; b -> a only inside a function: still a cycle.
    "toy/a.py": "from toy import b\nVALUE = 1\n",
    "toy/b.py": "import json\n\ndef f():\n    from . import a\n    return a.VALUE\n",
    # Imports that run only for the type checker are no edge; the else branch runs.
    "toy/c.py": (
        "import typing\nfrom typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from toy import a\n    import ray\n"
        "if typing.TYPE_CHECKING:\n    import toy.b\nelse:\n    from toy import sub\n"
    ),
    # A module-level __getattr__ is deferred; a class's __getattr__ is an ordinary method.
    "toy/d.py": (
        "def __getattr__(name):\n    from toy.sub import old\n    return old\n\n"
        "class Proxy:\n    def __getattr__(self, name):\n        from toy import c\n"
        "        return c\n"
    ),
    "toy/sub/__init__.py": "from .old import thing\n",
    "toy/sub/old.py": "thing = 1\n",
    "toy/sub/mod.py": (
        "from ..a import VALUE\nfrom .. import b\nfrom . import old\nimport toy.sub.old as o\n"
        "from toy import __version__\nfrom toy.sub import thing\nimport ray.train\n"
        "from mlflow import pyfunc\n\ndef g():\n    import pyarrow.parquet\n"
    ),
    # a relative import to a name that is no module goes to the package
    "toy/sub/rel.py": "from . import thing\nfrom .old import *\n",
}


def _write(root: Path, files: Mapping[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


def test_self_graph_resolves_imports(tmp_path: Path) -> None:
    toy = build_import_graph(_write(tmp_path, TOY), "toy")
    assert set(toy.modules) == {
        "toy",
        "toy.a",
        "toy.b",
        "toy.c",
        "toy.d",
        "toy.sub",
        "toy.sub.old",
        "toy.sub.mod",
        "toy.sub.rel",
    }
    edges = {source: set(targets) for source, targets in toy.edges().items()}
    assert edges == {
        "toy": set(),
        "toy.a": {"toy.b"},
        "toy.b": {"toy.a"},  # the function-level import counts
        "toy.c": {"toy.sub"},  # TYPE_CHECKING imports do not; its else branch does
        "toy.d": {"toy.c"},  # the method's import counts; the module __getattr__'s does not
        "toy.sub": {"toy.sub.old"},
        "toy.sub.old": set(),
        "toy.sub.mod": {"toy.a", "toy.b", "toy.sub.old", "toy", "toy.sub"},
        "toy.sub.rel": {"toy.sub", "toy.sub.old"},  # `thing` is no module: the edge is to toy.sub
    }
    assert toy.deferred() == [("toy.d", "toy.sub.old")]
    assert set(toy.edges(TYPING)["toy.c"]) == {"toy.a", "toy.b"}
    assert toy.third_party("toy.sub.mod") == {"ray": 7, "mlflow": 8, "pyarrow": 11}
    assert toy.third_party("toy.b") == {"json": 1}
    assert toy.third_party("toy.c") == {"typing": 1}
    assert "ray" in toy.third_party("toy.c", kinds=(TYPING,))


def test_self_cycle_detector(tmp_path: Path) -> None:
    toy = build_import_graph(_write(tmp_path, TOY), "toy")
    assert [" -> ".join(c) for c in find_cycles(toy.edges())] == ["toy.a -> toy.b -> toy.a"]
    # Without the lazy import there is no cycle.
    _write(tmp_path, {"toy/b.py": "def f():\n    return 1\n"})
    assert find_cycles(build_import_graph(tmp_path, "toy").edges()) == []


def test_self_strongly_connected_components() -> None:
    edges = {"a": ["b"], "b": ["c"], "c": ["a", "d"], "d": [], "e": ["e"], "f": ["d"]}
    components = strongly_connected_components(edges)
    assert sorted(components) == [["a", "b", "c"], ["d"], ["e"], ["f"]]
    assert find_cycles(edges) == [["a", "b", "c", "a"], ["e", "e"]]
    # Deep chains do not hit the recursion limit.
    chain = {str(i): [str(i + 1)] for i in range(5000)} | {"5000": ["0"]}
    assert len(strongly_connected_components(chain)) == 1


def test_self_layer_check(tmp_path: Path) -> None:
    toy = build_import_graph(_write(tmp_path, TOY), "toy")
    layers: dict[str, frozenset[str] | AllBut] = {
        "toy": frozenset(),
        "a": frozenset({"b"}),
        "b": frozenset(),  # b -> a is a violation
        "c": AllBut("d"),
        "d": frozenset({"c"}),
        "sub": frozenset({"a", "b", "toy"}),  # "old" lives inside sub, so it is sub's own
    }
    assert unknown_areas(toy, layers) == {}
    assert [str(v) for v in layer_violations(toy, layers)] == [
        "toy.b -> toy.a (area b may not import a)"
    ]
    del layers["d"]
    assert unknown_areas(toy, layers) == {"d": ["toy.d"]}
    # A dotted entry allows one module of an area, not the rest of it.
    graph = ImportGraph("toy", {"toy.p.x": Path(), "toy.q.spec": Path(), "toy.q.model": Path()})
    graph.imports += [
        Import("toy.p.x", "toy.q.spec", 1, RUNTIME, True),
        Import("toy.p.x", "toy.q.model", 2, RUNTIME, True),
    ]
    table = {"p": frozenset({"q.spec"}), "q": frozenset()}
    assert [str(v) for v in layer_violations(graph, table)] == [
        "toy.p.x -> toy.q.model (area p may not import q)"
    ]


def test_self_saved_model_reach(tmp_path: Path) -> None:
    files = {
        "galray/__init__.py": "",
        "galray/emulator/__init__.py": "from galray.emulator import train\n",
        "galray/emulator/bundle.py": "from galray.models import net\n",
        "galray/emulator/train.py": "def fit():\n    from galray.training import loop\n",
        "galray/models/__init__.py": "",
        "galray/models/net.py": "import torch\n\ndef go():\n    import ray\n",
        "galray/training/__init__.py": "",
        "galray/training/loop.py": "",
    }
    toy = build_import_graph(_write(tmp_path, files))
    chain = "galray.emulator.bundle -(its package)-> galray.emulator -> galray.emulator.train"
    assert saved_model_problems(toy, "galray.emulator.bundle") == [
        "galray.emulator.bundle -> galray.models.net (imports ray, line 4)",
        f"{chain} -> galray.training.loop -(its package)-> galray.training",
        f"{chain} -> galray.training.loop",
    ]
    assert model_third_party_problems(toy) == ["galray.models.net imports ray (line 4)"]
    assert saved_model_problems(toy, "galray.deepfield.bundle") == [
        "galray.deepfield.bundle does not exist (each product keeps its saved-model loader there)"
    ]


def test_self_long_files(tmp_path: Path) -> None:
    _write(tmp_path, {"p/short.py": "x = 1\n" * 500, "p/long.py": "x = 1\n" * 501})
    (tmp_path / "p/__pycache__").mkdir()
    (tmp_path / "p/__pycache__/long.cpython-311.pyc").write_bytes(b"\n" * 900)
    assert long_files(tmp_path / "p") == [(tmp_path / "p/long.py", 501)]
