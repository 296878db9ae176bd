"""Cheapest-within-x-of-the-fastest once functions are warm: the fastest is what the slots
could do warm, so a plan neither takes a cold start for granted nor drifts down, iteration by
iteration, to whatever ran warm last (curve.within_bound)."""

from __future__ import annotations

import random

import pytest

from rlhfless.cost_models import get_model
from rlhfless.scaling import (
    LengthPredictor,
    ScalingConfig,
    ThroughputParams,
    build_margin,
    choose_k,
)
from rlhfless.scaling.curve import CurvePoint, within_bound
from tests.scaling.helpers import lognormal_groups, works_from

AWS = get_model("aws")
PARAMS = ThroughputParams(cold_start_seconds=5.0, weight_load_seconds=2.0)


def point(k: int, planned: float, warm_seconds: float) -> CurvePoint:
    return CurvePoint(
        k=k, functions=k, seconds=planned, usd=float(k), serverful_usd=float(k),
        function_seconds=0.0, score=0.0, warm_seconds=warm_seconds,
    )  # fmt: skip


def test_nothing_warm_leaves_the_common_cold_start_out_of_the_fraction() -> None:
    curve = [point(8, 15.0, 10.0), point(6, 15.25, 10.25), point(5, 15.5, 10.5)]
    ok, bound = within_bound(curve, 0.03, cold_start=5.0, warm=0)
    assert [p.k for p in ok] == [8, 6]  # 10.25 <= 10.3 < 10.5: 3% of 10 s, not of 15 s
    assert bound == pytest.approx(10.3 + 5.0)


def test_a_warm_plan_is_held_to_what_the_slots_could_do_warm() -> None:
    # k=8 would start two functions cold (15 s); warm it would take 10 s. The six warm ones
    # take 10.2 s, five 10.5 s: measured against 10.2 s, five would pass (10.5 <= 10.506).
    curve = [point(8, 15.0, 10.0), point(6, 10.2, 10.2), point(5, 10.5, 10.5)]
    ok, bound = within_bound(curve, 0.03, cold_start=5.0, warm=6)
    assert [p.k for p in ok] == [6]
    assert bound == pytest.approx(10.3)


def test_where_no_candidate_is_within_the_bound_only_the_quickest_is() -> None:
    # The work grew past the warm functions: nothing is within 3% of 10 s warm.
    curve = [point(8, 13.0, 10.0), point(6, 12.0, 12.0), point(4, 14.0, 14.0)]
    ok, bound = within_bound(curve, 0.03, cold_start=5.0, warm=6)
    assert [p.k for p in ok] == [6]
    assert bound == 12.0


def test_without_a_cold_start_the_bound_is_on_planned_times() -> None:
    curve = [point(8, 15.0, 10.0), point(6, 15.4, 10.4)]
    ok, _ = within_bound(curve, 0.03, cold_start=0.0)
    assert [p.k for p in ok] == [8, 6]  # 15.4 <= 15.45


@pytest.mark.parametrize("seed", range(4))
def test_a_later_iterations_plan_stays_within_the_bound_of_all_slots_warm(seed: int) -> None:
    """Plan a rollout, then plan it again with the functions the first plan used warm (what
    RolloutStage tells its scaler): the second choice's expected makespan is within
    ``within`` of the quickest the slots could do warm, and the next plan does not shrink."""
    rng = random.Random(seed)
    groups = lognormal_groups(96, 8, seed=seed, median=120.0, sigma=0.9, cap=1024)
    pred = LengthPredictor(alpha=0.5)
    for g, ls in enumerate(groups):  # an earlier epoch of the same prompts
        pred.observe(g, [max(1, int(x * rng.uniform(0.6, 1.4))) for x in ls])
    works = works_from([[int(x) for x in pred.predict_group(g, 8)] for g in range(96)])
    within = ScalingConfig().within()
    margin = build_margin(pred, works, [True] * 96, 16, ("lpt",))
    first = choose_k(works, range(1, 9), PARAMS, AWS, "l40s", within_fraction=within,
                     method="stratified", margin=margin)  # fmt: skip
    ks = [first.functions]
    for _ in range(3):
        dec = choose_k(works, range(1, 9), PARAMS, AWS, "l40s", within_fraction=within,
                       method="stratified", margin=margin, warm=ks[-1])  # fmt: skip
        ideal = min(p.ideal_seconds for p in dec.curve)
        assert dec.chosen.planned_seconds <= ideal * (1 + within) + 1e-9
        ks.append(dec.functions)
    assert ks[1:] == [ks[1]] * 3, f"the warm plans drifted: {ks}"
