"""benchmarks/stream_bound.py, run as a user runs it: the streamed rule's bound, worked by hand."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "stream_bound.py"
# 1 s per decode step whatever the batch; 1 s per token on one core, 0.5 s on both; no step.
SPEEDS = {"speeds": {"t0": 1.0, "t1": 0.0, "c1": 1.0, "c_all": 0.5, "step": 0.0}}


def _trace(path: Path, lengths: tuple[int, int]) -> str:
    path.write_text(
        "".join(
            json.dumps({"prompt_id": i, "lengths": [n], "prompt_tokens": 0}) + "\n"
            for i, n in enumerate(lengths)
        )
    )
    return str(path)


def test_the_bound_is_the_streamed_rule_worked_by_hand(tmp_path: Path) -> None:
    (tmp_path / "speeds.json").write_text(json.dumps(SPEEDS))
    out = tmp_path / "bound.json"
    subprocess.run(
        [sys.executable, str(SCRIPT), "--speeds", str(tmp_path / "speeds.json"), "--cores", "2",
         "--trace", _trace(tmp_path / "long.jsonl", (10, 30)),
         "--trace", _trace(tmp_path / "short.jsonl", (10, 12)),
         "--caps", "1.0", "0.5", "--groups", "1", "--per-function", "1", "--iterations", "3",
         "--out", str(out)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    rows = {(r["trace"], r["cap"]): r for r in json.loads(out.read_text())["rows"]}
    cases = {
        # Function A ends at 10 s; its sample trains on the freed core from 10 to 20 s, inside
        # the tail. B's sample ends with the rollout (30 s): 30 tokens on both cores, 15 s.
        ("long", 30): (30 + 40 * 0.5, 30 + 30 * 0.5, 2 / 3),
        # A cap of 15 shortens B: by 15 s only 5 of A's 10 tokens are done on its core.
        ("long", 15): (15 + 25 * 0.5, 15 + (5 + 15) * 0.5, 1 / 3),
        # A short tail: by 12 s only 2 of A's 10 tokens are done; the other 8 and B's 12 train
        # on both cores after the rollout.
        ("short", 12): (12 + 22 * 0.5, 12 + 20 * 0.5, 1 / 6),
        ("short", 6): (6 + 12 * 0.5, 6 + 12 * 0.5, 0.0),  # both capped: no tail, no gain
    }
    assert set(rows) == set(cases)
    for key, (staged, streamed, tail) in cases.items():
        assert rows[key]["staged_s"] == pytest.approx(staged), key
        assert rows[key]["bound"] == pytest.approx(staged / streamed), key
        assert rows[key]["tail_share"] == pytest.approx(tail), key
        assert rows[key]["tailed"] == (1.0 if tail >= 0.4 else 0.0), key


def test_a_bad_trace_line_is_one_clear_error(tmp_path: Path) -> None:
    trace = tmp_path / "bad.jsonl"
    trace.write_text('{"prompt_id": 0, "lengths": [3]}\n')  # no prompt_tokens
    (tmp_path / "speeds.json").write_text(json.dumps(SPEEDS))
    r = subprocess.run(
        [sys.executable, str(SCRIPT), "--trace", str(trace), "--speeds",
         str(tmp_path / "speeds.json"), "--out", str(tmp_path / "o.json")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert r.returncode != 0
    assert r.stderr.strip().splitlines() == [
        f"{trace}:1: not a trace line (KeyError('prompt_tokens'))"
    ]
