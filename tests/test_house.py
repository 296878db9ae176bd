"""The house's one-way imports (DESIGN.md "The house"), checked on every package's sources."""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "rlhfless"

# package -> what it may import from rlhfless besides itself
ALLOWED: dict[str, tuple[str, ...]] = {
    "runtime": (),
    "cost_models": ("rlhfless.runtime.messages",),
    "scaling": ("rlhfless.cost_models", "rlhfless.runtime.messages"),
    "sim": ("rlhfless.scaling", "rlhfless.cost_models", "rlhfless.runtime.messages"),
    "adapters": ("rlhfless.runtime",),  # adapters use runtime; runtime never names them
    # stages compose; sim (errors, estimate) is not in DESIGN.md's list but stages use it today.
    "stages": (
        "rlhfless.runtime",
        "rlhfless.scaling",
        "rlhfless.cost_models",
        "rlhfless.adapters",
        "rlhfless.sim",
    ),
}


def rlhfless_imports(package: str) -> list[tuple[str, str]]:
    """(file, module) for every rlhfless module a package's sources import."""
    out = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            else:
                continue
            out.extend((path.name, n) for n in names if n.startswith("rlhfless."))
    return out


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_package_imports_only_what_the_house_allows(package: str) -> None:
    own = f"rlhfless.{package}"
    found = rlhfless_imports(package)
    assert found, f"no imports found under {package}: is the path right?"
    for file, name in found:
        if name == own or name.startswith(own + "."):
            continue
        allowed = any(name == a or name.startswith(a + ".") for a in ALLOWED[package])
        assert allowed, f"{package}/{file} imports {name}"


def module_graph(package: str) -> dict[str, set[str]]:
    """module -> the modules of the same package it imports (any depth: TYPE_CHECKING too)."""
    pkg = f"rlhfless.{package}"
    graph: dict[str, set[str]] = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        rel = path.relative_to(ROOT.parent).with_suffix("")
        mod = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        deps = graph.setdefault(mod, set())
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            deps.update(n for n in names if n.startswith(pkg + ".") and n != mod)
    return {m: {d for d in deps if d in graph or _exists(d)} for m, deps in graph.items()}


def _exists(module: str) -> bool:
    rel = Path(*module.split(".")[1:])
    return (ROOT / rel).with_suffix(".py").exists() or (ROOT / rel / "__init__.py").exists()


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component with more than one module (or a self-loop)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in graph.get(v, ()):
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_cycles_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


# Cycles found when this test was written (TYPE_CHECKING imports included); each mark turns
# into a failure (strict) the moment its cycle is gone, and must then be removed.
KNOWN_CYCLES: dict[str, str] = {}


def _cycle_case(package: str) -> object:
    if package not in KNOWN_CYCLES:
        return package
    reason = f"known cycle: {KNOWN_CYCLES[package]}"
    return pytest.param(package, marks=pytest.mark.xfail(strict=True, reason=reason))


@pytest.mark.parametrize(
    "package",
    [_cycle_case(p) for p in ("runtime", "scaling", "cost_models", "sim", "adapters", "stages")],
)
def test_no_import_cycles_inside_a_package(package: str) -> None:
    found = cycles(module_graph(package))
    assert not found, f"import cycles in {package}: " + "; ".join(" <-> ".join(c) for c in found)


@pytest.mark.skipif(
    importlib.util.find_spec("mypy") is None, reason="mypy is not installed (pip install -e .[dev])"
)
def test_mypy_reports_no_errors() -> None:
    """The type check CI runs (pyproject.toml [tool.mypy] names the files and strictness), by
    this interpreter's mypy: a venv's python run without activating the venv finds it too."""
    proc = subprocess.run(
        [sys.executable, "-m", "mypy"], cwd=ROOT.parent, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]


MAX_FUNCTION_LINES = 80  # "small functions (a screenful)": DESIGN.md's style


def long_functions(path: Path, limit: int) -> list[str]:
    """``name (n lines)`` for each function (methods and nested ones too) over ``limit``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            lines = (node.end_lineno or node.lineno) - node.lineno + 1
            if lines > limit:
                found.append(f"{path.name}:{node.name} ({lines} lines)")
    return found


def test_long_functions_finds_one(tmp_path: Path) -> None:
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    (tmp_path / "m.py").write_text(f"def f():\n{body}\n\ndef g():\n    return 1\n")
    assert long_functions(tmp_path / "m.py", MAX_FUNCTION_LINES) == [
        f"m.py:f ({MAX_FUNCTION_LINES + 1} lines)"
    ]


def test_no_function_in_stages_is_longer_than_a_screen() -> None:
    found = [
        f
        for p in sorted((ROOT / "stages").glob("*.py"))
        for f in long_functions(p, MAX_FUNCTION_LINES)
    ]
    assert not found, f"functions over {MAX_FUNCTION_LINES} lines in stages/: {found}"
