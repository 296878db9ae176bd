"""A fresh run in a directory that holds an earlier run (stages/run.py, EarlierRun): the earlier
run survives a new run that fails or is stopped before its first iteration, and never mixes with
one that gets past it. Real runs of the tiny model; real signals to a real ``rlhfless train``."""

import asyncio
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from rlhfless.stages.run import Job, RunError
from rlhfless.stages.run_dir import FAILED, OUTPUTS, REPLACED, EarlierRun, run_outputs
from tests.stages.cli_process import start_train
from tests.stages.test_pipeline import SMALL, _cfg

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(180)]


def _snapshot(run_dir: Path) -> dict[str, bytes]:
    """Every file of the run's record, by path; model/ is a rebuilt cache, not the record."""
    return {
        p.relative_to(run_dir).as_posix(): p.read_bytes()
        for p in sorted(run_dir.rglob("*"))
        if p.is_file() and p.relative_to(run_dir).parts[0] not in ("model", FAILED)
    }


def _leftovers(run_dir: Path) -> list[str]:
    return sorted(p.name for p in run_dir.iterdir() if p.name.startswith(REPLACED))


@pytest.fixture(scope="module")
def earlier_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One finished 2-iteration run, copied by each test (a real run costs seconds)."""
    run_dir = tmp_path_factory.mktemp("earlier") / "run"
    asyncio.run(Job(_cfg(run_dir, "train.iterations=2")).run())
    return run_dir


def _copy(earlier_run: Path, tmp_path: Path) -> tuple[Path, dict[str, bytes]]:
    run_dir = tmp_path / "run"
    shutil.copytree(earlier_run, run_dir)
    before = _snapshot(run_dir)
    assert {"metrics.jsonl", "billing.jsonl", "lengths.jsonl", "summary.json"} <= set(before)
    assert any(k.startswith("state/") for k in before)
    assert "checkpoints/latest" in before and before["metrics.jsonl"].count(b"\n") == 2
    return run_dir, before


async def test_failed_start_keeps_the_earlier_run_then_a_new_run_replaces_it(
    earlier_run: Path, tmp_path: Path
) -> None:
    run_dir, before = _copy(earlier_run, tmp_path)
    # Fails inside the runtime: the rollout function cannot read the model's weights.
    corrupt = tmp_path / "corrupt-model"
    shutil.copytree(earlier_run / "model", corrupt)
    (corrupt / "model.safetensors").write_bytes(b"\xff" * 1000)
    with pytest.raises(Exception, match="cannot load the model"):
        await Job(
            _cfg(run_dir, "train.iterations=2", "model.kind=dir", f"model.path={corrupt}")
        ).run()
    assert _snapshot(run_dir) == before, "the earlier run's record changed"
    assert _leftovers(run_dir) == []
    failed = run_dir / FAILED
    assert (failed / "billing.jsonl").read_text().count("\n") >= 1  # its dead functions
    assert (failed / "metrics.jsonl").read_bytes() == b""

    # A new run that gets going replaces the earlier one entirely: its own history only.
    job = Job(_cfg(run_dir, "train.iterations=1"))
    summary = await job.run()
    assert _leftovers(run_dir) == []
    assert (run_dir / "metrics.jsonl").read_text().count("\n") == 1
    assert json.loads((run_dir / "summary.json").read_text())["iterations"] == 1
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["iter-000001", "latest"]
    billed = {json.loads(line)["function_id"] for line in (run_dir / "billing.jsonl").open()}
    old = {json.loads(line)["function_id"] for line in before["billing.jsonl"].splitlines()}
    assert billed and not billed & old
    # Defect 4: the summary's dollars add up.
    for name, d in summary["dollars"].items():
        assert d["busy"] + d["idle"] + d["cold_start"] == pytest.approx(d["total"]), name
        assert d["cold_start"] > 0, name  # every function here started cold once

    # --resume continues the new run, not the old one.
    resumed = Job(_cfg(run_dir, "train.iterations=2", "run.resume=true"))
    await resumed.run()
    assert [m.iteration for m in resumed.metrics] == [1]
    assert (run_dir / "metrics.jsonl").read_text().count("\n") == 2
    assert (run_dir / "checkpoints" / "latest").read_text() == "iter-000002"


def _train(run_dir: Path, *extra: str) -> subprocess.Popen[bytes]:
    return start_train(run_dir, [*SMALL, *extra], merge_stderr=True)


def _wait_for_attempt(run_dir: Path, proc: subprocess.Popen[bytes]) -> None:
    """Until the new run has set the earlier aside and opened its own metrics file."""
    deadline = time.monotonic() + 60
    while not (run_dir / REPLACED).is_dir() or not (run_dir / "metrics.jsonl").exists():
        assert proc.poll() is None, proc.communicate()[0].decode()[-2000:]
        assert time.monotonic() < deadline, "the new run never started"
        time.sleep(0.02)


def test_ctrl_c_before_the_first_iteration_puts_the_earlier_run_back(
    earlier_run: Path, tmp_path: Path
) -> None:
    run_dir, before = _copy(earlier_run, tmp_path)
    proc = _train(run_dir, "train.iterations=2")
    _wait_for_attempt(run_dir, proc)
    proc.send_signal(signal.SIGINT)
    out = proc.communicate(timeout=60)[0].decode()
    assert proc.returncode != 0, out[-2000:]
    assert "earlier run's are back" in out, out[-2000:]
    assert _snapshot(run_dir) == before
    assert _leftovers(run_dir) == []
    assert (run_dir / FAILED / "metrics.jsonl").read_bytes() == b""


def test_a_killed_start_is_put_back_by_the_next_run(earlier_run: Path, tmp_path: Path) -> None:
    run_dir, before = _copy(earlier_run, tmp_path)
    proc = _train(run_dir, "train.iterations=2")
    try:
        _wait_for_attempt(run_dir, proc)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # no handler runs: .replaced/ stays behind
        proc.communicate(timeout=60)
    assert _leftovers(run_dir) == [REPLACED]
    assert (run_dir / REPLACED / "metrics.jsonl").read_bytes() == before["metrics.jsonl"]

    # The next run puts the earlier run back before reading anything: --resume continues it.
    resumed = Job(_cfg(run_dir, "train.iterations=3", "run.resume=true"))
    asyncio.run(resumed.run())
    assert [m.iteration for m in resumed.metrics] == [2]
    assert _leftovers(run_dir) == []
    assert (run_dir / "metrics.jsonl").read_bytes().startswith(before["metrics.jsonl"])
    assert (run_dir / FAILED / "metrics.jsonl").read_bytes() == b""


# Disk states a killed process leaves, each on plain files: put_back finishes or undoes it.


def _earlier_files(run_dir: Path, ckpt: str = "checkpoints") -> dict[str, bytes]:
    files = {
        "metrics.jsonl": b"old metrics\n",
        "summary.json": b"{}",
        "state/policy/version": b"2",
        f"{ckpt}/latest": b"iter-000002",
    }
    for rel, data in files.items():
        (run_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        (run_dir / rel).write_bytes(data)
    return _snapshot(run_dir)


def test_checkpoints_nested_in_the_run_dir_move_and_ones_outside_stay(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    outputs = run_outputs(run_dir, run_dir / "ck" / "a")
    assert outputs == (*OUTPUTS, "ck/a")
    before = _earlier_files(run_dir, "ck/a")
    (run_dir / "ck" / "notes.txt").write_text("the user's")  # beside it, not the run's
    earlier = EarlierRun(run_dir, outputs)
    assert earlier.set_aside()
    assert not (run_dir / "ck" / "a").exists() and (run_dir / "ck" / "notes.txt").exists()
    (run_dir / "metrics.jsonl").write_text("new\n")
    (run_dir / "ck" / "a").mkdir()
    assert earlier.put_back()
    assert _snapshot(run_dir) == {**before, "ck/notes.txt": b"the user's"}
    assert (run_dir / FAILED / "metrics.jsonl").read_text() == "new\n"
    assert (run_dir / FAILED / "ck" / "a").is_dir()

    assert run_outputs(run_dir, tmp_path / "elsewhere") == OUTPUTS
    assert run_outputs(run_dir, run_dir) == OUTPUTS
    assert run_outputs(run_dir, run_dir / "state" / "ck") == OUTPUTS  # moves with state/


def test_every_cut_short_step_is_finished_or_undone(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    before = _earlier_files(run_dir)
    earlier = EarlierRun(run_dir, OUTPUTS)

    # Set-aside cut short: half the outputs in .replaced.tmp/, nothing of a new run yet.
    earlier.staging.mkdir()
    (earlier.staging / "manifest.json").write_text(
        json.dumps({"earlier": ["metrics.jsonl", "state"], "attempt": list(OUTPUTS)})
    )
    os.rename(run_dir / "state", earlier.staging / "state")
    assert EarlierRun(run_dir, OUTPUTS).put_back()
    assert _snapshot(run_dir) == before and _leftovers(run_dir) == []

    # Put-back cut short after the new run's files left: the rest comes back.
    assert earlier.set_aside()
    earlier.aside.rename(earlier.returning)
    os.rename(earlier.returning / "summary.json", run_dir / "summary.json")
    assert EarlierRun(run_dir, OUTPUTS).put_back()
    assert _snapshot(run_dir) == before and _leftovers(run_dir) == []

    # Discard cut short: the new run had completed an iteration; the rest is deleted.
    assert earlier.set_aside()
    (run_dir / "metrics.jsonl").write_text("new\n")
    earlier.aside.rename(earlier.discarded)
    assert not EarlierRun(run_dir, OUTPUTS).put_back()
    assert _leftovers(run_dir) == [] and _snapshot(run_dir) == {"metrics.jsonl": b"new\n"}


def test_files_that_cannot_go_back_are_kept_and_block_a_new_set_aside(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    _earlier_files(run_dir)
    earlier = EarlierRun(run_dir, OUTPUTS)
    assert earlier.set_aside()
    earlier.aside.rename(earlier.returning)  # as a put_back cut short after the new run left
    (run_dir / "summary.json").write_text("someone's")  # ...and then this appeared
    earlier.put_back()
    assert (earlier.returning / "summary.json").read_bytes() == b"{}"  # kept, not overwritten
    assert (run_dir / "summary.json").read_text() == "someone's"
    with pytest.raises(RunError, match="move them by hand"):
        earlier.set_aside()


def test_a_fresh_run_refuses_a_checkpoint_dir_outside_holding_another_runs(
    tmp_path: Path,
) -> None:
    """Pruning keeps the highest-numbered checkpoints: a fresh run writing beside an earlier
    run's iter-000040 would have its own deleted and ``latest`` point into a mix."""
    shared = tmp_path / "ckpt"
    (shared / "iter-000040").mkdir(parents=True)
    (shared / "latest").write_text("iter-000040")
    run_dir = tmp_path / "run"
    job = Job(_cfg(run_dir, f"checkpoint.dir={shared}", "train.iterations=1"))
    with pytest.raises(RunError, match=r"checkpoint.dir .*ckpt holds an earlier run's .*--resume"):
        asyncio.run(job.run())
    assert sorted(p.name for p in shared.iterdir()) == ["iter-000040", "latest"]
    assert not (run_dir / "metrics.jsonl").exists()
