"""The package's shape, read with `ast` (nothing is imported): the tiers are sub-packages, a
tier imports only itself and the tiers below it, no import circles, no lazy internal
imports, Ray and skopt only in hyperopt/, every module mirrored by a test file, short
modules and functions, and the README's code map agreeing with the same table.
"""

from __future__ import annotations

import ast
import io
import re
import sys
import tokenize
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import ROOT

SRC = ROOT / "src" / "nlb_ndt"
TESTS = ROOT / "tests"
ROOT_PACKAGE = "__init__"  # nlb_ndt/__init__.py (the version), below every tier

#: The tiers, bottom first: (name, members, one-line job). Members are a sub-package's name
#: (its job is the first line of its __init__ docstring) or a list of top-level modules.
#: A module imports only modules of its own tier or of tiers listed before it.
TIERS: list[tuple[str, str | list[str], str]] = [
    ("foundation", ["paths", "datasets", "atomic", "log", "cli", "runtime", "testing"],
     "Paths, the dataset table, atomic writes, logging, CLI helpers, runtime (device, "
     "precision, seeds, versions), test data."),
    ("config", "config", ""),
    ("data", "data", ""),
    ("model", "model", ""),
    ("scoring", "scoring", ""),
    ("training", "training", ""),
    ("hyperopt", "hyperopt", ""),
    ("stages", "stages", ""),
    ("stable paths", ["checkpoint", "inference", "synthetic", "search_space"],
     "The import paths users' scripts and old experiments rely on (`load_model`, "
     "`predict_rates`, `python -m nlb_ndt.synthetic`, what Ray pickled), whatever the layout."),
]
#: Modules tested in another module's test file: module -> that file (relative to tests/).
TESTED_WITH = {
    "data.synthetic_models": "data/test_synthetic.py",
    "data.synthetic_files": "data/test_synthetic.py",
    "checkpoint": "test_stable_paths.py",
    "inference": "test_stable_paths.py",
    "synthetic": "test_stable_paths.py",
    "search_space": "test_stable_paths.py",
}
#: Test files that mirror no single module.
EXTRA_TESTS = {"test_scripts.py", "test_import_graph.py", "test_stable_paths.py",
               "test_packaging.py"}
#: Third-party packages that may be imported inside a function without a comment (heavy
#: or optional at import time). Any other lazy third-party import needs a comment saying why.
LAZY_OK = {"torch", "ray", "nlb_tools", "pynwb", "hdmf", "matplotlib"}
#: Only hyperopt/ may import these.
SEARCH_ONLY = {"ray", "skopt"}
#: Size limits (lines); the synthetic generator's models are one long table of formulas.
MAX_MODULE_LINES = 350
MAX_FUNCTION_LINES = 60
LONG_MODULES_OK = {"data.synthetic_models"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts) or ROOT_PACKAGE


def _sources() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(SRC.rglob("*.py"))}


SOURCES = _sources()


def _tier_of(module: str) -> int:
    """Index in TIERS of a module ("model.ndt" -> the model tier); -1 for the root."""
    if module == ROOT_PACKAGE:
        return -1
    top = module.split(".")[0]
    for index, (_, members, _) in enumerate(TIERS):
        if (members == top) if isinstance(members, str) else (module in members):
            return index
    raise KeyError(module)


def _exists(name: str) -> bool:
    base = SRC.joinpath(*name.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def _internal(dotted: str) -> str:
    """An import target below nlb_ndt -> the module it loads: the longest existing module
    prefix ("config.defaults.load_config" -> "config.defaults")."""
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
    package = list(path.relative_to(SRC).parent.parts)  # where a relative import starts
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
                    # `from pkg import x` loads module pkg.x when there is one.
                    add([f"{prefix}.{a.name}" for a in child.names], child, in_function)
                else:
                    add([prefix], child, in_function)
            visit(child, inner)

    visit(tree, False)
    return found


GRAPH = {name: _imports(path) for name, path in SOURCES.items()}


def _where(module: str, line: int) -> str:
    return f"{SOURCES[module].relative_to(ROOT)}:{line}"


def _package_job(package: str) -> str:
    doc = ast.get_docstring(ast.parse((SRC / package / "__init__.py").read_text())) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def tier_rows() -> list[tuple[str, str, str]]:
    """(tier, where, job) per tier: the code map's rows."""
    rows = []
    for name, members, job in TIERS:
        if isinstance(members, str):
            rows.append((name, f"nlb_ndt/{members}/", _package_job(members)))
        else:
            rows.append((name, ", ".join(f"{m}.py" for m in members), job))
    return rows


def test_the_parser_sees_known_imports():
    """Verify the reader itself: absolute, package-internal and `from pkg import x` imports."""
    edges = {m: {i.target for i in imps if i.internal} for m, imps in GRAPH.items()}
    assert "log" in edges["cli"]
    assert "datasets" in edges["config.defaults"]
    assert ROOT_PACKAGE in edges["data.download.http"]  # from nlb_ndt import __version__
    assert "data.preprocess" in edges["data.splits"]  # from nlb_ndt.data import preprocess
    assert "hyperopt.searcher" in edges["hyperopt"]  # hyperopt/__init__.py
    assert not any(i.in_function for i in GRAPH["paths"])


def test_every_module_is_in_a_tier_and_every_package_says_its_job():
    """Verify that each module of src/nlb_ndt belongs to a tier, that each listed top-level
    module exists, and that each tier package's __init__ docstring states its job."""
    unplaced = []
    for module in GRAPH:
        try:
            _tier_of(module)
        except KeyError:
            unplaced.append(module)
    assert not unplaced, f"modules in no tier (add them to TIERS): {sorted(unplaced)}"
    listed = [m for _, members, _ in TIERS if isinstance(members, list) for m in members]
    assert not [m for m in listed if m not in GRAPH], "TIERS lists missing modules"
    jobless = [members for _, members, _ in TIERS
               if isinstance(members, str) and not _package_job(members)]
    assert not jobless, f"packages without a one-line job in __init__: {jobless}"


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


def test_packages_import_only_packages_below_them():
    """Verify that every internal import stays in the importer's tier or goes down."""
    names = [name for name, _, _ in TIERS]
    bad = [f"{_where(m, i.line)}: {m} ({names[_tier_of(m)]}) imports {i.target} "
           f"({names[_tier_of(i.target)]})"
           for m, imps in GRAPH.items() for i in imps
           if i.internal and _tier_of(i.target) > _tier_of(m)]
    assert not bad, "imports up the tiers:\n" + "\n".join(bad)


def test_no_lazy_internal_imports_and_lazy_third_party_ones_say_why():
    """Verify that no function imports an nlb_ndt module, and that a function-level import of
    a third-party package other than LAZY_OK has a comment on its line."""
    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    internal = [_where(m, i.line) + f": imports {i.target} inside a function"
                for m, imps in GRAPH.items() for i in imps if i.internal and i.in_function]
    uncommented = [_where(m, i.line) + f": imports {i.target} inside a function, no comment"
                   for m, imps in GRAPH.items() for i in imps
                   if not i.internal and i.in_function and i.target not in stdlib
                   and i.target not in LAZY_OK and not i.commented]
    assert not internal + uncommented, "\n".join(internal + uncommented)


def test_ray_and_skopt_stay_inside_hyperopt():
    """Verify that only hyperopt/ imports Ray or scikit-optimize (at any level)."""
    bad = [_where(m, i.line) + f": imports {i.target}" for m, imps in GRAPH.items()
           if m.split(".")[0] != "hyperopt"
           for i in imps if not i.internal and i.target in SEARCH_ONLY]
    assert not bad, "\n".join(bad)
    assert any(i.target == "ray" for imps in GRAPH.values() for i in imps)  # the check bites


def _test_file(module: str) -> str | None:
    """tests/<package path>/test_<module>.py for nlb_ndt/<package path>/<module>.py."""
    if module == ROOT_PACKAGE or (SRC / module.replace(".", "/") / "__init__.py").is_file():
        return None  # a package's __init__
    if module in TESTED_WITH:
        return TESTED_WITH[module]
    *package, name = module.split(".")
    return "/".join([*package, f"test_{name}.py"])


def test_each_module_has_its_test_file_and_each_test_file_a_module():
    """Verify tests/<package>/test_<module>.py for every module, and a module for every test
    file (except the listed extras)."""
    wanted = {m: _test_file(m) for m in GRAPH}
    missing = sorted(f"{m} -> tests/{f}" for m, f in wanted.items()
                     if f and not (TESTS / f).is_file())
    present = {str(p.relative_to(TESTS)) for p in TESTS.rglob("test_*.py")
               if "fixtures" not in p.parts}
    orphans = sorted(present - set(wanted.values()) - EXTRA_TESTS)
    assert not missing, f"modules without a test file: {missing}"
    assert not orphans, f"test files that name no module: {orphans}"


def _long_functions(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    return [f"{path.relative_to(ROOT)}:{node.lineno} {node.name} "
            f"({node.end_lineno - node.lineno + 1} lines)"
            for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]


def test_modules_and_functions_are_short():
    """Verify that no module is over MAX_MODULE_LINES lines (but the synthetic generator's
    table of models) and no function over MAX_FUNCTION_LINES lines."""
    long_modules = [f"{p.relative_to(ROOT)} ({len(p.read_text().splitlines())} lines)"
                    for m, p in SOURCES.items() if m not in LONG_MODULES_OK
                    and len(p.read_text().splitlines()) > MAX_MODULE_LINES]
    long_functions = [f for p in SOURCES.values() for f in _long_functions(p)]
    assert not long_modules + long_functions, "\n".join(long_modules + long_functions)


def test_readme_code_map_lists_every_tier_with_its_job():
    """Verify that the README's package table is the TIERS table: one row per tier, in
    order, naming where it lives and its one-line job."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Code map", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| *(\d+)\. ([^|]+?) *\| *`?([^|`]+?)`? *\| *(.+?) *\|$", section,
                      re.MULTILINE)
    got = [(name, where.strip(), job.strip()) for _, name, where, job in rows]
    assert got == tier_rows(), "README code map (regenerate it from tests/" \
        "test_import_graph.py: python tests/test_import_graph.py):\n" + code_map_table()


def code_map_table() -> str:
    """The README's package table, generated from TIERS."""
    lines = ["| Tier | Where | Job |", "|---|---|---|"]
    for index, (name, where, job) in enumerate(tier_rows(), start=1):
        where = f"`{where}`" if where.startswith("nlb_ndt/") else where
        lines.append(f"| {index}. {name} | {where} | {job} |")
    return "\n".join(lines)


@pytest.mark.parametrize("module, test_file", [
    ("model.ndt", "model/test_ndt.py"), ("data.download.http", "data/download/test_http.py"),
    ("hyperopt.trainable", "hyperopt/test_trainable.py"), ("paths", "test_paths.py"),
    ("model", None), (ROOT_PACKAGE, None)])
def test_test_file_mapping_rules(module, test_file):
    """Verify the module -> test file rule, its listed exceptions and packages' __init__."""
    assert _test_file(module) == test_file


if __name__ == "__main__":
    print(code_map_table())
