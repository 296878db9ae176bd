"""The planner's fast paths give the same numbers, to the last bit, as the plain computations.

Each fast path (a one-batch decode without a heap, decode steps skipped between events, the
simulator's memo of expected remaining lengths and its load summaries, the no-cut scenario
evaluations ``choose_k`` shares with the cut pass) is compared with ``==`` against the slow way,
so a stale memo or a reordered float sum fails here.
"""

from __future__ import annotations

import heapq
import math
import random

import pytest

from rlhfless.cost_models import get_model
from rlhfless.scaling import (
    BadScalingInput,
    FunctionProgress,
    SequenceProgress,
    ThroughputParams,
    TransferParams,
    assign,
    build_margin,
    choose_k,
    decode_seconds,
    decode_timeline,
    simulate_rollout,
)
from rlhfless.scaling import sim_cut as sim
from rlhfless.scaling.expected import expected_cut_point, expected_point, scenario_points
from rlhfless.scaling.migrate import (
    FunctionLoad,
    cut_ruled_out,
    plan_cut_and_migrate,
    plan_cut_with_loads,
)
from rlhfless.scaling.predictor import expected_remaining, length_support
from rlhfless.scaling.scaler import Pricing, evaluate
from tests.scaling.test_margin import _heavy_epochs, _predictor, _works

PARAMS = ThroughputParams(cold_start_seconds=5.0, weight_load_seconds=2.0, max_batch=256)
AWS = get_model("aws")
AWS_L40S = Pricing(cost_model=AWS, device_kind="l40s")


def _heap_timeline(lengths: list[float], p: ThroughputParams, cap: int) -> list[float]:
    """Continuous batching one finish step at a time with a heap (the general loop)."""
    need = [math.ceil(x) for x in lengths]
    finish = [0.0] * len(need)
    active: list[tuple[int, int]] = []
    nxt, step, t = 0, 0, 0.0
    while True:
        while len(active) < cap and nxt < len(need):
            if need[nxt] > 0:
                heapq.heappush(active, (step + need[nxt], nxt))
            nxt += 1
        if not active:
            return finish
        target = active[0][0]
        t += (target - step) * p.step_time(len(active))
        step = target
        while active and active[0][0] == step:
            finish[heapq.heappop(active)[1]] = t


def test_decode_fast_paths_equal_the_heap_loop() -> None:
    rng = random.Random(0)
    p = ThroughputParams(step_seconds=0.018, step_seconds_per_seq=0.00008)
    for _ in range(400):
        lengths = [
            rng.choice([0, 0.4, rng.randint(1, 9), rng.uniform(1, 700)])
            for _ in range(rng.randint(0, 40))
        ]
        cap = rng.choice([1, 3, 8, 64])  # queued and one-batch alike
        want = _heap_timeline(lengths, p, cap)
        assert decode_timeline(lengths, p, cap) == want
        assert decode_seconds(lengths, p, cap) == max(want, default=0.0)
    with pytest.raises(BadScalingInput, match="got -1"):
        decode_seconds([3, -1], p)


def test_skipped_steps_take_the_times_of_one_step_at_a_time() -> None:
    """With no cut each function runs alone: step it by hand, one step per clock entry."""
    rng = random.Random(1)
    p = ThroughputParams(step_seconds=0.018, step_seconds_per_seq=0.001, max_batch=5)
    lengths = [[rng.randint(0, 60) for _ in range(4)] for _ in range(9)]
    predicted = [[x * rng.uniform(0.5, 1.5) for x in g] for g in lengths]
    groups = [[0, 3, 6], [1, 4, 7], [2, 5, 8]]
    r = simulate_rollout(lengths, [120] * 9, groups, p, predicted=predicted)
    for f, members in enumerate(groups):
        seqs = sorted(
            ((predicted[g][i], lengths[g][i]) for g in members for i in range(4)),
            key=lambda s: -s[0],
        )
        queue = [x for _, x in seqs if x > 0]
        t = p.cold_start_seconds + p.weight_load_seconds + p.prefill_seconds(3 * 120)
        running: list[int] = []
        while queue or running:
            while queue and len(running) < p.max_batch:
                running.append(queue.pop(0))
            t += p.step_time(len(running))
            running = [x - 1 for x in running if x > 1]
        assert r.functions[f].finished_at == t
        assert r.functions[f].tokens == sum(sum(lengths[g]) for g in members)


def test_the_simulators_remaining_memo_and_load_summaries_are_fresh(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Every remaining length a cut plan sees equals a fresh expected_remaining, and the plan
    from load summaries equals the plan from every sequence's progress."""
    rng = random.Random(2)
    lengths = [[rng.randint(1, 400) * (8 if rng.random() < 0.1 else 1) for _ in range(4)]
               for _ in range(24)]  # fmt: skip
    predicted = [[float(rng.randint(20, 300)) for _ in range(4)] for _ in range(24)]
    shape, tail = [0.5, 1.0, 4.0], 2.0
    group_of = [g for g in range(24) for _ in range(4)]
    seen = {"plans": 0, "seqs": 0}

    limit = 3200  # the generation limit: no length above (8 x 400)

    def checked(candidates, loads, tau, transfer, params, planned):  # type: ignore[no-untyped-def]
        for c in candidates:
            for s in c.unfinished:
                g = group_of[int(s.seq_id)]
                support = length_support(predicted[g], shape)
                fresh = expected_remaining(support, s.n_produced, tail, limit)
                assert s.predicted_remaining == fresh
                seen["seqs"] += 1
        plan = plan_cut_with_loads(candidates, loads, tau, transfer, params, planned)
        # The same plan when every working function's summary is rebuilt from candidates only
        # where it can be: a candidate's summary is its own progress's.
        by_id = {c.function_id: c for c in candidates}
        for row in loads:
            if row.function_id in by_id:
                assert row == FunctionLoad.of(by_id[row.function_id])
        seen["plans"] += 1
        return plan

    def checked_ruled_out(firsts, loads, transfer, params, planned):  # type: ignore[no-untyped-def]
        # The checks ruled out before the planner is asked: their first sequences are fresh too.
        for _, _, s in firsts:
            g = group_of[int(s.seq_id)]
            support = length_support(predicted[g], shape)
            assert s.predicted_remaining == expected_remaining(support, s.n_produced, tail, limit)
            seen["seqs"] += 1
        out = cut_ruled_out(firsts, loads, transfer, params, planned)
        seen["plans"] += out
        return out

    monkeypatch.setattr(sim, "plan_cut_with_loads", checked)
    monkeypatch.setattr(sim, "cut_ruled_out", checked_ruled_out)
    groups = [list(range(f, 24, 6)) for f in range(6)]
    p = ThroughputParams(max_batch=32)
    r = simulate_rollout(lengths, [200] * 24, groups, p, predicted=predicted,
                         cut="per_function", threshold=0.6, shape=shape, tail=tail,
                         max_new_tokens=limit, planned_end=4.0)  # fmt: skip
    assert r.tokens_per_sequence == [x for g in lengths for x in g]
    assert seen["plans"] > 5 and seen["seqs"] > 20


def test_plan_from_loads_equals_plan_from_progress() -> None:
    rng = random.Random(3)
    for _ in range(200):
        functions, seq = [], 0
        for f in range(rng.randint(1, 5)):
            n = rng.randint(0, 6)
            done = rng.randint(0, 10)
            unfinished = []
            for _ in range(n):
                unfinished.append(
                    SequenceProgress(
                        seq_id=seq,
                        prompt_tokens=rng.randint(0, 500),
                        produced=rng.randint(0, 300),
                        predicted_remaining=rng.uniform(1, 400),
                    )
                )
                seq += 1
            functions.append(
                FunctionProgress(
                    function_id=str(f),
                    assigned=done + n,
                    finished=done,
                    unfinished=tuple(unfinished),
                    max_batch=rng.choice([4, 8]),
                )
            )
        working = [f for f in functions if f.unfinished]
        planned = rng.choice([None, rng.uniform(0.0, 20.0)])  # the plan's uncut end, from now
        for params in (None, PARAMS):
            want = plan_cut_and_migrate(functions, 0.6, TransferParams(), params, planned)
            got = plan_cut_with_loads(
                [f for f in working if f.ratio >= 0.6],
                [FunctionLoad.of(f) for f in working],
                0.6,
                TransferParams(),
                params,
                planned,
            )
            assert (got.cut, got.moves, got.reasons) == (want.cut, want.moves, want.reasons)


def test_choose_k_shares_the_no_cut_evaluations_without_going_stale() -> None:
    """Each cut point of the curve equals expected_cut_point computed from scratch, and each
    expected point equals expected_point computed from scratch."""
    epochs = _heavy_epochs(96, 8, 2, seed=1)
    pred = _predictor(epochs[:1])
    works = _works(pred, 96, 8)
    cuts = [("per_function", 0.9), ("per_function", 0.95)]
    margin = build_margin(pred, works, [True] * 96, 8, ("lpt",), cuts=cuts)
    d = choose_k(works, range(1, 9), PARAMS, AWS, "l40s", within_fraction=0.03,
                 method="stratified", margin=margin)  # fmt: skip
    tried = [p for p in d.curve if p.cut != "none"]
    assert tried, "no cut point was evaluated: the test checks nothing"
    base = {(p.method, p.k): p for p in d.curve if p.cut == "none"}
    for (method, k), p in base.items():
        a = assign(works, k, method, PARAMS)  # type: ignore[arg-type]
        assert p == expected_point(evaluate(a, PARAMS, AWS, "l40s"), a, works, margin, PARAMS,
                                   AWS_L40S)  # fmt: skip
    for q in tried:
        a = assign(works, q.k, q.method, PARAMS)  # type: ignore[arg-type]
        fresh = expected_cut_point(base[(q.method, q.k)], a, works, margin, q.cut,
                                   q.cut_threshold, PARAMS, TransferParams(
                                       prefill_tokens_per_s=PARAMS.prefill_tokens_per_s),
                                   AWS_L40S, scenarios=16)  # fmt: skip
        assert q == fresh
    # Another candidate's evaluations are refused, not silently used.
    a1, a2 = assign(works, 2, "lpt", PARAMS), assign(works, 3, "lpt", PARAMS)
    other = scenario_points(a2, works, margin, PARAMS, AWS_L40S)
    with pytest.raises(BadScalingInput, match="plain evaluations"):
        expected_point(evaluate(a1, PARAMS, AWS, "l40s"), a1, works, margin, PARAMS, AWS_L40S,
                       plain=other)  # fmt: skip


def test_a_function_made_a_candidate_by_empty_samples_is_still_found() -> None:
    """The cut check tests only the function finishing a sequence when nothing else changed;
    empty samples finish unchecked at admission, so the next check must look at every function.
    Here f2 starts cold and its nine empty samples make it a candidate at once; f1's finishes
    (f0 and f1 stay under τ) are the only checks before f2's last sample ends."""
    lengths = [[50] * 10 + [3000] * 30, [400] * 10 + [3000] * 30, [0] * 9 + [1000]]
    r = simulate_rollout(lengths, [0, 0, 0], [[0], [1], [2]], PARAMS, warm=2,
                         cut="per_function", threshold=0.5, guard=False)  # fmt: skip
    assert r.cuts == 1 and r.functions[2].cut_at is not None
    assert r.tokens_per_sequence == [x for g in lengths for x in g]


@pytest.mark.parametrize(
    ("predicted", "prefill", "match"),
    [
        ([[1.0, 5.0], [math.inf]], [0, 0], r"predicted\[1\] must be finite"),
        ([[1.0, 5.0], [math.nan]], [0, 0], r"predicted\[1\] must be finite"),
        ([[1.0, 5.0], [-2.0]], [0, 0], r"predicted\[1\] must be finite and >= 0"),
        ([[1.0, 5.0], [5.0]], [0, -10], r"prefill_tokens\[1\] must be finite"),
    ],
)
def test_bad_predictions_are_refused_even_where_the_cut_planner_only_sums_them(
    predicted: list[list[float]], prefill: list[int], match: str
) -> None:
    """Function 1 is never a cut candidate here, so the planner sees only its load summary:
    a bad value there must still be refused, not silently let every move fit."""
    with pytest.raises(BadScalingInput, match=match):
        simulate_rollout(
            [[1, 5], [5]],
            prefill,
            [[0], [1]],
            ThroughputParams(max_batch=4),
            predicted=predicted,
            cut="per_function",
            threshold=0.5,
            remaining="naive",
        )


def test_a_one_shot_iterable_of_lengths_decodes_like_a_list() -> None:
    p = ThroughputParams(max_batch=8)
    lengths = [3, 0, 7.5, 1]
    assert decode_timeline(iter(lengths), p, 2) == decode_timeline(lengths, p, 2)
    assert decode_timeline(iter(lengths), p, 8) == decode_timeline(lengths, p, 8)
