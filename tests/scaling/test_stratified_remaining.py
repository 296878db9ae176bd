"""Stratified assignment, the conditional remaining-length estimate and warm-pool pricing."""

from __future__ import annotations

import itertools
import math

import pytest

from rlhfless.cost_models import Lifetime, get_model, price_planned
from rlhfless.scaling import (
    BadScalingInput,
    BadScalingSetting,
    LengthPredictor,
    Scaler,
    ScalingConfig,
    ThroughputParams,
    assign,
    assign_round_robin,
    assign_stratified,
    simulate_rollout,
)
from rlhfless.scaling.predictor import expected_remaining, length_support
from rlhfless.scaling.scaler import WarmPool
from tests.scaling.helpers import heavy_tail_groups, lognormal_groups, works_from

PARAMS = ThroughputParams(cold_start_seconds=5.0, max_batch=64)


def test_stratified_strata_are_contiguous_in_predicted_length_with_even_work() -> None:
    groups = lognormal_groups(64, 4, seed=1)
    works = works_from(groups)
    a = assign_stratified(works, 4, PARAMS)
    assert a.functions == 4 and sorted(g for f in a.groups for g in f) == list(range(64))
    maxima = [[works[g].max_length for g in f] for f in a.groups]
    # Every group of stratum f is at least as long as every group of stratum f + 1.
    for hi, lo in itertools.pairwise(maxima):
        assert min(hi) >= max(lo)
    share = [PARAMS.step_seconds_per_seq * sum(works[g].decode_tokens for g in f)
             + PARAMS.prefill_seconds(sum(works[g].prefill_tokens for g in f))
             for f in a.groups]  # fmt: skip
    biggest = max(PARAMS.step_seconds_per_seq * w.decode_tokens for w in works)
    assert max(share) - min(share) <= 2 * biggest + 0.01 * sum(share)
    # Every stratum but the last (the shortest, which takes the rest) fits one batch.
    assert all(sum(len(works[g].lengths) for g in f) <= PARAMS.max_batch for f in a.groups[:-1])


def test_stratified_spreads_overflow_when_k_batches_cannot_hold_everything() -> None:
    works = works_from([[10] * 8 for _ in range(40)])  # 320 sequences, 2 x 64 slots
    a = assign_stratified(works, 2, PARAMS)
    sizes = sorted(sum(len(works[g].lengths) for g in f) for f in a.groups)
    assert sizes == [160, 160]


def test_stratified_sum_of_longest_samples_beats_round_robin() -> None:
    works = works_from(lognormal_groups(64, 4, seed=3))
    strat = assign_stratified(works, 8, PARAMS)
    rr = assign_round_robin(works, 8, PARAMS)

    def steps(a: object) -> float:
        return sum(max(works[g].max_length for g in f) for f in a.groups)  # type: ignore[attr-defined]

    assert steps(strat) < 0.8 * steps(rr)


@pytest.mark.parametrize(
    "groups,k",
    [([], 3), ([[5, 5]], 4), ([[7] * 3] * 5, 2), ([[0, 0], [0], [0, 0, 0]], 2)],
    ids=["empty", "one prompt, k > prompts", "all equal", "zero lengths"],
)
def test_stratified_degenerate_inputs(groups: list[list[int]], k: int) -> None:
    works = works_from(groups)
    a = assign(works, k, "stratified", PARAMS)
    assert sorted(g for f in a.groups for g in f) == list(range(len(groups)))
    assert a.functions <= min(k, max(len(groups), 0)) or not groups
    assert all(f for f in a.groups)
    assert a.functions + a.empty_functions == k


def test_stratified_rejects_bad_k() -> None:
    with pytest.raises(BadScalingSetting, match="k"):
        assign_stratified(works_from([[1]]), 0, PARAMS)


def test_stratified_keeps_an_underpredicted_sample_off_a_heavier_function() -> None:
    # Predicted: every group short. Truth: one sample in the shortest-predicted group is long.
    predicted = [[50 + g] * 4 for g in range(32)]
    truth = [list(p) for p in predicted]
    truth[0][0] = 1500
    works = works_from(predicted)
    params = ThroughputParams(cold_start_seconds=0.0, max_batch=256)
    fixed = assign_round_robin(works, 4, params)
    strat = assign_stratified(works, 4, params)
    lpt = assign(works, 4, "lpt", params)
    prefill = [100] * 32

    def makespan(groups: list[list[int]]) -> float:
        return simulate_rollout(truth, prefill, groups, params, predicted=predicted).makespan

    assert makespan(strat.groups) <= makespan(fixed.groups) * 1.02
    assert makespan(strat.groups) <= makespan(lpt.groups) * 1.02


def test_expected_remaining_conditions_on_what_was_produced() -> None:
    support = [100.0, 200.0, 400.0]
    assert expected_remaining(support, 0) == pytest.approx(700 / 3)
    assert expected_remaining(support, 150) == pytest.approx((50 + 250) / 2)
    assert expected_remaining(support, 399) == pytest.approx(1.0)
    # Past every point: proportional to what it produced, never the old 1-token floor.
    assert expected_remaining(support, 800) == pytest.approx(800.0)
    assert expected_remaining(support, 800, tail=0.5) == pytest.approx(400.0)
    assert expected_remaining([], 0) == 1.0  # nothing known, nothing produced: at least 1


def test_expected_remaining_rejects_bad_inputs() -> None:
    with pytest.raises(BadScalingInput, match="produced"):
        expected_remaining([1.0], -1)
    with pytest.raises(BadScalingSetting, match="tail"):
        expected_remaining([1.0], 0, tail=0)
    with pytest.raises(BadScalingSetting, match="tail"):
        expected_remaining([1.0], 0, tail=math.inf)


def test_support_adds_the_datasets_tail_to_a_prompts_profile() -> None:
    pred = LengthPredictor(alpha=1.0)
    assert pred.shape_ratios() == []
    for i, group in enumerate(heavy_tail_groups(64, 8, seed=2)):
        pred.observe(i, group)
    shape = pred.shape_ratios()
    assert len(shape) == 16 and shape == sorted(shape)
    assert max(shape) >= 5  # the 10x samples show up as a tail of the shape
    pred.observe("calm", [100] * 8)
    support = pred.support("calm")
    assert max(support) >= 500  # a calm prompt may still draw a tail sample
    assert pred.remaining("calm", 150) > 150  # past its own profile, not 1 token
    assert length_support([10.0, 20.0], []) == [10.0, 20.0]


def test_conditional_and_naive_estimates_both_lose_nothing() -> None:
    groups = heavy_tail_groups(24, 4, seed=5)
    pred = LengthPredictor()
    for i, g in enumerate(heavy_tail_groups(24, 4, seed=6)):
        pred.observe(i, g)
    predicted = [pred.predict_group(i, 4) for i in range(24)]
    a = assign(works_from(groups), 4, "lpt", PARAMS)
    for remaining in ("conditional", "naive"):
        r = simulate_rollout(
            groups, [50] * 24, a.groups, PARAMS, predicted=predicted, cut="per_function",
            remaining=remaining, shape=pred.shape_ratios(),  # type: ignore[arg-type]
        )  # fmt: skip
        assert r.tokens_per_sequence == [x for g in groups for x in g]
    with pytest.raises(BadScalingInput, match="remaining"):
        simulate_rollout(groups, [50] * 24, a.groups, PARAMS, remaining="guess")  # type: ignore[arg-type]


def test_warm_pool_drops_the_minimum_and_the_cold_start_but_keeps_granularity() -> None:
    aws = get_model("aws")
    pool = WarmPool(aws)
    life = Lifetime.planned(5.0, 10.2)
    assert aws.price("l40s", life).billed_seconds == 60.0
    assert pool.price("l40s", life).billed_seconds == 11.0  # ready..exit, rounded up per second
    assert pool.rate("l40s") == aws.rate("l40s")
    assert pool.name == "aws/pool"


def test_warm_pool_setting_prices_the_plan_without_the_minimum() -> None:
    works_ids = list(range(16))
    tokens = [200] * 16
    plain = Scaler(ScalingConfig(policy="rlhfless"), slots=8, device_kind="l40s")
    pooled = Scaler(ScalingConfig(policy="rlhfless", warm_pool=True), slots=8, device_kind="l40s")
    for s in (plain, pooled):
        s.observe(works_ids, [[30 + i] * 4 for i in range(16)])
    a = plain.plan(works_ids, tokens, group_size=4)
    b = pooled.plan(works_ids, tokens, group_size=4)
    # new functions on whole instances: at least each one's 60 s minimum, placed the cheapest
    # way (one g6e.xlarge each, or packed onto a g6e.48xlarge)
    minimum = price_planned(get_model("aws"), "l40s", [Lifetime.planned(0.0, 1.0)] * a.functions)
    assert a.predicted_usd >= minimum - 1e-12
    assert b.predicted_usd < a.predicted_usd
    assert pooled.remaining(0, 100) >= 1.0
    assert ScalingConfig().assign == "stratified"
