"""The import direction and the layout: local_runs -> entry -> knn, no cycles, one place per backend.

Every import statement counts, also those inside functions (a late import is still a dependency).
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("knn", "entry", "local_runs")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for package in PACKAGES for p in (ROOT / package).rglob("*.py")}


def _imports(path: Path, known: set[str]) -> set[str]:
    """The project modules a file imports (`from a.b import c` counts as a.b.c when c is a module)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in known else node.module
                     for alias in node.names]
        else:
            continue
        found.update(name for name in names if name.split(".")[0] in PACKAGES)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(path, known) for name, path in modules.items()}


def test_knn_imports_nothing_of_entry_or_local_runs():
    bad = {m: sorted(i for i in imports if not i.startswith("knn"))
           for m, imports in _graph().items() if m.startswith("knn")}
    assert not {m: i for m, i in bad.items() if i}, bad


def test_entry_imports_only_knn():
    bad = {m: sorted(i for i in imports if i.split(".")[0] == "local_runs")
           for m, imports in _graph().items() if m.startswith("entry")}
    assert not {m: i for m, i in bad.items() if i}, bad


def _find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    state: dict[str, int] = {}  # 1 visiting, 2 done
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for target in sorted(graph.get(node, ())):
            if target not in graph or target == node:
                continue
            if state.get(target) == 1:
                cycles.append(stack[stack.index(target):] + [target])
            elif state.get(target) is None:
                visit(target, stack + [target])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return cycles


def test_no_import_cycles_among_project_modules():
    cycles = _find_cycles(_graph())
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_the_checker_sees_late_imports_and_cycles(tmp_path):
    (tmp_path / "a.py").write_text("def f():\n    from local_runs import b\n")
    (tmp_path / "b.py").write_text("from local_runs.a import f\n")
    known = {"local_runs.a", "local_runs.b"}
    graph = {"local_runs.a": _imports(tmp_path / "a.py", known), "local_runs.b": _imports(tmp_path / "b.py", known)}
    assert graph == {"local_runs.a": {"local_runs.b"}, "local_runs.b": {"local_runs.a"}}
    assert _find_cycles(graph) == [["local_runs.a", "local_runs.b", "local_runs.a"]]


def test_backend_names_are_branched_on_only_inside_backends():
    pattern = re.compile(r"""(backend\.name|settings\.backend|\.backend)\s*[!=]=\s*["'](sim|docker|sagemaker)["']""")
    offenders = []
    for path in (ROOT / "local_runs").rglob("*.py"):
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith("local_runs/backends/") or rel == "local_runs/config.py":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(line):
                offenders.append(f"{rel}:{number}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def test_readme_layout_table_matches_the_tree():
    readme = (ROOT / "README.md").read_text()
    layout = readme.split("## Layout", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"`((?:knn|entry|local_runs|bench|tests|fixtures|docs)/[^`]*)`", layout))
    missing = sorted(p for p in named if not (ROOT / p.rstrip("/")).exists())
    assert not missing, f"README Layout names paths that do not exist: {missing}"
    top = sorted(p.name + ("/" if p.is_dir() else "") for p in (ROOT / "local_runs").iterdir()
                 if p.name != "__pycache__" and not p.name.startswith("."))
    unnamed = [name for name in top if f"local_runs/{name}" not in layout and name not in ("__init__.py", "__main__.py")]
    assert not unnamed, f"README Layout does not say what these are: {unnamed}"


def test_conftest_groups_every_module_that_takes_the_toys_model():
    """pytest-xdist runs TOYS_MODEL_MODULES as one unit on one worker; a module missing from it would
    wait on the other worker's build instead of running beside it."""
    from conftest import TOYS_MODEL_MODULES

    takes = sorted(f"tests/{path.name}" for path in (ROOT / "tests").glob("test_*.py")
                   if re.search(r"def \w+\([^)]*\btoys_model_dir\b", path.read_text()))
    assert takes == sorted(TOYS_MODEL_MODULES)
