"""``--resume`` keeps the run's record whole (stages/run.py): the history after the checkpoint is
cut back before it is written again, a resume that would train another model or algorithm, or
has nothing to do, is refused before any function starts, the summary says which part of the run
it covers, and Ctrl-C says where the run stopped. Real runs of the tiny model, no mocks."""

import asyncio
import json
import math
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rich.console import Console

from rlhfless.stages.cli import print_summary
from rlhfless.stages.config import load_config
from rlhfless.stages.run import Job, NothingToDo, RunError
from tests.stages.cli_process import start_train

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120)]

FAST = [
    "train.batch_prompts=4",
    "train.group_size=2",
    "train.epochs=1",
    "rollout.max_new_tokens=16",
    "runtime.slots=2",
    "checkpoint.every=2",
    "checkpoint.keep=3",
]
BATCH = 4


def _cfg(run_dir: Path, *extra: str):
    return load_config(None, [*FAST, f"run.run_dir={run_dir}", *extra])


def _iterations(run_dir: Path) -> list[int]:
    return [json.loads(line)["iteration"] for line in (run_dir / "metrics.jsonl").open()]


def _lines(path: Path) -> int:
    return path.read_bytes().count(b"\n")


@pytest.fixture(scope="module")
def five_done(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 5-iteration run, checkpoints at 2, 4 and 5 (each test copies it)."""
    run_dir = tmp_path_factory.mktemp("five") / "run"
    asyncio.run(Job(_cfg(run_dir, "train.iterations=5")).run())
    return run_dir


def _interrupted_after_iteration_4(five_done: Path, tmp_path: Path) -> Path:
    """The state a run killed after iteration 4 leaves: history to 4, latest checkpoint at 4
    (next_iteration 4), as if the end-of-run checkpoint iter-000005 was never written."""
    run_dir = tmp_path / "run"
    shutil.copytree(five_done, run_dir)
    shutil.rmtree(run_dir / "checkpoints" / "iter-000005")
    (run_dir / "checkpoints" / "latest").write_text("iter-000004")
    assert _iterations(run_dir) == [0, 1, 2, 3, 4]
    return run_dir


@pytest.mark.parametrize("meta_has_lines", [True, False], ids=["lines-in-meta", "older-meta"])
async def test_resume_writes_each_iteration_once(
    five_done: Path, tmp_path: Path, meta_has_lines: bool
) -> None:
    run_dir = _interrupted_after_iteration_4(five_done, tmp_path)
    meta_path = run_dir / "checkpoints" / "iter-000004" / "meta.json"
    meta = json.loads(meta_path.read_text())
    assert meta["lines"] == {"metrics.jsonl": 4, "lengths.jsonl": 4 * BATCH}
    if not meta_has_lines:  # a checkpoint written before meta recorded them: count per batch
        del meta["lines"]
        meta_path.write_text(json.dumps(meta))
    billed = _lines(run_dir / "billing.jsonl")

    job = Job(_cfg(run_dir, "train.iterations=6", "run.resume=true"))
    summary = await job.run()

    assert _iterations(run_dir) == [0, 1, 2, 3, 4, 5]
    assert _lines(run_dir / "lengths.jsonl") == 6 * BATCH
    sampled = [json.loads(line)["iteration"] for line in (run_dir / "samples.jsonl").open()]
    assert sorted(set(sampled)) == [0, 1, 2, 3, 4, 5]  # iteration 4's samples once, not twice
    assert len(sampled) == 6 * len([i for i in sampled if i == 0])
    assert _lines(run_dir / "billing.jsonl") > billed  # kept whole: those functions were billed
    assert not list(run_dir.glob("*.tmp"))
    # The summary is this session's, and says so; the whole run's cost is there too.
    assert summary["iterations"] == 2
    assert summary["session"] == {"resumed": True, "first_iteration": 4, "run_iterations": 6}
    assert set(summary["dollars_run"]) == set(summary["dollars"])
    assert summary["dollars_run"]["aws"]["total"] > summary["dollars"]["aws"]["total"]
    assert json.loads((run_dir / "summary.json").read_text())["session"] == summary["session"]
    console = Console(record=True, width=200)
    print_summary(console, summary, str(run_dir))
    text = console.export_text()
    assert "4-5 of 6 (this session)" in text
    assert "cost (aws, this session)" in text and "cost (aws, whole run)" in text


def _record(run_dir: Path) -> dict[str, bytes]:
    return {
        p.relative_to(run_dir).as_posix(): p.read_bytes()
        for p in sorted(run_dir.rglob("*"))
        if p.is_file() and p.relative_to(run_dir).parts[0] != "model"
    }


@pytest.mark.parametrize(
    ("setting", "saved"),
    [("model.tiny_size=small", '"tiny"'), ("model.seed=7", "0"), ("train.algo=ppo", '"grpo"')],
)
async def test_resume_with_another_model_or_algorithm_is_refused(
    five_done: Path, tmp_path: Path, setting: str, saved: str
) -> None:
    run_dir = _interrupted_after_iteration_4(five_done, tmp_path)
    before = _record(run_dir)
    key, new = setting.split("=")
    with pytest.raises(RunError) as info:  # even when "allowed": the checkpoint holds its state
        await Job(
            _cfg(run_dir, "train.iterations=6", "run.resume=true", setting), None, [key]
        ).run()
    message = str(info.value)
    assert f"{key} = " in message and f"{key} = {saved}" in message and new in message
    assert "\n" not in message
    assert _record(run_dir) == before  # nothing started, nothing billed, nothing cut


async def test_resume_at_the_end_does_nothing(five_done: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(five_done, run_dir)
    before = _record(run_dir)
    for iterations in (5, 3):
        with pytest.raises(NothingToDo, match="nothing to do: the run is at iteration 5 of "):
            await Job(_cfg(run_dir, f"train.iterations={iterations}", "run.resume=true")).run()
    assert _record(run_dir) == before  # summary.json and billing.jsonl untouched


def _cli(run_dir: Path, *extra: str) -> subprocess.Popen[str]:
    return start_train(run_dir, [*FAST, *extra], text=True)


def test_cli_resume_at_the_end_exits_0_with_one_line(five_done: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(five_done, run_dir)
    args = [a for o in [*FAST, "train.iterations=5"] for a in ("--set", o)]
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "rlhfless.cli",
            "train",
            "--resume",
            "--run-dir",
            str(run_dir),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert "nothing to do: the run is at iteration 5 of train.iterations = 5" in r.stderr
    assert "error" not in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert "summary" not in r.stdout  # no summary of a session that did not happen


def test_ctrl_c_says_where_the_run_stopped_and_how_to_resume(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    proc = _cli(run_dir, "train.iterations=40")
    deadline = time.monotonic() + 60
    while not (run_dir / "checkpoints" / "latest").is_file():  # iteration 2 checkpointed
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.monotonic() < deadline, "no checkpoint within 60 s"
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    err = proc.communicate(timeout=60)[1]
    assert proc.returncode == 130, err[-2000:]
    line = next((x for x in err.splitlines() if x.startswith("interrupted at iteration ")), None)
    assert line is not None, err[-2000:]
    assert " of 40; latest checkpoint " in line and "iter-0000" in line, line
    assert f"rlhfless train --resume --run-dir {run_dir}" in line, line
    stopped = int(line.split()[3])
    assert stopped == len(_iterations(run_dir)) >= 2


async def test_resume_plans_with_the_scalers_saved_state(five_done: Path, tmp_path: Path) -> None:
    """The scaler's length history and calibrated speeds travel in the checkpoint: a resumed
    run's first plan starts from them, not from the priors a fresh run starts with."""
    run_dir = _interrupted_after_iteration_4(five_done, tmp_path)
    saved = json.loads((run_dir / "checkpoints" / "iter-000004" / "scaler.json").read_text())
    assert saved["predictor"]["counts"]  # prompts seen in iterations 0-3
    fresh = [json.loads(line)["scaling"] for line in (five_done / "metrics.jsonl").open()]
    await Job(_cfg(run_dir, "train.iterations=5", "run.resume=true")).run()
    resumed = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])["scaling"]
    # Iteration 0 planned on the priors (a 7B model's speeds, 8 s cold starts); iteration 4,
    # resumed cold too, on what iterations 0-3 measured on this CPU. Planned on the priors
    # again, iteration 4's unseen prompts would predict within a few % of iteration 0's; how
    # far the calibrated plan lies from it depends on the machine's load (0.3-0.7x seen), so
    # the test asks for a clear difference, not a ratio.
    ratio = resumed["predicted_seconds"] / fresh[0]["predicted_seconds"]
    assert abs(math.log(ratio)) > math.log(1.25), (resumed, fresh[0])


# --------------------------------------------------------------------------- resume keeps settings


def _changes(run_dir: Path) -> list[dict]:
    path = run_dir / "changes.jsonl"
    return [json.loads(line) for line in path.open()] if path.is_file() else []


async def test_resume_refuses_a_training_change_naming_each_key_and_both_values(
    five_done: Path, tmp_path: Path
) -> None:
    run_dir = _interrupted_after_iteration_4(five_done, tmp_path)
    before = _record(run_dir)
    cfg = _cfg(run_dir, "train.iterations=6", "run.resume=true", "train.lr=0.5",
               "train.kl_coef=0.05", "runtime.keep_alive_s=10")  # fmt: skip
    with pytest.raises(RunError) as info:
        await Job(cfg, None, ["train.kl_coef"]).run()  # one allowed, the other not
    message = str(info.value)
    assert "train.lr 0.003 -> 0.5" in message and "--allow-changes train.lr" in message, message
    assert "kl_coef" not in message and "keep_alive" not in message, message
    assert "\n" not in message
    assert _record(run_dir) == before  # nothing started, nothing cut, nothing recorded


async def test_resume_with_the_allowance_proceeds_and_records_the_change(
    five_done: Path, tmp_path: Path
) -> None:
    run_dir = _interrupted_after_iteration_4(five_done, tmp_path)
    cfg = _cfg(run_dir, "train.iterations=6", "run.resume=true", "train.lr=0.5")
    await Job(cfg, None, ["train.lr"]).run()
    assert _iterations(run_dir) == [0, 1, 2, 3, 4, 5]
    [row] = _changes(run_dir)
    assert row["iteration"] == 4
    assert sorted(row["changes"], key=lambda c: c["key"]) == [
        {"key": "train.iterations", "old": 5, "new": 6, "kind": "free"},
        {"key": "train.lr", "old": 0.003, "new": 0.5, "kind": "training"},
    ]


async def test_settings_that_do_not_change_training_change_freely(
    five_done: Path, tmp_path: Path
) -> None:
    run_dir = _interrupted_after_iteration_4(five_done, tmp_path)
    free = ["runtime.keep_alive_s=5", "checkpoint.every=1", "scaling.show_curve=true",
            "train.micro_batch_tokens=64"]  # fmt: skip
    await Job(_cfg(run_dir, "train.iterations=6", "run.resume=true", *free)).run()
    assert _iterations(run_dir) == [0, 1, 2, 3, 4, 5]
    [row] = _changes(run_dir)
    assert {c["key"]: c["kind"] for c in row["changes"]} == {
        "train.iterations": "free", "runtime.keep_alive_s": "free", "checkpoint.every": "free",
        "scaling.show_curve": "free", "train.micro_batch_tokens": "free",
    }  # fmt: skip
    assert (run_dir / "checkpoints" / "iter-000005").is_dir()  # checkpoint.every=1 took effect


def test_resume_keeps_the_runs_settings_where_none_are_given(tmp_path: Path) -> None:
    """The README's `--resume --set train.iterations=80` after a PPO run with a KL term: the
    resumed config is the checkpoint's (kl_coef stays 0.05), not the defaults (0)."""
    from rlhfless.stages.config import config_to_dict
    from rlhfless.stages.resume import keep_run_settings

    saved = config_to_dict(_cfg(tmp_path / "a", "train.algo=ppo", "train.kl_coef=0.05"))
    saved["train"]["retired_key"] = 1  # a setting an older version had: dropped, not an error
    where = _cfg(tmp_path / "b", "run.resume=true")
    cfg = keep_run_settings(saved, {"train": {"iterations": 80}}, where)
    assert (cfg.train.algo, cfg.train.kl_coef, cfg.train.iterations) == ("ppo", 0.05, 80)
    assert cfg.train.batch_prompts == BATCH  # FAST's, kept
    assert cfg.run.run_dir == str(tmp_path / "b") and cfg.run.resume


def test_cli_resume_keeps_settings_and_refuses_an_unallowed_change(
    five_done: Path, tmp_path: Path
) -> None:
    run_dir = _interrupted_after_iteration_4(five_done, tmp_path)

    def train(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "rlhfless.cli", "train", "--resume", "--run-dir",
             str(run_dir), *args],
            capture_output=True, text=True, timeout=100,
        )  # fmt: skip

    r = train("--set", "train.lr=0.5")
    assert r.returncode == 1, r.stderr[-2000:]
    assert r.stderr.strip().splitlines()[-1] == (
        "error: --resume would change what is trained (train.lr 0.003 -> 0.5); resume with the "
        "checkpoint's values, or allow it with --allow-changes train.lr"
    )
    r = train("--allow-changes", "train.lrr")
    assert r.returncode == 2 and "unknown key 'train.lrr'" in r.stderr, r.stderr[-2000:]
    # No FAST settings given: the checkpoint's (4 prompts, G=2...) are kept, not the defaults.
    r = train("--set", "train.iterations=5")
    assert r.returncode == 0, r.stderr[-2000:]
    assert _iterations(run_dir) == [0, 1, 2, 3, 4]
    assert _lines(run_dir / "lengths.jsonl") == 5 * BATCH
    assert _changes(run_dir) == []  # nothing changed (resuming is not a change of settings)
