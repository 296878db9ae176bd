"""scaling stays free of the runtime, stages and adapters (DESIGN.md "The house")."""

from __future__ import annotations

import subprocess
import sys


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
