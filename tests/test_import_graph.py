"""The package's import graph, read with `ast` (nothing is imported): no cycles, no import
up a tier, every module placed, no lazy internal imports, Ray and skopt kept in hyperopt/,
and one test file per module.

A module may import only modules of earlier tiers, or earlier modules of its own tier.
The root package (`nlb_ndt/__init__.py`, e.g. for `__version__`) comes before every tier.
"""

from __future__ import annotations

import ast
import io
import sys
import tokenize
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import ROOT

SRC = ROOT / "src" / "nlb_ndt"
TESTS = ROOT / "tests"
ROOT_PACKAGE = "__init__"  # nlb_ndt/__init__.py

#: (tier, modules in order). A package entry is (name, its modules in order), where
#: "__init__" is the package's own __init__.py.
LAYOUT: list[tuple[str, list]] = [
    ("foundation", ["paths", "datasets", "atomic", "log", "cli", "runtime"]),
    ("config", ["config", "search_space", "templates", "runs"]),
    ("data", ["fetch", "archive", "download", "_synth_models", "psth", "preprocess",
              "synthetic", "data"]),
    ("numerics", ["metrics", "ensemble", "optim"]),
    ("model", ["model", "masking", "schedules", "checkpoint", "inference"]),
    ("files", ["submission", "evaluation", "plots", "baselines", "tensorboard_log",
               "testing"]),
    ("training", ["train", "single_run", "refit",
                  ("hyperopt", ["ray_compat", "cluster", "searcher", "trainable",
                                "experiment", "search", "__init__"])]),
    ("stages", ["ranking", "submit", "validate"]),
]
#: Listed modules that may not exist yet.
NOT_YET: set[str] = set()
#: Third-party packages that may be imported inside a function without a comment (heavy
#: or optional at import time). Any other lazy third-party import needs a comment saying why.
LAZY_OK = {"torch", "ray", "nlb_tools", "pynwb", "hdmf", "matplotlib"}
#: Only hyperopt/ may import these.
SEARCH_ONLY = {"ray", "skopt"}
#: Test files that do not mirror one module.
EXTRA_TESTS = {"test_scripts.py", "test_import_graph.py", "test_demo.py"}


def _ranks() -> dict[str, tuple[int, ...]]:
    """Module name ("runs", "hyperopt.search", "hyperopt" for its __init__) -> sort key."""
    ranks = {ROOT_PACKAGE: (-1,)}
    for t, (_, modules) in enumerate(LAYOUT):
        for m, entry in enumerate(modules):
            if isinstance(entry, tuple):
                package, inner = entry
                for i, name in enumerate(inner):
                    key = package if name == "__init__" else f"{package}.{name}"
                    ranks[key] = (t, m, i)
            else:
                ranks[entry] = (t, m)
    return ranks


RANKS = _ranks()


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts) or ROOT_PACKAGE


def _exists(name: str) -> bool:
    base = SRC.joinpath(*name.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def _internal(dotted: str) -> str:
    """An import target below nlb_ndt ("" for nlb_ndt itself) -> the module it loads: the
    longest existing module prefix ("config.load_config" -> "config")."""
    parts = [p for p in dotted.split(".") if p]
    while parts and not _exists(".".join(parts)):
        parts.pop()
    return ".".join(parts) or ROOT_PACKAGE


@dataclass(frozen=True)
class Import:
    target: str  # internal module name, or the third-party top-level package
    internal: bool
    line: int
    in_function: bool
    commented: bool


def _is_main_guard(node: ast.AST) -> bool:
    """`if __name__ == "__main__":` (a script entry point, not part of the graph)."""
    return (isinstance(node, ast.If) and isinstance(node.test, ast.Compare)
            and isinstance(node.test.left, ast.Name) and node.test.left.id == "__name__"
            and any(isinstance(c, ast.Constant) and c.value == "__main__"
                    for c in node.test.comparators))


def _imports(path: Path) -> list[Import]:
    text = path.read_text()
    tree = ast.parse(text, filename=str(path))
    comments = {tok.start[0] for tok in tokenize.generate_tokens(io.StringIO(text).readline)
                if tok.type == tokenize.COMMENT}
    # The package a relative import starts from.
    package = list(path.relative_to(SRC).parent.parts)
    found: list[Import] = []

    def add(targets: list[str], node: ast.stmt, in_function: bool) -> None:
        commented = any(line in comments for line in range(node.lineno, node.end_lineno + 1))
        for target in targets:
            internal = target == "nlb_ndt" or target.startswith("nlb_ndt.")
            name = _internal(target[len("nlb_ndt"):]) if internal else target.split(".")[0]
            found.append(Import(name, internal, node.lineno, in_function, commented))

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if _is_main_guard(child):
                continue
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                      ast.Lambda))
            if isinstance(child, ast.Import):
                add([a.name for a in child.names], child, in_function)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package[: len(package) - (child.level - 1)]
                    prefix = ".".join(["nlb_ndt", *base, *([child.module] if child.module
                                                            else [])])
                else:
                    prefix = child.module or ""
                if prefix == "nlb_ndt" or prefix.startswith("nlb_ndt."):
                    # `from . import x` loads module x when there is one.
                    add([f"{prefix}.{a.name}" for a in child.names], child, in_function)
                else:
                    add([prefix], child, in_function)
            visit(child, inner)

    visit(tree, False)
    return found


def _sources() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(SRC.rglob("*.py"))}


GRAPH = {name: _imports(path) for name, path in _sources().items()}


def _where(module: str, imp: Import) -> str:
    return f"{_sources()[module].relative_to(ROOT)}:{imp.line}"


def test_the_parser_sees_known_imports():
    """Verify the reader itself: relative, `from . import`, and package-internal imports."""
    edges = {m: {i.target for i in imps if i.internal} for m, imps in GRAPH.items()}
    assert "log" in edges["cli"]  # from .log import setup_logging
    assert "datasets" in edges["config"]
    assert ROOT_PACKAGE in edges["fetch"]  # from . import __version__
    assert "hyperopt.searcher" in edges["hyperopt"]  # hyperopt/__init__.py
    assert "search_space" in edges["hyperopt.searcher"]  # from ..search_space import ...
    assert not any(i.in_function for i in GRAPH["paths"])


def test_every_module_is_placed_in_a_tier():
    """Verify that each module of src/nlb_ndt is listed in LAYOUT (a new module must be
    placed), and that each listed module exists."""
    unplaced = sorted(set(GRAPH) - set(RANKS))
    assert not unplaced, f"modules not placed in LAYOUT: {unplaced}"
    missing = sorted(set(RANKS) - set(GRAPH) - NOT_YET)
    assert not missing, f"LAYOUT lists modules that do not exist: {missing}"


def test_no_import_cycles():
    """Verify that the internal import graph has no cycle."""
    edges = {m: sorted({i.target for i in imps if i.internal and i.target != m})
             for m, imps in GRAPH.items()}
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    cycles: list[list[str]] = []

    def walk(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in edges.get(node, []):
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                walk(nxt, path + [nxt])
        state[node] = 2

    for module in sorted(edges):
        if module not in state:
            walk(module, [module])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_imports_only_go_down_the_tiers():
    """Verify that every internal import targets an earlier tier, or an earlier module of
    the same tier."""
    tier_names = [name for name, _ in LAYOUT]

    def label(module: str) -> str:
        rank = RANKS[module]
        return f"{module} ({tier_names[rank[0]] if rank[0] >= 0 else 'package root'})"

    bad = [f"{_where(m, i)}: {label(m)} imports {label(i.target)}"
           for m, imps in GRAPH.items() if m in RANKS
           for i in imps if i.internal and i.target in RANKS and i.target != m
           and RANKS[i.target] >= RANKS[m]]
    assert not bad, "imports up the tiers:\n" + "\n".join(bad)


def test_no_lazy_internal_imports_and_lazy_third_party_ones_say_why():
    """Verify that no function imports an nlb_ndt module, and that a function-level import of
    a third-party package other than LAZY_OK has a comment on its line."""
    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    internal = [_where(m, i) + f": imports {i.target} inside a function"
                for m, imps in GRAPH.items() for i in imps if i.internal and i.in_function]
    uncommented = [_where(m, i) + f": imports {i.target} inside a function with no comment"
                   for m, imps in GRAPH.items() for i in imps
                   if not i.internal and i.in_function and i.target not in stdlib
                   and i.target not in LAZY_OK and not i.commented]
    assert not internal + uncommented, "\n".join(internal + uncommented)


def test_ray_and_skopt_stay_inside_hyperopt():
    """Verify that only hyperopt/ imports Ray or scikit-optimize (at any level)."""
    bad = [_where(m, i) + f": imports {i.target}" for m, imps in GRAPH.items()
           if m != "hyperopt" and not m.startswith("hyperopt.")
           for i in imps if not i.internal and i.target in SEARCH_ONLY]
    assert not bad, "\n".join(bad)
    assert any(i.target == "ray" for imps in GRAPH.values() for i in imps)  # the check bites


def _test_file(module: str) -> str | None:
    if module == ROOT_PACKAGE:
        return None
    if module == "hyperopt.cluster":
        return "test_cluster.py"
    if module == "hyperopt" or module.startswith("hyperopt."):
        return "test_hyperopt.py"
    if module == "_synth_models":
        return "test_synthetic.py"
    return f"test_{module}.py"


def test_each_module_has_its_test_file_and_each_test_file_a_module():
    """Verify tests/test_<module>.py for every module, and a module for every test file
    (except the allowed extras)."""
    wanted = {m: _test_file(m) for m in GRAPH}
    missing = sorted(f"{m} -> tests/{f}" for m, f in wanted.items()
                     if f and not (TESTS / f).is_file())
    present = {p.name for p in TESTS.glob("test_*.py")}
    orphans = sorted(present - set(wanted.values()) - EXTRA_TESTS - {"test_cluster.py"})
    assert not missing, f"modules without a test file: {missing}"
    assert not orphans, f"test files that name no module: {orphans}"


@pytest.mark.parametrize("module", ["hyperopt.searcher", "_synth_models", ROOT_PACKAGE])
def test_test_file_mapping_rules(module):
    """Verify the mapping's special cases (package, private helper, package root)."""
    want = {"hyperopt.searcher": "test_hyperopt.py", "_synth_models": "test_synthetic.py",
            ROOT_PACKAGE: None}
    assert _test_file(module) == want[module]
