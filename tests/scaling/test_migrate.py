from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rlhfless.scaling import (
    BadScalingInput,
    BadScalingSetting,
    FunctionProgress,
    SequenceProgress,
    ThroughputParams,
    TransferParams,
    plan_cut_and_migrate,
    plan_global_cut,
)


def fn(fid: str, assigned: int, finished: int, unfinished: list[tuple[int, int, float]],
       max_batch: int = 16) -> FunctionProgress:  # fmt: skip
    return FunctionProgress(
        function_id=fid,
        assigned=assigned,
        finished=finished,
        max_batch=max_batch,
        unfinished=tuple(
            SequenceProgress(
                seq_id=s, prompt_tokens=10, tokens=tuple(range(n)), predicted_remaining=r
            )
            for s, n, r in unfinished
        ),
    )


def test_function_past_the_threshold_is_cut_and_its_sequences_keep_their_tokens() -> None:
    a = fn("a", 10, 8, [(1, 5, 50.0), (2, 7, 10.0)])  # 0.8 >= 0.7
    b = fn("b", 10, 2, [(s, 3, 100.0) for s in range(10, 18)])  # 0.2
    plan = plan_cut_and_migrate([a, b], 0.7)
    assert plan.cut == ["a"]
    assert {m.seq_id for m in plan.moves} == {1, 2}
    assert all(m.dest == "b" and m.source == "a" for m in plan.moves)
    by_id = {m.seq_id: m for m in plan.moves}
    assert by_id[1].tokens == tuple(range(5)) and by_id[1].produced == 5
    assert by_id[1].state_tokens == 15


def test_nothing_is_cut_below_the_threshold_or_without_room() -> None:
    a = fn("a", 10, 6, [(1, 5, 50.0)])  # 0.6 < 0.7
    b = fn("b", 10, 2, [(2, 3, 100.0)])
    assert plan_cut_and_migrate([a, b], 0.7).empty
    full = fn("c", 10, 0, [(s, 1, 100.0) for s in range(10, 20)], max_batch=10)
    d = fn("d", 10, 9, [(1, 5, 5.0)])
    plan = plan_cut_and_migrate([full, d], 0.7)
    assert plan.empty and "free slots" in plan.reasons["d"]


def test_a_lone_function_is_never_cut() -> None:
    plan = plan_cut_and_migrate([fn("a", 10, 9, [(1, 5, 500.0)])], 0.5)
    assert plan.empty


def test_horizon_guard_refuses_a_cut_that_would_extend_the_rollout() -> None:
    params = ThroughputParams(step_seconds=0.01, step_seconds_per_seq=0.0)
    a = fn("a", 10, 9, [(1, 0, 100.0)])  # 1 s left
    b = fn("b", 10, 2, [(2, 0, 500.0)])  # 5 s left: the horizon
    assert plan_cut_and_migrate([a, b], 0.7, params=params).cut == ["a"]  # fits in b's 5 s
    slow = TransferParams(bandwidth_bytes_per_s=0, prefill_tokens_per_s=1.0)  # 10 s to move
    assert plan_cut_and_migrate([a, b], 0.7, slow).cut == ["a"]  # no guard: moves anyway
    assert plan_cut_and_migrate([a, b], 0.7, slow, params).empty  # would end at 11 s > 5 s
    longest = fn("c", 10, 9, [(3, 0, 900.0)])  # moving the longest one always extends
    assert plan_cut_and_migrate([longest, b], 0.7, params=params).empty


def test_ship_kv_or_reprefill_by_cost() -> None:
    fast_net = TransferParams()
    assert fast_net.choose(1000)[0] == "ship_kv"
    assert fast_net.choose(10)[0] == "reprefill"  # latency dominates tiny states
    no_import = TransferParams(bandwidth_bytes_per_s=0)
    assert no_import.choose(10**6)[0] == "reprefill"


def test_global_cut_packs_the_rest_onto_the_fewest_functions() -> None:
    fs = [fn(f"f{i}", 10, 8, [(i * 10 + j, 2, 20.0) for j in range(2)]) for i in range(4)]
    plan = plan_global_cut(fs, 0.7)
    assert len(plan.cut) == 3 and len(plan.moves) == 6
    assert {m.dest for m in plan.moves} == {"f0"}
    assert plan_global_cut(fs, 0.9).empty  # 0.8 overall < 0.9


@pytest.mark.parametrize("tau", [0, -0.5, 1.01, float("nan")])
def test_threshold_outside_zero_one_is_rejected(tau: float) -> None:
    with pytest.raises(BadScalingSetting, match=r"in \(0, 1\]"):
        plan_cut_and_migrate([], tau)
    with pytest.raises(BadScalingSetting, match=r"in \(0, 1\]"):
        plan_global_cut([], tau)


def test_inconsistent_progress_is_rejected() -> None:
    with pytest.raises(BadScalingInput, match="finished"):
        fn("a", 2, 3, [])
    with pytest.raises(BadScalingInput, match="more than one function"):
        plan_cut_and_migrate([fn("a", 5, 4, [(1, 0, 1.0)]), fn("b", 5, 0, [(1, 0, 1.0)])])


@st.composite
def rollouts(draw: st.DrawFn) -> list[FunctionProgress]:
    out, next_id = [], 0
    for f in range(draw(st.integers(1, 6))):
        n_unf = draw(st.integers(0, 8))
        finished = draw(st.integers(0, 12))
        seqs = []
        for _ in range(n_unf):
            seqs.append((next_id, draw(st.integers(0, 20)), float(draw(st.integers(1, 300)))))
            next_id += 1
        out.append(fn(f"f{f}", finished + n_unf, finished, seqs, draw(st.integers(1, 12))))
    return out


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rollouts(), st.floats(0.05, 1.0), st.booleans(), st.booleans())
def test_a_plan_never_loses_or_duplicates_a_sequence(
    fs: list[FunctionProgress], tau: float, use_global: bool, guard: bool
) -> None:
    if use_global:
        plan = plan_global_cut(fs, tau)
    else:
        plan = plan_cut_and_migrate(fs, tau, params=ThroughputParams() if guard else None)
    by_fn = {f.function_id: f for f in fs}
    cut = set(plan.cut)
    moved = [m.seq_id for m in plan.moves]
    assert len(moved) == len(set(moved))
    # Exactly the unfinished sequences of the cut functions move, each with its tokens.
    expected = {s.seq_id: s for c in cut for s in by_fn[c].unfinished}
    assert set(moved) == set(expected)
    for m in plan.moves:
        assert m.dest not in cut and m.dest in by_fn and m.source in cut
        assert m.tokens == expected[m.seq_id].tokens
    # No destination is over its batch.
    for f in fs:
        incoming = sum(1 for m in plan.moves if m.dest == f.function_id)
        if incoming:
            assert len(f.unfinished) + incoming <= f.max_batch
    # Someone with work keeps running.
    working = {f.function_id for f in fs if f.unfinished}
    assert not working or working - cut


def test_the_scaler_cuts_past_the_horizon_only_without_the_guard() -> None:
    """Two functions: moving A's stragglers onto B always lengthens B, the one that sets the
    horizon, a little (its per-sequence step cost): the guard keeps A; the paper's rule cuts it."""
    from rlhfless.scaling import Scaler, ScalingConfig

    progress = [
        fn("a", 8, 6, [(0, 30, 5.0), (1, 30, 5.0)]),
        fn("b", 8, 1, [(10 + i, 5, 60.0) for i in range(7)]),
    ]
    plans = {}
    for guard in (True, False):
        cfg = ScalingConfig(
            policy="rlhfless", cut="per_function", cut_threshold=0.7, cut_guard=guard
        )
        plans[guard] = Scaler(cfg, slots=2).migration(progress)
    assert plans[True].cut == [] and "horizon" in plans[True].reasons["a"]
    assert plans[False].cut == ["a"] and {m.dest for m in plans[False].moves} == {"b"}


def test_the_plans_uncut_makespan_is_a_horizon_the_guard_may_use() -> None:
    params = ThroughputParams(step_seconds=0.01, step_seconds_per_seq=0.0)
    longest = fn("c", 10, 9, [(3, 0, 900.0)])  # 9 s left: past every other function
    b = fn("b", 10, 2, [(2, 0, 500.0)])  # 5 s left
    assert plan_cut_and_migrate([longest, b], 0.7, params=params).empty  # ends at 9 s > 5 s
    # The plan expected 10 s more without a cut: ending at 9 s extends nothing it had accepted.
    plan = plan_cut_and_migrate([longest, b], 0.7, params=params, planned=10.0)
    assert plan.cut == ["c"] and [m.dest for m in plan.moves] == ["b"]
    # A planned end already behind the predicted finish changes nothing; nor does it without
    # the guard (no step-time model, no horizon).
    assert plan_cut_and_migrate([longest, b], 0.7, params=params, planned=8.0).empty
    assert plan_cut_and_migrate([longest, b], 0.7, params=params, planned=-3.0).empty
    assert plan_cut_and_migrate([longest, b], 0.7, planned=0.0).cut == ["c"]
    for bad in (float("nan"), float("inf")):
        with pytest.raises(BadScalingInput, match="planned"):
            plan_cut_and_migrate([longest, b], 0.7, params=params, planned=bad)


def test_the_scalers_horizon_is_the_latest_finish_the_estimates_predict() -> None:
    """Scaler.migration: a move must end by the latest finish the (online) estimates predict,
    however long the plan expected the rollout to run."""
    from rlhfless.scaling import Scaler, ScalingConfig

    cfg = ScalingConfig(policy="rlhfless", cut="per_function", cut_threshold=0.7)
    scaler = Scaler(cfg, slots=4, throughput=ThroughputParams(cold_start_seconds=0.0))
    ids = list(range(8))
    scaler.observe(ids, [[40, 60, 80, 100]] * 8)
    scaler.plan(ids, [50] * 8, 4)
    # a runs 120 more steps; c (not a candidate: 5 of 8 done) 100 more, with room for b's.
    a = fn("a", 8, 5, [(s, 10, 120.0) for s in (10, 11, 12)])
    c = fn("c", 8, 5, [(s, 10, 100.0) for s in (20, 21, 22)])
    # b's straggler would end after a: moving it extends the rollout, so b is kept...
    assert scaler.migration([a, fn("b", 8, 7, [(1, 10, 130.0)]), c]).empty
    # ...while one that ends before a does moves to c, and b is released.
    plan = scaler.migration([a, fn("b", 8, 7, [(1, 10, 40.0)]), c])
    assert plan.cut == ["b"] and [m.dest for m in plan.moves] == ["c"]
