"""cost_models stays free of the runtime (DESIGN.md: only runtime/messages.py is shared)."""

from __future__ import annotations

import subprocess
import sys


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
