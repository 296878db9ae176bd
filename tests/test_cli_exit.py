"""`rlhfless` exits as soon as its command is done, with everything written: the interpreter's
teardown (about a second once torch is loaded) is skipped only when nothing is left running."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path


def test_train_exits_as_soon_as_its_summary_is_out(tmp_path: Path) -> None:
    run = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "rlhfless.cli", "train", "--run-dir", str(run),
         "--set", "train.batch_prompts=2", "--set", "train.group_size=2",
         "--set", "rollout.max_new_tokens=8", "--set", "train.iterations=1"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    last = time.monotonic()
    for line in proc.stdout:
        if line.startswith("└"):  # the summary table's last line
            last = time.monotonic()
    assert proc.wait(60) == 0
    assert time.monotonic() - last < 0.6  # was 1.2 s with the interpreter's teardown
    summary = json.loads((run / "summary.json").read_text())
    assert summary["iterations"] == 1
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1
    assert list((run / "checkpoints").iterdir())


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
