"""PPO's critic and the reference as gangs (train.critic_slots, train.reference_slots): a 2-rank
FSDP2 critic trains to the single-process critic's weights, values and metrics; its DCP state
resumes at another gang size and replays the steps it lacks; a 2-rank reference gives one
process's log-probs; a bad gang size fails at load.

Real function processes and real gloo groups, the tiny model, synthetic PPO batches
(tests/stages/sharded_helpers.py) with per-token returns.
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import pytest
import torch

from rlhfless.adapters.tiny import build_tiny_model
from rlhfless.runtime import Runtime
from rlhfless.stages.config import ConfigError, functions_per_iteration, load_config
from rlhfless.stages.handover import is_sharded
from rlhfless.stages.leases import GangLease
from rlhfless.stages.protocol import CRITIC, REFERENCE, TRAINER
from rlhfless.stages.run_state import SHARDED_CRITIC, SHARDED_REFERENCE, RunState
from tests.stages.sharded_helpers import G, assert_same_weights, batch, train_cfg

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(300)]
K = 2  # PPO steps
CFG = train_cfg("ppo", critic_lr=1e-3)  # micro_batch_tokens 48: many micro-batches, odd shares
# Float summation order: the ranks add their micro-batches' gradients apart, then together
# (FSDP's reduce-scatter), and AdamW's first steps are about lr * g / |g| per weight, so a
# last-bit difference in a near-zero gradient moves that weight by up to a fraction of lr.
W_ATOL = 5e-5  # weights (lr 1e-3); measured: see the printout
V_ATOL = 1e-4  # values after K steps of such weights


@pytest.fixture
async def rt() -> AsyncIterator[Runtime]:
    async with Runtime(slots=2, keep_alive_s=30.0, threads_per_function=1) as runtime:
        yield runtime


async def critic(rt: Runtime, slots: int, model_dir: Path, state_dir: Path) -> Any:
    args = (str(model_dir), CFG, str(state_dir))
    if slots == 1:
        return await rt.spawn(CRITIC, *args, stage="critic")
    gang = await rt.spawn_gang(SHARDED_CRITIC, slots, *args, stage="critic", timeout=90)
    return GangLease(gang)


def step_args(step: int, old_values: list[torch.Tensor]) -> dict[str, Any]:
    """A PPO critic step's inputs: the batch, its values before the step, per-token returns."""
    b = batch(step, "ppo")
    gen = torch.Generator().manual_seed(step)
    returns = [torch.randn(len(r), generator=gen) for r in b["response_ids"]]
    return {
        "prompt_ids": b["prompt_ids"], "response_ids": b["response_ids"],
        "old_values": old_values, "returns": returns,
    }  # fmt: skip


async def values(h: Any, step: int, replay: list[dict[str, Any]] | None = None) -> Any:
    b = batch(step, "ppo")
    return await h.values(
        b["prompt_ids"], b["response_ids"], expected_version=step, replay=replay, group_size=G
    )


async def _train(h: Any, steps: range) -> tuple[list[Any], list[Any], list[dict[str, Any]]]:
    """Values then a step, per step; then the values after the last: (values, stats, args)."""
    vals, stats, args = [], [], []
    for step in steps:
        vals.append(await values(h, step))
        args.append(step_args(step, vals[-1]))
        stats.append(await h.step(**args[-1], expected_version=step))
    vals.append(await values(h, steps.stop))
    return vals, stats, args


def same_values(a: list[torch.Tensor], b: list[torch.Tensor], atol: float) -> float:
    assert len(a) == len(b) and all(x.shape == y.shape for x, y in zip(a, b, strict=True))
    worst = max(float((x - y).abs().max()) for x, y in zip(a, b, strict=True) if len(x))
    assert worst <= atol, f"values differ by {worst} > {atol}"
    return worst


def same_stats(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert b["version"] == a["version"]
    for key in ("value_loss", "value_clip_frac"):
        assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), key


async def test_two_rank_critic_trains_to_the_single_process_critic(
    rt: Runtime, tmp_path: Path
) -> None:
    model_dir = build_tiny_model(tmp_path / "model", seed=0)
    runs = {}
    for slots in (1, 2):
        h = await critic(rt, slots, model_dir, tmp_path / f"critic{slots}")
        vals, stats, _ = await _train(h, range(K))
        weights = (await h.weights())["state_dict"]
        memory = await h.gang.call("memory") if slots > 1 else [await h.memory()]
        await h.release()
        runs[slots] = (vals, stats, weights, memory)
    (v1, s1, w1, m1), (v2, s2, w2, m2) = runs[1], runs[2]
    assert is_sharded(tmp_path / "critic2") and not is_sharded(tmp_path / "critic1")
    for a, b in zip(s1, s2, strict=True):
        same_stats(a, b)
    assert same_values(v1[0], v2[0], 0.0) == 0.0  # the same weights: the same forward, bitwise
    v_worst = max(same_values(a, b, V_ATOL) for a, b in zip(v1, v2, strict=True))
    w_worst = assert_same_weights(w1, w2, W_ATOL)
    held = [m["param_bytes"] + m["optim_bytes"] for m in m2]
    whole = m1[0]["param_bytes"] + m1[0]["optim_bytes"]
    print(
        f"critic, {K} PPO steps: max |w1 - w2| = {w_worst:.2e}, max |v1 - v2| = {v_worst:.2e}; "
        f"parameters + AdamW bytes: 1 process {whole}, per rank {held} "
        f"({[round(x / whole, 3) for x in held]})"
    )
    for x in held:  # half each (FSDP pads a dim-0 that 2 does not divide: the value head's)
        assert 0.45 <= x / whole <= 0.55


# Slow tier: the default run resumes the sharded trainer at another gang size through the same
# gang pieces (tests/stages/test_sharded_resume.py).
@pytest.mark.slow
async def test_critic_state_resumes_at_another_gang_size_and_replays(
    rt: Runtime, tmp_path: Path
) -> None:
    model_dir = build_tiny_model(tmp_path / "model", seed=0)
    written: dict[int, dict[str, Any]] = {}  # by the writer's gang size
    for writer, reader in ((2, 1), (1, 2), (2, 2)):
        run = tmp_path / f"run{writer}"
        if writer not in written:  # two steps, made durable, copied: a checkpoint
            h = await critic(rt, writer, model_dir, run)
            vals, _, args = await _train(h, range(2))
            assert await h.persist(2) == 2
            shutil.copytree(run, tmp_path / f"ckpt{writer}")
            nxt = await h.step(**step_args(2, vals[2]), expected_version=2)
            after = await values(h, 3)
            await h.release()
            written[writer] = {"vals": vals, "args": args, "next": nxt, "after": after}
        want = written[writer]
        into = tmp_path / f"from{writer}-on{reader}"
        shutil.copytree(tmp_path / f"ckpt{writer}", into)
        h = await critic(rt, reader, model_dir, into)
        got = await values(h, 2)
        nxt = await h.step(**step_args(2, got), expected_version=2)
        after = await values(h, 3)
        await h.release()
        what = f"critic written by {writer}, resumed on {reader}"
        worst = same_values(want["vals"][2], got, 1e-5)
        same_stats(want["next"], nxt)
        worst = max(worst, same_values(want["after"], after, V_ATOL))
        print(f"{what}: next values and step as the writer's (max |diff| {worst:.2e})")
    # a cold 2-rank critic on an empty state replays the two steps it lacks
    h = await critic(rt, 2, model_dir, tmp_path / "cold")
    want = written[2]
    replay = [{"version": v + 1, "args": a} for v, a in enumerate(want["args"])]
    got = await values(h, 2, replay=replay)
    await h.release()
    worst = same_values(want["vals"][2], got, 1e-5)
    print(f"cold 2-rank critic replayed 2 steps: max |diff| {worst:.2e}")


async def test_two_rank_reference_gives_one_process_logprobs(rt: Runtime, tmp_path: Path) -> None:
    model_dir = build_tiny_model(tmp_path / "model", seed=0)
    b = batch(0, "grpo")
    args = (b["prompt_ids"], b["response_ids"], 1.0)
    one = await rt.spawn(REFERENCE, str(model_dir), stage="reference")
    want = await one.logprobs(*args, group_size=G)
    await one.release()
    gang = await rt.spawn_gang(SHARDED_REFERENCE, 2, str(model_dir), stage="reference", timeout=90)
    replies = await gang.call("logprobs", *args, group_size=G)
    await gang.release()
    assert replies[1] == []  # rank 0 replies with the log-probs
    worst = same_values(want, replies[0], 1e-6)
    print(f"reference, 2 ranks vs 1 process: max |diff| {worst:.2e} over {len(want)} samples")


def test_gang_sizes_are_checked_at_load_and_leased_as_gangs() -> None:
    for key in ("slots", "critic_slots", "reference_slots"):
        for bad, why in (("0", ">= 1"), ("3", "runtime.slots is 2")):
            with pytest.raises(ConfigError) as e:
                load_config(None, [f"train.{key}={bad}", "runtime.slots=2"])
            msg = str(e.value)
            assert f"'train.{key}'" in msg and why in msg and "\n" not in msg, msg
    cfg = load_config(
        None, ["train.algo=ppo", "train.kl_coef=0.1", "train.critic_slots=2",
               "train.reference_slots=2", "runtime.slots=2"],
    )  # fmt: skip
    assert functions_per_iteration(cfg) == cfg.rollout.functions + 1 + 2 + 2 + 1
    state = RunState(cast(Runtime, None), cfg, "model", "run")
    assert state.leases.gangs == {CRITIC: (SHARDED_CRITIC, 2), REFERENCE: (SHARDED_REFERENCE, 2)}
    assert TRAINER not in state.leases.gangs
