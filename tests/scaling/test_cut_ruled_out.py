"""migrate.cut_ruled_out: the simulator's shortcut past cut checks that plan nothing."""

from __future__ import annotations

import random

from rlhfless.scaling import ThroughputParams, simulate_rollout
from rlhfless.scaling import sim_cut as sim
from rlhfless.scaling.migrate import (
    FunctionLoad,
    FunctionProgress,
    SequenceProgress,
    cut_ruled_out,
    plan_cut_with_loads,
)
from rlhfless.scaling.transfer import TransferParams


def _first(f: FunctionProgress) -> SequenceProgress:
    return min(f.unfinished, key=lambda s: (-s.predicted_remaining, str(s.seq_id)))


def test_ruled_out_only_when_the_planner_plans_nothing() -> None:
    rng = random.Random(5)
    ruled = planned_cuts = 0
    for _ in range(3000):
        functions, seq = [], 0
        for f in range(rng.randint(1, 5)):
            n = rng.randint(0, 8)
            done = rng.randint(0, 12)
            unfinished = tuple(
                SequenceProgress(
                    seq_id=(seq := seq + 1),
                    prompt_tokens=rng.randint(0, 500),
                    produced=rng.randint(0, 300),
                    predicted_remaining=rng.choice([rng.uniform(1, 400), 50.0]),
                )
                for _ in range(n)
            )
            functions.append(
                FunctionProgress(
                    function_id=str(f),
                    assigned=done + n,
                    finished=done,
                    unfinished=unfinished,
                    max_batch=rng.choice([2, 4, 8, 64]),
                )
            )
        working = [f for f in functions if f.unfinished]
        candidates = [f for f in working if f.ratio >= 0.6]
        loads = [FunctionLoad.of(f) for f in working]
        params = rng.choice([None, ThroughputParams(max_batch=8), ThroughputParams()])
        planned = rng.choice([None, rng.uniform(0.0, 20.0)])
        transfer = rng.choice([TransferParams(), TransferParams(bandwidth_bytes_per_s=0)])
        plan = plan_cut_with_loads(candidates, loads, 0.6, transfer, params, planned)
        firsts = [(c.function_id, len(c.unfinished), _first(c)) for c in candidates]
        if cut_ruled_out(firsts, loads, transfer, params, planned):
            ruled += 1
            assert plan.empty and not plan.moves
        planned_cuts += not plan.empty
    assert ruled > 100 and planned_cuts > 100  # both sides exercised


def test_rollouts_are_the_same_without_the_shortcut(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    rng = random.Random(9)
    cases = []
    for _ in range(40):
        n, g = rng.choice([(12, 4), (24, 4), (16, 8)])
        lengths = [[2000 if rng.random() < 0.05 else rng.randint(50, 300) for _ in range(g)]
                   for _ in range(n)]  # fmt: skip
        predicted = [[max(0.0, x * rng.lognormvariate(0, 0.4)) for x in r] for r in lengths]
        k = rng.choice([3, 4, 6])
        groups = [list(range(f, n, k)) for f in range(k)]
        kw = dict(
            predicted=predicted, cut="per_function", threshold=rng.choice([0.5, 0.7]),
            guard=rng.random() < 0.8, remaining=rng.choice(["conditional", "naive"]),
            shape=[0.5, 1.0, 4.0], planned_end=rng.choice([None, 3.0, 20.0]),
        )  # fmt: skip
        params = ThroughputParams(max_batch=rng.choice([4, 16, 256]), cold_start_seconds=0.0)
        cases.append((lengths, [rng.choice([100, 512]) for _ in range(n)], groups, params, kw))
    fast = [simulate_rollout(*c[:4], **c[4]) for c in cases]  # type: ignore[arg-type]
    asked = []  # the full path was taken (the patch took effect, not the memo's answer)
    monkeypatch.setattr(sim, "cut_ruled_out", lambda *a: asked.append(1) or False)
    slow = [simulate_rollout(*c[:4], **c[4]) for c in cases]  # type: ignore[arg-type]
    assert asked
    assert fast == slow
    assert sum(r.cuts for r in fast) > 0
