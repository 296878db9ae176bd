from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rlhfless.scaling import (
    BadScalingInput,
    BadScalingSetting,
    GroupWork,
    ThroughputParams,
    assign,
    assign_lpt,
    assign_pack,
    assign_round_robin,
)
from tests.scaling.helpers import heavy_tail_groups, lognormal_groups, works_from

PARAMS = ThroughputParams()
DISTRIBUTIONS = {
    f"{name}-{seed}": fn(64, 8, seed)
    for seed in range(5)
    for name, fn in (("lognormal", lognormal_groups), ("heavy", heavy_tail_groups))
}


@pytest.mark.parametrize("name", sorted(DISTRIBUTIONS))
@pytest.mark.parametrize("params", [None, PARAMS], ids=["tokens", "seconds"])
def test_lpt_is_never_worse_than_round_robin(name: str, params: ThroughputParams | None) -> None:
    works = works_from(DISTRIBUTIONS[name])
    for k in (2, 4, 8):
        lpt = assign_lpt(works, k, params)
        rr = assign_round_robin(works, k, params)
        assert lpt.makespan <= rr.makespan * (1 + 1e-9), (k, lpt.makespan, rr.makespan)


@pytest.mark.parametrize("name", sorted(DISTRIBUTIONS))
def test_pack_uses_fewer_function_seconds_than_lpt(name: str) -> None:
    works = works_from(DISTRIBUTIONS[name])
    pack, lpt = assign_pack(works, 8, PARAMS), assign_lpt(works, 8, PARAMS)
    assert sum(pack.loads) <= sum(lpt.loads) * 1.001
    assert pack.functions <= 8
    # Contiguous in sorted order: every group on a function is no longer than those before it.
    maxima = [max(works[i].max_length for i in g) for g in pack.groups]
    assert maxima == sorted(maxima, reverse=True)


def test_pack_never_puts_more_than_a_batch_on_one_function() -> None:
    works = works_from(lognormal_groups(100, 8, 3))
    pack = assign_pack(works, 8, ThroughputParams(max_batch=64))
    assert all(sum(len(works[i].lengths) for i in g) <= 64 for g in pack.groups)


@st.composite
def work_lists(draw: st.DrawFn) -> list[GroupWork]:
    n = draw(st.integers(0, 30))
    return [
        GroupWork(
            group_id=i,
            prefill_tokens=draw(st.integers(0, 500)),
            lengths=tuple(draw(st.lists(st.integers(0, 3000), min_size=1, max_size=6))),
        )
        for i in range(n)
    ]


@settings(max_examples=60, deadline=None)
@given(
    works=work_lists(), k=st.integers(1, 10), method=st.sampled_from(["round_robin", "lpt", "pack"])
)
def test_every_group_is_assigned_exactly_once(works: list[GroupWork], k: int, method: str) -> None:
    a = assign(works, k, method, PARAMS)  # type: ignore[arg-type]
    flat = sorted(i for g in a.groups for i in g)
    assert flat == list(range(len(works)))
    assert all(a.groups) and a.functions + a.empty_functions == k
    assert a.makespan == max(a.loads, default=0.0)


def test_one_group() -> None:
    works = works_from([[10, 20, 30]])
    for method in ("round_robin", "lpt", "pack"):
        a = assign(works, 4, method, PARAMS)  # type: ignore[arg-type]
        assert a.groups == [[0]] and a.empty_functions == 3


def test_all_equal_groups_spread_evenly_under_lpt() -> None:
    works = works_from([[100] * 4] * 8)
    a = assign_lpt(works, 4, None)
    assert sorted(len(g) for g in a.groups) == [2, 2, 2, 2]
    assert a.loads == [a.loads[0]] * 4


def test_k_larger_than_groups_drops_empty_functions() -> None:
    a = assign_lpt(works_from([[5], [6]]), 10, PARAMS)
    assert a.functions == 2 and a.empty_functions == 8


def test_zero_length_responses_and_no_groups() -> None:
    a = assign_pack(works_from([[0, 0], [0]], prompt=0), 3, PARAMS)
    assert a.makespan == 0.0
    empty = assign_lpt([], 3, PARAMS)
    assert empty.groups == [] and empty.makespan == 0.0 and empty.empty_functions == 3


def test_bad_inputs_are_rejected() -> None:
    with pytest.raises(BadScalingSetting, match="k = 0"):
        assign_lpt(works_from([[1]]), 0)
    with pytest.raises(BadScalingSetting, match="assign method"):
        assign(works_from([[1]]), 1, "random")  # type: ignore[arg-type]
    with pytest.raises(BadScalingInput, match="unique"):
        assign_lpt([GroupWork(group_id=1, prefill_tokens=0, lengths=(1.0,))] * 2, 1)
    with pytest.raises(BadScalingInput, match="lengths"):
        GroupWork(group_id=1, prefill_tokens=0, lengths=(-1.0,))
