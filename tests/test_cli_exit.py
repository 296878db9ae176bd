"""`rlhfless` exits as soon as its command is done: the interpreter's teardown (about a second
once torch is loaded) is skipped only when nothing is left running. That `rlhfless train` exits
as soon as its summary is out is checked by tests/stages/test_progress.py."""

from __future__ import annotations

import subprocess
import sys

# Run in an interpreter of its own: this one may hold Ray or other tests' threads.
_CHECK = """
import threading
import torch  # what makes the teardown slow: the fast exit is for it
from rlhfless.cli import _nothing_left_running as idle
assert idle(0) and idle(None)
assert not idle("an error message")  # click prints it at a normal exit
release = threading.Event()
writer = threading.Thread(target=release.wait)  # not a daemon: a normal exit joins it
writer.start()
assert not idle(0)
release.set()
writer.join()
threading.Thread(target=release.wait, daemon=True).start()
assert idle(0)  # a daemon thread dies at a normal exit too
try:
    import ray  # noqa: F401
except ImportError:  # without the [ray] extra
    pass
else:
    assert not idle(0)  # Ray's driver disconnects at exit
print("ok")
"""


def test_a_running_writer_thread_or_ray_keeps_the_normal_exit() -> None:
    out = subprocess.run([sys.executable, "-c", _CHECK], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
