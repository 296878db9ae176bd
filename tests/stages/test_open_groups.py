"""A group trained open, sample by sample before its last one ends, gives the gradient of the
group trained whole (stages/open_groups.py, TrainerActor.accumulate_open / close_group).

The real trainer and the tiny model in this process; old log-probs are the model's own (the
first epoch is on-policy), one sample's pushed outside the clip range so that it must wait.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
import torch

from rlhfless.adapters.hf import pack_sequences, response_logprobs
from rlhfless.adapters.tiny import build_tiny_model
from rlhfless.stages import algorithms as alg
from rlhfless.stages.config import TrainConfig
from rlhfless.stages.groups import GroupAssembler
from rlhfless.stages.micro_batch import group_micro_batches
from rlhfless.stages.protocol import FinishedSample
from rlhfless.stages.train_plan import Chunk, TrainPlan, merge_chunks
from rlhfless.stages.trainer import TrainerActor

G = 4


def _cfg(**extra: Any) -> dict[str, Any]:
    return {
        "algo": "grpo", "epochs": 2, "lr": 1e-3, "group_size": G, "micro_batch_tokens": 48,
        **extra,
    }  # fmt: skip


def _batch(
    model: Any, pad_id: int, groups: int = 2, rewards: list[float] | None = None
) -> dict[str, Any]:
    rng = random.Random(7)
    prompt_ids, responses = [], []
    for _ in range(groups):
        p = [1] + [rng.randrange(3, 23) for _ in range(rng.randrange(2, 6))]
        for _ in range(G):
            prompt_ids.append(p)
            responses.append([rng.randrange(3, 23) for _ in range(rng.choice([1, 3, 9, 20]))])
    with torch.no_grad():
        packed = pack_sequences(prompt_ids, responses, pad_id, torch.device("cpu"))
        logp = response_logprobs(model, packed, 1.0)
    old = [logp[i, : len(r)].clone() for i, r in enumerate(responses)]
    old[2][0] += 0.5  # ratio exp(-0.5) = 0.61 < 0.8: sample 2 leaves the clip range
    rewards = rewards or [1.0, 0.0, 0.25, 1.0, 0.5, 0.5, 0.0, 2.0][: groups * G]
    return {"prompt_ids": prompt_ids, "response_ids": responses, "old": old, "rewards": rewards}


def _rows(b: dict[str, Any], keys: list[int]) -> dict[str, Any]:
    return {
        "prompt_ids": [b["prompt_ids"][k] for k in keys],
        "response_ids": [b["response_ids"][k] for k in keys],
        "old_logprobs": [b["old"][k] for k in keys],
        "temperature": 1.0,
    }


def _scored(b: dict[str, Any], keys: list[int]) -> Chunk:
    rows = _rows(b, keys)
    return Chunk(
        rows=keys, prompt_ids=rows["prompt_ids"], response_ids=rows["response_ids"],
        logprobs=rows["old_logprobs"], rewards=[b["rewards"][k] for k in keys],
    )  # fmt: skip


def _trainer(model_dir: Path, tmp: Path, name: str, **cfg: Any) -> TrainerActor:
    return TrainerActor(str(model_dir), _cfg(**cfg), str(tmp / name))


def _step(
    t: TrainerActor, plan: TrainPlan, chunks: list[Chunk]
) -> tuple[dict[str, Any], list[str]]:
    """One streamed step as the stage runs it: the plan's calls for each chunk, in order."""
    t.begin_step()
    methods = []
    for chunk in chunks:
        for call in plan.take(chunk):
            getattr(t, call.method)(**call.args)
            methods.append(call.method)
    return t.finish_step(), methods


def _grads(t: TrainerActor) -> list[torch.Tensor]:
    return [p.grad.clone() for p in t.model.parameters() if p.grad is not None]


# Rewards of two groups: spread in each; and the first group's all equal at a value that is
# no power of two (its scale is 1 / eps: uncentred sums would turn rounding into a gradient).
REWARDS = {
    "spread": [1.0, 0.0, 0.25, 1.0, 0.5, 0.5, 0.0, 2.0],
    "no spread": [0.3, 0.3, 0.3, 0.3, 0.1, 0.7, 0.7, 0.2],
}


MB = 24  # micro-batch token budget: a group in more than one micro-batch


@pytest.mark.parametrize("rewards", sorted(REWARDS))
@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean"])
def test_open_group_gives_the_whole_groups_gradient(tmp_path: Path, agg: str, rewards: str) -> None:
    model_dir = build_tiny_model(tmp_path / "model", seed=0)
    whole = _trainer(model_dir, tmp_path, "whole", loss_agg=agg, micro_batch_tokens=MB)
    b = _batch(whole.model, whole.pad_id, rewards=REWARDS[rewards])
    cfg = TrainConfig(group_size=G, loss_agg=agg, micro_batch_tokens=MB)  # type: ignore[arg-type]
    a, methods = _step(whole, TrainPlan(cfg, 1.0, open_max=0), [_scored(b, list(range(2 * G)))])
    assert methods == ["accumulate"]
    lengths = [len(q) + len(r) for q, r in zip(b["prompt_ids"], b["response_ids"], strict=True)]
    parts = group_micro_batches(lengths[G:], G, MB)  # group 1's micro-batches
    assert len(parts) > 1

    chunks = [_scored(b, [0, 2]), _scored(b, [1]), _scored(b, [3, 4, 5, 6, 7])]
    for per_mb in (False, True):
        opened = _trainer(
            model_dir, tmp_path, f"open-{per_mb}", loss_agg=agg, micro_batch_tokens=MB
        )
        plan = TrainPlan(cfg, 1.0, open_max=1, per_micro_batch=per_mb)
        o, methods = _step(opened, plan, chunks)
        if not per_mb:
            assert methods == ["accumulate_open", "accumulate_open", "accumulate", "close_group"]
        else:  # one call per micro-batch: samples 0 and 2 apart where their rewards differ
            opens = 3 if REWARDS[rewards][0] != REWARDS[rewards][2] else 2
            assert methods[:opens] == ["accumulate_open"] * opens
            assert methods[opens:-1] == ["accumulate"] * len(parts) and methods[-1] == "close_group"
        for key in ("loss", "clip_frac", "grad_norm"):
            assert o[key] == pytest.approx(a[key], rel=1e-5, abs=1e-7), key
        assert a["clip_frac"] > 0 or rewards == "no spread"  # sample 2's clipped tokens count
        for ga, go in zip(_grads(whole), _grads(opened), strict=True):
            torch.testing.assert_close(go, ga, rtol=1e-4, atol=1e-7)
        for (name, wa), wo in zip(
            whole.model.state_dict().items(), opened.model.state_dict().values(), strict=True
        ):
            torch.testing.assert_close(wo, wa, rtol=0, atol=5e-5, msg=name)


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean"])
def test_whole_groups_one_micro_batch_per_call_give_the_same_step_to_the_bit(
    tmp_path: Path, agg: str
) -> None:
    model_dir = build_tiny_model(tmp_path / "model", seed=0)
    one = _trainer(model_dir, tmp_path, "one", loss_agg=agg)
    b = _batch(one.model, one.pad_id)
    cfg = TrainConfig(group_size=G, loss_agg=agg, micro_batch_tokens=48)  # type: ignore[arg-type]
    chunks = [_scored(b, list(range(G))), _scored(b, list(range(G, 2 * G)))]
    a, methods = _step(one, TrainPlan(cfg, 1.0, open_max=0), chunks)
    assert methods == ["accumulate"] * 2

    split = _trainer(model_dir, tmp_path, "split", loss_agg=agg)
    plan = TrainPlan(cfg, 1.0, open_max=0, per_micro_batch=True)
    calls = [call for chunk in chunks for call in plan.take(chunk)]
    lengths = [len(q) + len(r) for q, r in zip(b["prompt_ids"], b["response_ids"], strict=True)]
    parts = group_micro_batches(lengths, G, 48)
    assert len(calls) == len(parts) > 2  # each call is one of the trainer's micro-batches
    for call, idx in zip(calls, parts, strict=True):
        assert call.args["response_ids"] == [b["response_ids"][k] for k in idx]
    plan = TrainPlan(cfg, 1.0, open_max=0, per_micro_batch=True)
    o, _ = _step(split, plan, chunks)

    assert {k: v for k, v in o.items() if k != "seconds"} == {
        k: v for k, v in a.items() if k != "seconds"
    }
    for ga, go in zip(_grads(one), _grads(split), strict=True):
        assert torch.equal(go, ga)
    assert all(torch.equal(x, y) for x, y in zip(
        one.model.state_dict().values(), split.model.state_dict().values(), strict=True
    ))  # fmt: skip


def test_open_groups_refuse_what_they_cannot_do(tmp_path: Path) -> None:
    model_dir = build_tiny_model(tmp_path / "model", seed=0)
    t = _trainer(model_dir, tmp_path, "t")
    b = _batch(t.model, t.pad_id, groups=1)
    t.begin_step()
    with pytest.raises(RuntimeError, match="group 3 is not open"):
        t.close_group(3, 1.0, [0.5], **_rows(b, [0]))
    t.accumulate_open(0, **_rows(b, [0]), rewards=[1.0])
    with pytest.raises(RuntimeError, match=r"groups \[0\] are still open"):
        t.finish_step()
    kl = _trainer(model_dir, tmp_path, "kl", kl_coef=0.1)
    kl.begin_step()
    with pytest.raises(ValueError, match="without a KL term"):
        kl.accumulate_open(0, **_rows(b, [0]), rewards=[1.0])


def _chunk(keys: list[int], rewards: dict[int, float]) -> Chunk:
    return Chunk(
        rows=keys, prompt_ids=[[1]] * len(keys), response_ids=[[5] * (k + 1) for k in keys],
        logprobs=[torch.zeros(k + 1) for k in keys], rewards=[rewards[k] for k in keys],
    )  # fmt: skip


def test_plan_opens_at_most_open_max_and_trains_every_sample_once() -> None:
    cfg = TrainConfig(group_size=G)
    rewards = {k: float(k % 3) for k in range(3 * G)}
    plan = TrainPlan(cfg, 1.0, open_max=1)
    every = calls = plan.take(_chunk([0, 4], rewards))  # one sample each of groups 0 and 1
    assert [(c.method, c.args.get("group")) for c in calls] == [("accumulate_open", 0)]
    every += (calls := plan.take(_chunk([8, 9, 10, 11, 1], rewards)))  # group 2 whole
    assert [(c.method, c.args.get("group")) for c in calls] == [
        ("accumulate", None), ("accumulate_open", 0),
    ]  # fmt: skip
    assert calls[0].args["response_ids"] == [[5] * 9, [5] * 10, [5] * 11, [5] * 12]
    every += (calls := plan.take(_chunk([2, 3], rewards)))  # group 0 closes; 1's sample waited
    assert [(c.method, c.args.get("group")) for c in calls] == [
        ("close_group", 0), ("accumulate_open", 1),
    ]  # fmt: skip
    r0 = torch.tensor([rewards[k] for k in range(G)])
    assert calls[0].args["scale"] == pytest.approx(float(alg.grpo_baseline(r0[None])[1]))
    adv = alg.grpo_advantages(r0, G).tolist()  # in the order taken: 0, 1, then 2, 3
    assert calls[0].args["advantages"] == pytest.approx([adv[0], adv[1], adv[2], adv[3]])
    assert calls[0].args["response_ids"] == [[5] * 3, [5] * 4]
    assert calls[1].args["response_ids"] == [[5] * 5]  # key 4, held until now
    every += (calls := plan.take(_chunk([5, 6, 7], rewards)))
    assert [(c.method, c.args.get("group")) for c in calls] == [("close_group", 1)]
    keys = [len(r) - 1 for c in every for r in c.args["response_ids"]]
    assert sorted(keys) == list(range(3 * G))  # each sample trained once


def test_plan_without_open_groups_trains_whole_groups_only() -> None:
    plan = TrainPlan(TrainConfig(group_size=G), 1.0, open_max=0)
    rewards = {k: 1.0 for k in range(2 * G)}
    assert plan.take(_chunk([0, 1, 2], rewards)) == []
    calls = plan.take(_chunk([3, 4, 5, 6, 7], rewards))
    assert [c.method for c in calls] == ["accumulate"]
    assert len(calls[0].args["response_ids"]) == 2 * G


def test_chunks_queued_for_the_trainer_train_as_one_chunk() -> None:
    rewards = {k: float(k % 2) for k in range(3 * G)}
    a, b = _chunk([0, 1, 2, 3], rewards), _chunk([4, 5, 6, 7, 8, 9, 10, 11], rewards)
    a.ref = b.ref = [torch.zeros(1)] * 4
    b.ref = [torch.ones(1)] * 8
    empty = Chunk(rows=[], prompt_ids=[], response_ids=[], logprobs=[], rewards=[])
    merged = merge_chunks([a, empty, b])  # an empty chunk carries no ref: left out, not None
    assert merged.rows == list(range(3 * G)) and merged.rewards == [rewards[k] for k in range(12)]
    assert merged.ref is not None and [float(r) for r in merged.ref] == [0.0] * 4 + [1.0] * 8
    assert merge_chunks([a]) is a
    # Per micro-batch (during the tail): one call per group-aligned micro-batch; after the
    # rollout (per_micro_batch off), the same samples in one call, in the same order.
    cfg = TrainConfig(group_size=G, micro_batch_tokens=24)
    tail = TrainPlan(cfg, 1.0, open_max=0, per_micro_batch=True).take(merged)
    after = TrainPlan(cfg, 1.0, open_max=0, per_micro_batch=False).take(merged)
    assert len(tail) >= 3 and len(after) == 1
    assert [r for c in tail for r in c.args["response_ids"]] == after[0].args["response_ids"]
    split = [x for c in tail for x in c.args["advantages"]]
    assert all(torch.equal(x, y) for x, y in zip(split, after[0].args["advantages"], strict=True))


def _finished(key: int, finish: str = "eos") -> FinishedSample:
    return FinishedSample(key=key, token_ids=[5], logprobs=torch.zeros(1), finish=finish)


def test_parts_hand_on_each_new_sample_then_the_whole_group() -> None:
    whole, parts = GroupAssembler(2, 2), GroupAssembler(2, 2, parts=True)
    assert whole.add(_finished(0)) is None
    part = parts.add(_finished(0))
    assert part is not None and not part.complete and [s.key for s in part.samples] == [0]
    for a in (whole, parts):
        assert a.add(_finished(0)) is None  # a repeat (a re-run function's copy)
        assert a.add(_finished(1, "cut")) is None  # cut: it continues elsewhere
        group = a.add(_finished(1))
        assert group is not None and group.complete and [s.key for s in group.samples] == [0, 1]
    assert parts.missing() == [1]
