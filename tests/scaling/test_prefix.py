from __future__ import annotations

import pytest

from rlhfless.scaling import BadScalingSetting, TransferParams, plan_prefix_routes, plan_prefixes

SYSTEM = list(range(1000, 1064))  # a 64-token system prompt


def test_grpo_groups_are_prefilled_once() -> None:
    plan = plan_prefixes([[1, 2, 3], [4, 5]], group_size=8)
    assert plan.naive_prefill_tokens == 8 * 5
    assert plan.planned_prefill_tokens == 5
    assert plan.samples == [8, 8] and plan.prefixes == []


def test_repeated_prompts_are_deduplicated() -> None:
    plan = plan_prefixes([[1, 2], [3], [1, 2]])
    assert plan.distinct == [0, 1] and plan.prompt_to_distinct == [0, 1, 0]
    assert plan.samples == [2, 1] and plan.tokens_saved == 2


def test_a_common_system_prompt_is_found_and_counted_once() -> None:
    prompts = [[*SYSTEM, 7, 8, 9], [*SYSTEM, 5], [*SYSTEM, 1, 2], [9, 9, 9]]
    plan = plan_prefixes(prompts, group_size=4, min_len=16)
    assert len(plan.prefixes) == 1
    assert plan.prefixes[0].tokens == tuple(SYSTEM)
    assert plan.prefixes[0].prompts == [0, 1, 2]
    assert plan.prefix_of == [0, 0, 0, -1]
    assert plan.planned_prefill_tokens == 64 + 3 + 1 + 2 + 3
    assert plan.naive_prefill_tokens == 4 * (67 + 65 + 66 + 3)


def test_longer_sub_prefixes_win_when_they_save_more() -> None:
    a = [*SYSTEM, *range(200)]  # two few-shot blocks of 200 tokens after the system prompt
    b = [*SYSTEM, *range(500, 700)]
    prompts = [[*a, 1], [*a, 2], [*b, 1], [*b, 2]]
    plan = plan_prefixes(prompts, min_len=16)
    assert sorted(p.length for p in plan.prefixes) == [264, 264]


def test_short_common_prefixes_are_ignored() -> None:
    plan = plan_prefixes([[1, 2, 3, 4], [1, 2, 3, 5]], min_len=4)
    assert plan.prefixes == []
    assert plan_prefixes([[1, 2, 3, 4], [1, 2, 3, 5]], min_len=3).prefixes[0].length == 3


def test_degenerate_inputs() -> None:
    assert plan_prefixes([]).planned_prefill_tokens == 0
    one = plan_prefixes([[]], group_size=3)
    assert one.naive_prefill_tokens == 0 and one.distinct == [0]
    with pytest.raises(BadScalingSetting, match="group_size"):
        plan_prefixes([[1]], group_size=0)


def test_routes_ship_a_long_prefix_and_recompute_a_short_one() -> None:
    long_sys = list(range(2000, 2512))
    prompts = [[*long_sys, 1], [*long_sys, 2], [9, 9, 9, 1], [9, 9, 9, 2]]
    plan = plan_prefixes(prompts, min_len=2)
    routes = plan_prefix_routes(plan, [[0], [1], [0], [1]])
    by_len = {r.tokens: r for r in routes}
    assert by_len[512].method == "ship_kv" and by_len[512].others == [1]
    assert by_len[3].method == "reprefill"
    slow = plan_prefix_routes(plan, [[0], [1], [0], [1]], TransferParams(bandwidth_bytes_per_s=0))
    assert all(r.method == "reprefill" for r in slow)


def test_a_group_split_across_functions_routes_its_own_prompt() -> None:
    plan = plan_prefixes([list(range(300))], group_size=8)
    routes = plan_prefix_routes(plan, [[0, 0, 0, 0, 1, 1, 1, 1]])
    assert len(routes) == 1 and routes[0].kind == "prompt" and routes[0].tokens == 300
    assert routes[0].home == 0 and routes[0].others == [1]
