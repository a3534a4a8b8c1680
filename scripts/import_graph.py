"""Print galray's import graph and what tests/test_architecture.py would say about it.

    .venv/bin/python scripts/import_graph.py            # findings only
    .venv/bin/python scripts/import_graph.py --edges    # and every module's galray imports
    .venv/bin/python scripts/import_graph.py --areas    # and the area-to-area import counts
    .venv/bin/python scripts/import_graph.py --src OTHER/src      # another checkout's tree

Nothing of galray is imported: the graph comes from parsing the sources, with the rules and the
layer table of tests/test_architecture.py (loaded from its path).  Exits 1 when a rule is broken.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _load_rules():
    path = ROOT / "tests" / "test_architecture.py"
    spec = importlib.util.spec_from_file_location("galray_architecture_rules", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


def _section(title: str, lines: list[str], empty: str = "none") -> None:
    print(f"\n{title}")
    for line in lines or [empty]:
        print(f"  {line}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=Path, default=ROOT / "src", help="the source root")
    parser.add_argument("--edges", action="store_true", help="list every module's imports")
    parser.add_argument("--areas", action="store_true", help="count imports between areas")
    args = parser.parse_args(argv)

    rules = _load_rules()
    package = rules.PACKAGE
    src = args.src.resolve()
    graph = rules.build_import_graph(src, package)
    edges = graph.edges()

    def where(module: str, line: int) -> str:
        return f"{graph.modules[module].relative_to(src.parent)}:{line}"

    n_edges = sum(len(targets) for targets in edges.values())
    print(f"{package} under {src}: {len(graph.modules)} modules, {n_edges} internal imports")

    if args.edges:
        lines = []
        for source in sorted(edges):
            targets = edges[source]
            lines.append(f"{source} ({len(targets)})")
            lines += [f"    -> {t}  (line {n})" for t, n in sorted(targets.items())]
        _section("imports, module by module (lazy ones included):", lines)

    if args.areas:
        counts = Counter(
            (rules.area_of(s, package), rules.area_of(t, package))
            for s, targets in edges.items()
            for t in targets
            if rules.area_of(s, package) != rules.area_of(t, package)
        )
        _section(
            "imports between areas:",
            [f"{a} -> {b}: {n}" for (a, b), n in sorted(counts.items())],
        )

    _section(
        "deferred re-exports (module-level __getattr__, no dependency):",
        [f"{s} -> {t}" for s, t in graph.deferred()],
    )

    unresolved = []
    for source, targets in sorted(edges.items()):
        for target, line in sorted(targets.items()):
            if target not in graph.modules:
                folder = src.joinpath(*target.split("."))
                why = "a folder with no __init__.py" if folder.is_dir() else "no such module"
                unresolved.append(f"{source} -> {target} ({why}; {where(source, line)})")
    _section("imports of galray modules that are not there:", unresolved)

    broken = []

    cycles = [" -> ".join(c) for c in rules.find_cycles(edges)]
    _section("import cycles:", cycles)
    broken += ["cycles"] if cycles else []

    unknown = rules.unknown_areas(graph, rules.LAYERS)
    violations = rules.layer_violations(graph, rules.LAYERS)
    _section(
        "areas missing from the layer table (add a row to LAYERS in tests/test_architecture.py):",
        [f"{area}: {', '.join(sorted(mods))}" for area, mods in sorted(unknown.items())],
    )
    _section(
        "imports against the layer table:",
        [f"{v}  [{where(v.source, v.line)}]" for v in violations],
    )
    broken += ["layers"] if unknown or violations else []

    saved = []
    for product in rules.PRODUCTS:
        saved += rules.saved_model_problems(graph, f"{package}.{product}.bundle")
    _section("a saved model reaching the trainers or Ray:", saved)
    broken += ["saved models"] if saved else []

    models = rules.model_third_party_problems(graph)
    _section("models importing Ray or file libraries:", models)
    broken += ["models"] if models else []

    long = rules.long_files(src / package)
    _section(
        f"files over {rules.MAX_LINES} lines:",
        [f"{p.relative_to(src.parent)}: {n}" for p, n in long],
    )
    broken += ["file length"] if long else []

    print(f"\nbroken rules: {', '.join(broken)}" if broken else "\nall rules hold")
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
