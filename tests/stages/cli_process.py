"""``rlhfless train`` in a process of its own, as a user starts it, for the tests that signal it
(Ctrl-C, SIGKILL): tests/stages/test_run_dir_replace.py and test_resume_integrity.py."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# SIGINT at its default: a background job of a non-interactive shell (as under CI) inherits it
# ignored, and then Ctrl-C would do nothing.
_MAIN = (
    "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "from rlhfless.cli import main; sys.argv[0] = 'rlhfless'; sys.exit(main())"
)


def start_train(
    run_dir: Path, options: Sequence[str], *, merge_stderr: bool = False, text: bool = False
) -> subprocess.Popen[Any]:
    """``rlhfless train --run-dir RUN_DIR --set OPTION ...`` in its own session (its function
    processes go with it on SIGKILL); stdout piped, stderr piped or merged into it."""
    args = [a for o in options for a in ("--set", o)]
    return subprocess.Popen(
        [sys.executable, "-c", _MAIN, "train", "--run-dir", str(run_dir), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT if merge_stderr else subprocess.PIPE,
        text=text,
        start_new_session=True,
    )
