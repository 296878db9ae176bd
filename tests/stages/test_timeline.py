"""The iteration's picture, and the overlap it shows, from a real streamed run's billing events."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from rlhfless.stages.config import load_config
from rlhfless.stages.run import Job
from rlhfless.stages.timeline import TimelineError, read_run, segments, timeline, window

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(180)]


async def test_a_streamed_iteration_scores_groups_while_the_rollout_decodes(tmp_path: Path) -> None:
    """One rollout function on two slots: the other slot is free from the start, so reward and
    training work on complete groups before the rollout's last group is done."""
    cfg = load_config(None, [
        "train.batch_prompts=8", "train.group_size=4", "train.iterations=2", "train.epochs=1",
        "rollout.max_new_tokens=48", "rollout.functions=1", "runtime.slots=2",
        "task.sigma=1.4", "pipeline.stream=true", f"run.run_dir={tmp_path}",
    ])  # fmt: skip
    job = Job(cfg)
    await job.run()
    last = job.metrics[-1]
    assert last.streamed and last.overlapped_seconds > 0
    events, rows = read_run(tmp_path)
    start, end, title = window(rows, None)
    assert "iteration 1 (streamed)" in title
    busy = {e.stage: [(a, b) for a, b, k in segments(e, start, end) if k == "busy"] for e in events}
    rollout_end = max(b for _, b in busy["rollout"])
    assert min(a for a, _ in busy["reward"]) < rollout_end  # scored while the rollout ran
    png = timeline(tmp_path, 1, tmp_path / "t.png")
    assert png.stat().st_size > 10_000


def test_the_command_names_a_directory_that_is_not_a_run(tmp_path: Path) -> None:
    with pytest.raises(TimelineError, match="is it a run dir"):
        read_run(tmp_path)
    out = subprocess.run(
        [sys.executable, "-m", "rlhfless.cli", "timeline", str(tmp_path)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 1 and out.stderr.strip().startswith("error:")
    assert len(out.stderr.strip().splitlines()) == 1
