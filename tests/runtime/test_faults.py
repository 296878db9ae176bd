"""The fault injector: kills leased functions at a set rate, and a real job loses no sample.

Real processes throughout: the runtime's own functions are SIGKILLed by the injector, and the
last test runs ``rlhfless train`` (the tiny default) with functions killed while it trains.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from rlhfless.cost_models import died_in_lease, read_billing_events
from rlhfless.runtime import FunctionDied, Runtime
from rlhfless.runtime.faults import FaultInjector, kill_probability
from tests.runtime.conftest import ECHO


def test_kill_probability_is_a_poisson_rate_per_function_hour() -> None:
    assert kill_probability(0.0, 10.0) == 0.0
    assert kill_probability(3600.0, 1.0) == pytest.approx(1 - math.exp(-1))
    # Two looks of dt equal one look of 2 dt: the rate does not depend on the tick.
    one = 1 - kill_probability(360.0, 2.0)
    two = (1 - kill_probability(360.0, 1.0)) ** 2
    assert one == pytest.approx(two)


def test_a_bad_kill_rate_is_refused_naming_it() -> None:
    with pytest.raises(ValueError, match="kill_rate must be >= 0, got -1"):
        Runtime(kill_rate=-1.0)


def test_a_function_is_killed_once_while_its_exit_is_not_yet_reported() -> None:
    # Between SIGKILL and the runtime hearing of the exit, the function still reads "leased":
    # a second kill then would count a death that never happens (kill_max would be spent).
    fn = SimpleNamespace(
        state="leased",
        ready=SimpleNamespace(done=lambda: True),
        pid=1,
        function_id="f1",
        actor="a",
        record=SimpleNamespace(stage="s"),
    )
    killed: list[str] = []
    injector = FaultInjector(
        kill_rate=1e9, seed=0, functions=lambda: [fn], kill=lambda f: killed.append(f.function_id)
    )
    for _ in range(5):
        injector.step(1.0)
    assert killed == ["f1"] and len(injector.kills) == 1


@pytest.mark.anyio
@pytest.mark.timeout(60)
async def test_a_leased_function_is_killed_and_its_event_shows_lost_work() -> None:
    # 3.6e6 kills per function-hour: a leased function dies within a tick or two.
    async with Runtime(preload=(), keep_alive_s=30.0, kill_rate=3.6e6, kill_seed=7) as rt:
        h = await rt.spawn(ECHO)
        t0 = time.monotonic()
        with pytest.raises(FunctionDied) as died:
            await h.sleep(20)
        assert time.monotonic() - t0 < 5
        assert died.value.exit_code == -9
        assert rt.faults is not None
        assert [k.function_id for k in rt.faults.kills] == [died.value.function_id]
        await h.release()
        (event,) = [e for e in rt.billing_events if e.function_id == died.value.function_id]
        assert died_in_lease(event)


@pytest.mark.anyio
@pytest.mark.timeout(60)
async def test_warm_functions_and_runtimes_without_a_rate_are_left_alone() -> None:
    async with Runtime(preload=(), keep_alive_s=30.0, kill_rate=3.6e6, kill_seed=7) as rt:
        h = await rt.spawn(ECHO)
        await h.release()  # warm in the pool, no caller: not a target
        await __import__("asyncio").sleep(0.5)
        assert rt.functions() == {h.function_id: "warm"}
        assert rt.faults is not None and rt.faults.kills == []
    async with Runtime(preload=()) as rt:
        assert rt.faults is None  # off by default: no task, nothing killed
        h = await rt.spawn(ECHO)
        assert await h.echo(3) == 3
        await h.release()


SMALL = [
    "train.batch_prompts=4", "train.group_size=4", "rollout.max_new_tokens=16",
    "train.iterations=3", "runtime.slots=2",
]  # fmt: skip


@pytest.mark.timeout(300)
def test_a_job_with_functions_killed_keeps_every_sample_and_bills_the_lost_work(
    tmp_path: Path,
) -> None:
    run = tmp_path / "run"
    # Ten kills per leased function-second, capped at 2: the stages re-run a unit of work at most
    # twice, so 2 kills are what any run must absorb (uncapped, a high rate can kill one unit a
    # third time and fail the run: see the report on issue 19). The rate is high so that the
    # cap, not the run's leased seconds (about 2 s on a fast machine), decides how many die.
    settings = [*SMALL, "runtime.kill_rate=36000", "runtime.kill_seed=3", "runtime.kill_max=2"]
    args = [a for s in settings for a in ("--set", s)]
    done = subprocess.run(
        [sys.executable, "-m", "rlhfless.cli", "train", "--run-dir", str(run), *args],
        capture_output=True, text=True, timeout=280,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["samples"] for m in metrics] == [16, 16, 16]  # batch_prompts x group_size
    events = read_billing_events(run / "billing.jsonl")
    assert len([e for e in events if e.exit_code == -9]) == 2  # both kills landed
    # Billed as lost work: those that died inside their lease. Every unit of work re-run was
    # cut short by a death in its lease (the death is recorded before its caller wakes), so
    # re-runs never outnumber them. A kill that lands after the function's last reply, as its
    # caller releases it, lost nothing and is not billed as lost: under load both kills can
    # land so (seen twice in CI), hence no lower bound.
    reruns = done.stderr.count("re-running its work")
    killed = [e for e in events if died_in_lease(e)]
    assert reruns <= len(killed) <= 2, (reruns, len(killed))
    assert all(e.exit_code == -9 for e in killed)
    bill = subprocess.run(
        [sys.executable, "-m", "rlhfless.cli", "cost", str(run / "billing.jsonl"), "-m", "aws"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert bill.returncode == 0, bill.stderr
    lines = [x for x in bill.stdout.splitlines() if "lost work (killed functions)" in x]
    assert len(lines) == (1 if killed else 0), bill.stdout
    assert not killed or f"({len(killed)} function" in lines[0]
