"""scaling stays free of the runtime, stages and adapters (DESIGN.md "The house")."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import rlhfless.scaling

PACKAGE = Path(rlhfless.scaling.__file__).parent
ALLOWED = ("rlhfless.scaling", "rlhfless.cost_models", "rlhfless.runtime.messages")


def test_sources_import_only_cost_models_and_messages() -> None:
    for path in sorted(PACKAGE.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                if name.startswith("rlhfless"):
                    assert name.startswith(ALLOWED), f"{path.name} imports {name}"


def test_importing_the_package_loads_no_runtime_stages_or_torch() -> None:
    code = (
        "import sys, rlhfless.scaling\n"
        "print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('rlhfless', 'zmq', 'torch'))))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    loaded = set(done.stdout.split())
    outside = {
        m
        for m in loaded
        if not m.startswith(("rlhfless.scaling", "rlhfless.cost_models")) and m != "rlhfless"
    }
    assert outside <= {"rlhfless.runtime", "rlhfless.runtime.messages", "rlhfless.runtime.errors"}
