"""The house's one-way imports (DESIGN.md "The house"), checked on every package's sources."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "rlhfless"

# package -> what it may import from rlhfless besides itself
ALLOWED: dict[str, tuple[str, ...]] = {
    "runtime": (),
    "cost_models": ("rlhfless.runtime.messages",),
    "scaling": ("rlhfless.cost_models", "rlhfless.runtime.messages"),
    "sim": ("rlhfless.scaling", "rlhfless.cost_models", "rlhfless.runtime.messages"),
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
