"""A rank of the sharded trainer dies: typed error at once, nothing left running, nothing lost.

Real gangs (gloo) on the runtime, driven through the pipeline's own staged training step
(``iteration.train_staged``: step, then weights, state written behind) and its replay of
undurable steps (``RunState.unsaved``). The trainer is slowed (tests/stages/sharded_actors.py)
so that the kills land where the test says: once while the state of the last step is still
being written (the next gang must replay that step), once mid-step (the step is re-run on a new
gang). The run must end with the weights of an undisturbed run.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from rlhfless.adapters.tiny import build_tiny_model
from rlhfless.runtime import FunctionDied, GangMemberDied, Runtime
from rlhfless.stages.config import load_config
from rlhfless.stages.iteration import Outcome, train_staged
from rlhfless.stages.protocol import TRAINER
from rlhfless.stages.run_state import RunState
from tests.runtime.test_failure import _wait_gone
from tests.stages.sharded_helpers import assert_same_weights, batch

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(180)]
SLOW = "tests.stages.sharded_actors:SlowShardedTrainer"
STEPS = 3
SETTINGS = [
    "train.algo=grpo", "train.group_size=4", "train.epochs=2", "train.lr=1e-3",
    "train.kl_coef=0.05", "train.micro_batch_tokens=48", "train.slots=2", "runtime.slots=2",
]  # fmt: skip


async def _step(p: RunState, step: int) -> Outcome:
    """One training step as an iteration runs it (the rollout's part replaced by a batch)."""
    out = Outcome(None, None)  # type: ignore[arg-type]  # train_staged reads step_args only
    out.step_args = batch(step, "grpo")
    await train_staged(p, out)
    assert out.train is not None and out.published is not None
    p.stepped(TRAINER, out.step_args, out.train)
    p.publish(out.published)
    return out


async def _run(tmp: Path, model_dir: Path, disturb: bool) -> tuple[dict[str, Any], list[Any]]:
    cfg = load_config(None, [*SETTINGS, f"run.run_dir={tmp}"])
    async with Runtime(slots=2, keep_alive_s=30.0, threads_per_function=1) as rt:
        p = RunState(rt, cfg, model_dir, tmp)
        p.leases.gangs[TRAINER] = (SLOW, 2)
        deaths: list[tuple[float, FunctionDied]] = []
        died = p.leases.died

        def record(exc: FunctionDied, attempt: int, stage: str) -> None:
            deaths.append((time.monotonic(), exc))
            died(exc, attempt, stage)

        p.leases.died = record  # type: ignore[method-assign]
        outs = [await _step(p, 0), await _step(p, 1)]
        if disturb:
            await _kill_while_writing(rt, p)
            outs.append(await _kill_mid_step(rt, p, tmp, deaths))
        else:
            outs.append(await _step(p, 2))
        assert p.version == STEPS
        weights = p.weights
    assert isinstance(weights, dict)
    return weights, [o.train for o in outs]


async def _kill_while_writing(rt: Runtime, p: RunState) -> None:
    """Step 2's state is still being written behind (rank 0 holds it back): kill rank 1 of
    the idle gang; the write never lands, so the next gang must replay step 2."""
    assert [e["version"] for e in p.unsaved[TRAINER]] == [2]  # its reply: durable up to 1
    gang = next(iter(rt._gangs.values()))  # the one warm gang
    pids = [f.pid for f in gang.members if f is not None]
    os.kill(pids[1], signal.SIGKILL)
    assert await _wait_gone(pids, timeout=2.0) == []


async def _kill_mid_step(
    rt: Runtime, p: RunState, tmp: Path, deaths: list[tuple[float, FunctionDied]]
) -> Outcome:
    """Step 3 on a new gang: it replays step 2, starts step 3; rank 1 is killed inside that
    update. The step fails over to a third gang, which replays step 2 again and steps."""
    markers = tmp / "state" / "markers"
    task = asyncio.create_task(_step(p, 2))
    while not (hits := list(markers.glob("update-v2-r1-*"))):
        await asyncio.sleep(0.01)
    pid = int(hits[0].name.rsplit("-p", 1)[1])
    gang_pids = [pp for pp in rt.pids() if pp != (rt._zygote.pid if rt._zygote else 0)]
    await asyncio.sleep(0.1)  # inside its passes
    killed_at = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    out = await task
    (at, exc), *_ = deaths
    assert isinstance(exc, GangMemberDied) and exc.rank == 1 and exc.exit_code == -9
    assert at - killed_at < 2.0, f"the typed error took {at - killed_at:.2f} s"
    assert await _wait_gone(gang_pids, timeout=0.1) == []  # that gang: no process left
    assert out.train is not None and out.train.replayed == 1  # step 2 again, then step 3
    print(f"typed error {at - killed_at:.3f} s after SIGKILL; {exc}")
    return out


async def test_rank_killed_mid_step_replays_to_the_undisturbed_weights(tmp_path: Path) -> None:
    model_dir = build_tiny_model(tmp_path / "model", seed=0)
    calm, calm_stats = await _run(tmp_path / "calm", model_dir, disturb=False)
    hurt, hurt_stats = await _run(tmp_path / "hurt", model_dir, disturb=True)
    worst = assert_same_weights(calm, hurt, atol=1e-6)
    print(f"disturbed vs undisturbed: max |diff| {worst:.2e}")
    for a, b in zip(calm_stats, hurt_stats, strict=True):
        assert b.loss == pytest.approx(a.loss, rel=1e-5) and b.version == a.version
