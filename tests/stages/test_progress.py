"""Progress of ``rlhfless train`` wherever its stderr goes: plain lines per iteration in a file
(the real command, a few iterations), and a bar whose counter and elapsed time survive an
80-column terminal."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from rich.console import Console

from rlhfless.stages.cli import ProgressReport

pytestmark = pytest.mark.timeout(120)

FAST = ["train.batch_prompts=4", "train.group_size=2", "train.epochs=1",
        "rollout.max_new_tokens=16", "train.iterations=3"]  # fmt: skip


def test_progress_lines_when_stderr_is_a_file(tmp_path: Path) -> None:
    log = tmp_path / "stderr.log"
    args = [a for o in FAST for a in ("--set", o)]
    with log.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "rlhfless.cli", "train", "--run-dir", str(tmp_path / "run"),
             *args],
            stdout=subprocess.PIPE, stderr=err, text=True,
            env={**os.environ, "COLUMNS": "200"},  # the summary table on one line per row
        )  # fmt: skip
        stdout, last = _read_timed(proc)
        code = proc.wait(110)
        exited = time.monotonic()
    text = log.read_text()
    assert code == 0, text[-2000:]
    # It exits as soon as its summary is out (tests/test_cli_exit.py): the interpreter's
    # teardown, 1.2 s with torch loaded, is skipped.
    assert exited - last < 0.6
    r = SimpleNamespace(stdout=stdout)
    lines = [x for x in text.splitlines() if x.startswith("iteration ")]
    assert [x.split()[1] for x in lines] == ["1/3", "2/3", "3/3"], text[-2000:]
    for line in lines:  # elapsed, reward, length and the stages' seconds
        assert re.search(r"\d+\.\ds  reward \d\.\d{3}  len \d+\.\d .*rollout \d+\.\d\ds", line), (
            line
        )
    assert "\x1b[" not in text and "\r" not in text  # no terminal control codes in a log
    assert "summary" in r.stdout
    # The summary's stage times add up to the iterations' wall time (no stage counted twice).
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    staged, whole = sum(summary["stage_seconds"].values()), summary["iteration_seconds"]
    assert 0.9 * whole <= staged <= whole + 1e-6, (summary["stage_seconds"], whole)
    assert f"(of {whole:.1f}s in iterations)" in r.stdout


def _read_timed(proc: subprocess.Popen[str]) -> tuple[str, float]:
    """All of ``proc``'s stdout, and when its last line was read."""
    assert proc.stdout is not None
    lines, last = [], time.monotonic()
    for line in proc.stdout:
        lines.append(line)
        last = time.monotonic()
    return "".join(lines), last


def _metrics(iteration: int) -> Any:
    """The fields the report reads (IterationMetrics has more, and they change)."""
    return SimpleNamespace(
        iteration=iteration, reward_mean=0.3125, response_len_mean=9.25,
        stage_seconds={"rollout": 0.21, "score": 0.05, "train": 0.33},
    )  # fmt: skip


@pytest.mark.parametrize("width", [80, 60])
def test_bar_keeps_counter_and_elapsed_in_a_narrow_terminal(width: int) -> None:
    out = io.StringIO()
    console = Console(file=out, width=width, force_terminal=True, color_system=None)
    report = ProgressReport(console, "grpo on tiny", 40)
    with report:
        report.iteration(_metrics(11))
    last = out.getvalue().split("\r")[-1]
    line = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", last).rstrip("\n")
    assert len(line) <= width, line
    assert "12/40" in line and re.search(r"\d:\d\d:\d\d", line), line
    assert "reward 0.312" in line  # the detail fills what is left, cut with an ellipsis
