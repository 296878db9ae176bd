"""cost_models stays free of the runtime (DESIGN.md: only runtime/messages.py is shared)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import rlhfless.cost_models

PACKAGE = Path(rlhfless.cost_models.__file__).parent


def test_sources_import_only_messages_from_the_runtime() -> None:
    for path in sorted(PACKAGE.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                if name.startswith("rlhfless.") and not name.startswith("rlhfless.cost_models"):
                    assert name == "rlhfless.runtime.messages", f"{path.name} imports {name}"


def test_importing_the_package_loads_no_sockets_processes_or_torch() -> None:
    code = (
        "import sys, rlhfless.cost_models, rlhfless.cost_models.cli\n"
        "print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('rlhfless', 'zmq', 'torch', 'matplotlib'))))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    loaded = set(done.stdout.split())
    outside = {m for m in loaded if not m.startswith("rlhfless.cost_models")} - {"rlhfless"}
    assert outside <= {"rlhfless.runtime", "rlhfless.runtime.messages", "rlhfless.runtime.errors"}
