"""The worst-case guard (scaling/worst_case.py): the default plan keeps the +5% makespan bound
against round robin when a whole epoch's predictions are off by a common factor, and round
robin on all slots is always a candidate."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rlhfless.cost_models import get_model
from rlhfless.scaling import (
    ScalingConfig,
    ThroughputParams,
    TransferParams,
    assign_round_robin,
    assign_stratified,
    choose_k,
    simulate_rollout,
)
from rlhfless.scaling.margin import Margin
from rlhfless.scaling.policy import Scaler
from rlhfless.scaling.worst_case import (
    DEFAULT_SCALES,
    MIN_BATCHES,
    WorstCase,
    baseline_makespans,
    calibrated_scales,
    conformal_upper,
    covering_scenarios,
    worst_cut_ratio,
)
from tests.scaling.helpers import works_from

# A 7B model on one L40S, as benchmarks/scaling.py models it.
PARAMS = ThroughputParams(
    step_seconds=0.018, step_seconds_per_seq=0.00008, prefill_tokens_per_s=12000.0,
    cold_start_seconds=5.0, weight_load_seconds=2.0, max_batch=256,
)  # fmt: skip
SLOTS, PROMPTS, GROUP, CAP = 8, 128, 8, 4096


def heavy_epochs(seed: int) -> tuple[list[list[int]], list[list[int]], list[int]]:
    """Two epochs of a heavy-tailed workload (5% of samples 10x) and the prompts' lengths."""
    rng = random.Random(seed)
    mu = [rng.gauss(math.log(300), 0.7) for _ in range(PROMPTS)]

    def epoch() -> list[list[int]]:
        return [
            [
                max(
                    1,
                    min(CAP, int(rng.lognormvariate(m, 0.4) * (10 if rng.random() < 0.05 else 1))),
                )
                for _ in range(GROUP)
            ]
            for m in mu
        ]

    return epoch(), epoch(), [rng.randint(200, 1024) for _ in range(PROMPTS)]


def makespan_change(
    factor: float, seed: int, guard: bool = True, plan_horizon: bool = False
) -> float:
    """The default plan's makespan over round robin's when the epoch the predictor learnt from
    was ``factor`` times as long as the one rolled out. ``plan_horizon``: the cut's moves may
    end by the plan's uncut makespan (the stage's rule before its horizon went online)."""
    first, rolled, prompt_tokens = heavy_epochs(seed)
    scaler = Scaler(
        ScalingConfig(policy="rlhfless"), SLOTS, "l40s", throughput=PARAMS, max_new_tokens=CAP
    )
    if not guard:
        scaler.worst_case = lambda: None  # type: ignore[method-assign]
    ids = list(range(PROMPTS))
    scaler.observe(ids, [[min(CAP, max(1, int(x * factor))) for x in g] for g in first])
    plan = scaler.plan(ids, prompt_tokens, GROUP)
    predicted = [scaler.predictor.predict_group(p, GROUP) for p in ids]
    works = scaler.works(ids, prompt_tokens, GROUP)
    rr = assign_round_robin(works, SLOTS, PARAMS)
    base = simulate_rollout(
        rolled, prompt_tokens, rr.groups, PARAMS, predicted=predicted, warm=SLOTS, hold_to_end=True
    )
    ours = simulate_rollout(
        rolled, prompt_tokens, plan.groups, PARAMS, predicted=predicted, prewarm=True,
        cut=plan.cut, threshold=plan.cut_threshold,  # type: ignore[arg-type]
        shape=scaler.predictor.shape_ratios(), max_new_tokens=CAP,
        remaining="siblings",  # as the stage's cut controller estimates (every prompt seen)
        planned_end=plan.decision.uncut.ideal_seconds if plan_horizon and plan.decision else None,
    )  # fmt: skip
    return ours.makespan / base.makespan - 1


@pytest.mark.parametrize("factor", [2.0, 0.5, 3.0])
@pytest.mark.parametrize("seed", [0, 3])
def test_a_systematically_wrong_epoch_keeps_the_bound(factor: float, seed: int) -> None:
    # factor 2: every prediction twice too long; 0.5: half as long as the truth; 3: beyond the
    # 0.5-2x the guard assumes before it has measured batches.
    assert makespan_change(factor, seed) <= 0.05


def test_a_horizon_from_the_plan_breaks_the_bound_there() -> None:
    # The same run, with the cut's moves allowed to end by the plan's uncut makespan (3x too
    # long here) instead of the latest finish the online estimates predict: +5.9% (seed 3;
    # seeds 0 and 2 too). So the test above can fail.
    assert makespan_change(3.0, 3, plan_horizon=True) > 0.05


def test_round_robin_on_all_slots_is_always_a_candidate() -> None:
    first, _, prompt_tokens = heavy_epochs(1)
    scaler = Scaler(ScalingConfig(policy="rlhfless"), SLOTS, "l40s", throughput=PARAMS)
    ids = list(range(PROMPTS))
    scaler.observe(ids, first)
    plan = scaler.plan(ids, prompt_tokens, GROUP)
    assert plan.decision is not None
    rr = [p for p in plan.decision.curve if p.method == "round_robin" and p.k == SLOTS]
    assert len(rr) == 1
    chosen = plan.decision.chosen
    # Never worse than round robin in both planned cost and time.
    assert (
        chosen.planned_usd <= rr[0].planned_usd or chosen.planned_seconds <= rr[0].planned_seconds
    )


def test_first_plan_with_nothing_observed_is_never_costlier_than_round_robin() -> None:
    _, _, prompt_tokens = heavy_epochs(2)
    scaler = Scaler(ScalingConfig(policy="rlhfless"), SLOTS, "l40s", throughput=PARAMS)
    plan = scaler.plan(list(range(PROMPTS)), prompt_tokens, GROUP)
    assert plan.decision is not None
    rr = next(p for p in plan.decision.curve if p.method == "round_robin" and p.k == SLOTS)
    assert plan.decision.chosen.planned_usd <= rr.planned_usd


def test_scales_are_the_measured_batch_range_once_enough_batches() -> None:
    assert calibrated_scales([1.2] * (MIN_BATCHES - 1)) == DEFAULT_SCALES
    assert calibrated_scales([0.8, 1.3, 1.1]) == (0.8, 1.0, 1.3)


def test_conformal_upper_is_the_finite_sample_rank() -> None:
    values = [float(i) for i in range(1, 11)]  # 10 values
    assert conformal_upper(values, 0.9) == 10.0  # ceil(11 * 0.9) = 10th
    assert conformal_upper(values, 0.5) == 6.0  # ceil(5.5) = 6th


@settings(max_examples=25, deadline=None)
@given(
    lengths=st.lists(
        st.lists(st.integers(1, 3000), min_size=2, max_size=4), min_size=1, max_size=12
    ),
    slots=st.integers(1, 4),
)
def test_the_choice_is_never_worse_than_round_robin_in_both(
    lengths: list[list[int]], slots: int
) -> None:
    works = works_from(lengths)
    decision = choose_k(
        works, range(1, slots + 1), PARAMS, get_model("aws"), "l40s", within_fraction=0.03,
        method="stratified", worst_case=WorstCase(),
    )  # fmt: skip
    rr = next(p for p in decision.curve if p.method == "round_robin" and p.k == slots)
    chosen = decision.chosen
    assert not (chosen.planned_usd > rr.planned_usd and chosen.planned_seconds > rr.planned_seconds)


def test_covering_scenarios_are_the_fewest_whose_rank_exists() -> None:
    assert [covering_scenarios(q, 16) for q in (0.5, 0.8, 0.9, 0.95, 1.0)] == [1, 4, 9, 16, 16]
    assert covering_scenarios(0.9, 4) == 4  # all there are


@pytest.mark.parametrize("bad", [3, 8])
def test_a_cut_is_checked_on_enough_scenarios_to_cover_its_quantile(bad: int) -> None:
    """One function is slowest against two where the lengths are short (its prefill weighs
    most); that draw is the 9th, which the check at 0.9 needs (the largest of 8 covers 8/9)."""
    works = works_from([[1000.0] * 4, [1000.0] * 4], prompt=20000)
    scenarios = [[[1000.0] * 4, [1000.0] * 4] for _ in range(16)]
    scenarios[bad] = [[10.0] * 4, [10.0] * 4]
    margin = Margin(scenarios=scenarios)
    guard = WorstCase(quantile=0.9, scales=(1.0,))  # on the first 9: the largest of them
    one, two = assign_stratified(works, 1, PARAMS), assign_round_robin(works, 2, PARAMS)
    base = baseline_makespans(two, works, margin, PARAMS, guard)
    cut = worst_cut_ratio(
        one, base, works, margin, PARAMS, guard, ("per_function", 0.9), TransferParams()
    )
    ratios = [
        simulate_rollout(s, [20000, 20000], one.groups, PARAMS, prewarm=True).makespan / b
        for s, b in zip(scenarios[:9], base[1.0], strict=False)
    ]
    assert max(ratios) == ratios[bad] > 1.1 * sorted(ratios)[-2]  # the short draw is the worst
    assert cut == pytest.approx(max(ratios), rel=0.02)
