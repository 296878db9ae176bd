"""The RLHF iteration on real function processes with the tiny model."""

import asyncio
import math
import os
import shutil
import signal
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from rlhfless.adapters.tiny import build_tiny_model
from rlhfless.runtime import Runtime
from rlhfless.stages.config import load_config
from rlhfless.stages.pipeline import TRAINER, Pipeline
from rlhfless.stages.run import Job

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(180)]

SMALL = [
    "train.batch_prompts=4",
    "train.group_size=4",
    "rollout.max_new_tokens=16",
    "runtime.slots=2",
]


def _cfg(tmp_path: Path, *extra: str):
    return load_config(None, [*SMALL, f"run.run_dir={tmp_path}", *extra])


@pytest.mark.parametrize("algo", ["grpo", "ppo"])
async def test_three_iterations_train_and_publish(tmp_path: Path, algo: str) -> None:
    cfg = _cfg(tmp_path, f"train.algo={algo}", "train.iterations=3", "train.kl_coef=0.01")
    job = Job(cfg)
    summary = await job.run()
    ms = job.metrics
    assert [m.version for m in ms] == [1, 2, 3]
    for m in ms:
        assert math.isfinite(m.loss) and math.isfinite(m.kl) and m.samples == 16
        assert set(m.stage_seconds) == {"rollout", "score", "train"}
        assert "reward" in m.busy_seconds  # the seconds the reward function worked
        if algo == "ppo":
            assert m.value_loss is not None and math.isfinite(m.value_loss)
    initial = load_file(tmp_path / "model" / "model.safetensors")
    trained = load_file(tmp_path / "checkpoints" / "iter-000003" / "policy" / "weights.safetensors")
    changed = [k for k in trained if k in initial and not torch.equal(trained[k], initial[k])]
    assert changed, "training did not change any weight"
    assert summary["functions_started"] >= 3 and summary["warm_starts"] > 0
    assert set(summary["dollars"]) == {"aws", "onprem"}  # gcp prices no CPU-only machine
    assert (tmp_path / "billing.jsonl").read_text().count("\n") == summary["functions_started"]


async def test_resume_matches_uninterrupted_run(tmp_path: Path) -> None:
    full = Job(_cfg(tmp_path / "a", "train.iterations=3", "checkpoint.every=2"))
    await full.run()
    first = Job(_cfg(tmp_path / "b", "train.iterations=2", "checkpoint.every=2"))
    await first.run()
    resumed = Job(
        _cfg(tmp_path / "b", "train.iterations=3", "checkpoint.every=2", "run.resume=true")
    )
    await resumed.run()
    assert [m.iteration for m in resumed.metrics] == [2]
    a, b = full.metrics[2], resumed.metrics[0]
    assert b.version == a.version == 3
    assert b.reward_mean == a.reward_mean and b.response_len_mean == a.response_len_mean
    assert b.loss == pytest.approx(a.loss, rel=1e-5, abs=1e-6)


async def test_killed_rollout_function_loses_no_sample(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, "train.iterations=1")
    model_dir = build_tiny_model(tmp_path / "model", seed=0)

    async def one_iteration(kill: bool, run: Path):
        async with Runtime(slots=2, keep_alive_s=5) as rt:
            p = Pipeline(rt, cfg, model_dir, run)
            if kill:  # kill -9 a rollout function just before its generate() call lands
                p.on_rollout_started = lambda pids: os.kill(pids[-1], signal.SIGKILL)
            m = await p.run_iteration(0)
            return m, rt.stats.deaths

    clean, _ = await one_iteration(False, tmp_path / "clean")
    hit, deaths = await one_iteration(True, tmp_path / "hit")
    assert deaths == 1 and hit.retries == 1 and clean.retries == 0
    assert hit.samples == clean.samples == 16
    assert hit.reward_mean == clean.reward_mean  # the re-run produced the very same samples
    assert hit.response_len_mean == clean.response_len_mean


async def test_concurrent_stages_each_get_their_own_functions(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, "train.algo=ppo", "train.kl_coef=0.05", "train.iterations=1")
    job = Job(cfg)
    await job.run()
    import msgspec

    from rlhfless.runtime.messages import BillingEvent

    events = [
        msgspec.json.decode(line, type=BillingEvent)
        for line in (tmp_path / "billing.jsonl").read_bytes().splitlines()
    ]
    stages = {e.stage for e in events}
    assert stages == {"rollout", "reward", "reference", "critic", "train"}
    assert all(e.exit_code == 0 and e.ready_at is not None for e in events)
    await asyncio.sleep(0)


async def test_weights_through_a_node_local_file_match_inline_weights(tmp_path: Path) -> None:
    inline = Job(_cfg(tmp_path / "inline", "train.iterations=3"))
    await inline.run()
    via_file = Job(_cfg(tmp_path / "file", "train.iterations=3", "rollout.weights_file_mb=0"))
    await via_file.run()
    files = sorted((tmp_path / "file" / "weights").glob("policy-v*.safetensors"))
    assert [f.name for f in files] == ["policy-v000002.safetensors", "policy-v000003.safetensors"]
    assert not (tmp_path / "inline" / "weights").exists()
    for a, b in zip(inline.metrics, via_file.metrics, strict=True):
        assert a.reward_mean == b.reward_mean and a.response_len_mean == b.response_len_mean


# Streamed, in the slow tier: the default run replays a streamed trainer killed as it steps in
# tests/stages/test_streamed.py (finish_step).
@pytest.mark.parametrize("stream", [False, pytest.param(True, marks=pytest.mark.slow)])
async def test_trainer_dead_before_its_state_landed_loses_no_step(
    tmp_path: Path, stream: bool
) -> None:
    """The trainer's hand-over state is written behind its step. Kill -9 the warm trainer and
    leave its state directory as if its last write never landed (version 1 while the run is at
    2): the next iteration's cold trainer replays step 2 from the inputs the pipeline kept and
    the run ends where an undisturbed run does: bit for bit when staged; streamed, the replay
    adds the step's micro-batches in the batch's order rather than as they arrived, so to
    float summation order (tests/stages/test_streamed.py states the tolerance)."""
    cfg = _cfg(tmp_path, "train.iterations=3", f"pipeline.stream={str(stream).lower()}")
    model_dir = build_tiny_model(tmp_path / "model", seed=0)

    async def three_iterations(fault: bool, run: Path) -> tuple[list[Any], dict[str, Any]]:
        async with Runtime(slots=2, keep_alive_s=30) as rt:
            p = Pipeline(rt, cfg, model_dir, run)
            ms = [await p.run_iteration(0)]
            await p.persist_state()
            policy = run / "state" / "policy"
            shutil.copytree(policy, run / "policy_v1")
            ms.append(await p.run_iteration(1))
            if fault:
                (trainer,) = [
                    fn for fn in rt._fns.values() if fn.actor == TRAINER and fn.state == "warm"
                ]
                os.kill(trainer.pid, signal.SIGKILL)
                await asyncio.wait_for(trainer.exited.wait(), 10)
                # The kill may land inside the write-behind's swap (policy renamed to
                # policy.old, policy.tmp not yet in place): clear every name it uses.
                for name in ("policy", "policy.tmp", "policy.old"):
                    shutil.rmtree(policy.with_name(name), ignore_errors=True)
                shutil.copytree(run / "policy_v1", policy)
            ms.append(await p.run_iteration(2))
            await p.persist_state()
            assert (policy / "version").read_text() == "3"
            return ms, load_file(policy / "weights.safetensors")

    clean, want = await three_iterations(False, tmp_path / "clean")
    hit, got = await three_iterations(True, tmp_path / "hit")
    assert [m.version for m in hit] == [1, 2, 3]
    assert [m.replayed for m in clean] == [0, 0, 0] and [m.replayed for m in hit] == [0, 0, 1]
    assert hit[2].reward_mean == clean[2].reward_mean
    atol = 1e-4 if stream else 0.0
    assert hit[2].loss == pytest.approx(clean[2].loss, rel=1e-4 if stream else 0, abs=atol)
    for k, v in got.items():
        torch.testing.assert_close(v, want[k], rtol=0, atol=atol)
