"""benchmarks/record_trace.py, run as a user runs it, writes a trace benchmarks/scaling.py reads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "record_trace.py"


def _record(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--set", f"run.run_dir={tmp_path / 'run'}", *args],
        capture_output=True, text=True, timeout=110, cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip


@pytest.mark.timeout(120)
def test_the_tiny_model_trace_has_every_prompt_once_per_epoch(tmp_path: Path) -> None:
    out_file = tmp_path / "trace.jsonl"
    cap = 24
    out = _record(
        tmp_path, "--set", f"rollout.max_new_tokens={cap}", "--prompts", "5", "--group", "3",
        "--epochs", "2", "--chunk", "2", "--out", str(out_file),
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [json.loads(line) for line in out_file.read_text().splitlines()]
    # Epochs in order, each with the task's first 5 prompts (chunks of 2 fill in order too).
    assert [(r["epoch"], r["prompt_id"]) for r in rows] == [
        (e, f"repeat/{i}") for e in range(2) for i in range(5)
    ]
    for r in rows:
        assert len(r["lengths"]) == 3 and all(1 <= x <= cap for x in r["lengths"])
        assert r["prompt_tokens"] > 0
        assert r["max_new_tokens"] == cap  # the limit the planner bounds remaining lengths by
    # Two epochs sample afresh: the same prompts, not the same lengths.
    assert [r["lengths"] for r in rows[:5]] != [r["lengths"] for r in rows[5:]]
    assert "wrote" in out.stderr


@pytest.mark.timeout(120)
def test_more_prompts_than_the_task_has_is_refused(tmp_path: Path) -> None:
    out = _record(tmp_path, "--set", "task.size=4", "--prompts", "5", "--out", "x.jsonl")
    assert out.returncode == 2
    assert "--prompts 5 is more than the task's 4 (task.size)" in out.stderr
    assert not (tmp_path / "x.jsonl").exists()
