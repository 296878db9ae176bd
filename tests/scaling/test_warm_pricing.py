"""A function reused warm extends a life already paid for: the plan prices it by the second, as
the rollout stage prices its warm leases, instead of charging a new per-start minimum. New
functions are priced as ``aws`` rents them: whole instances, placed the cheapest way."""

from __future__ import annotations

import pytest

from rlhfless.cost_models import Lifetime, get_model, price_planned
from rlhfless.scaling import Scaler, ScalingConfig, ThroughputParams, assign_round_robin
from rlhfless.scaling.curve import evaluate, life_usd
from rlhfless.scaling.simulate import simulate_rollout
from tests.scaling.helpers import works_from

AWS = get_model("aws")  # whole instances, per second, 60 s minimum per start, cold start billed
# One new L40S function under a minute: cheapest on its own g6e.xlarge, its 60 s minimum
NEW = price_planned(AWS, "l40s", [Lifetime.planned(5.0, 10.0)])
PARAMS = ThroughputParams(
    step_seconds=0.02, step_seconds_per_seq=0.0, prefill_tokens_per_s=1e9,
    cold_start_seconds=5.0, weight_load_seconds=1.0, max_batch=64,
)  # fmt: skip


def test_a_warm_life_costs_its_seconds_a_new_one_the_minimum() -> None:
    rate = AWS.rate("l40s")
    assert life_usd(AWS, "l40s", 0.0, 10.0, warm=True) == pytest.approx(10.0 * rate)
    assert life_usd(AWS, "l40s", 0.0, 10.0, 2.0, slots_per_function=2, warm=True) == (
        pytest.approx(24.0 * rate)
    )
    new = life_usd(AWS, "l40s", 5.0, 10.0)
    assert new == AWS.price("l40s", Lifetime.planned(5.0, 10.0)).usd
    assert new == pytest.approx(60.0 * rate)  # 15 s of life, billed the 60 s minimum


def test_the_plan_prices_its_warm_functions_by_the_second() -> None:
    works = works_from([[100] * 4 for _ in range(4)])  # 4 groups of 4 x 100 tokens: 2 s each
    a = assign_round_robin(works, 2, PARAMS)
    rate = AWS.rate("l40s")
    lives = [PARAMS.weight_load_seconds + load for load in a.loads]
    cold = evaluate(a, PARAMS, AWS, "l40s")
    assert cold.usd == pytest.approx(2 * NEW)  # two new lives, each under the minimum
    # cheaper than the same GPUs' share of an 8-GPU instance, minimum per function
    assert cold.usd < 2 * 60.0 * rate
    one = evaluate(a, PARAMS, AWS, "l40s", warm=1)
    heaviest = max(range(2), key=lambda f: a.loads[f])
    assert one.usd == pytest.approx(lives[heaviest] * rate + NEW)
    both = evaluate(a, PARAMS, AWS, "l40s", warm=2)
    assert both.usd == pytest.approx(sum(lives) * rate)
    assert both.seconds == pytest.approx(max(lives))  # no cold start in the makespan either


def test_a_simulated_rollouts_warm_functions_are_priced_the_same_way() -> None:
    lengths = [[100] * 4 for _ in range(4)]
    r = simulate_rollout(lengths, [10.0] * 4, [[0, 1], [2, 3]], PARAMS, warm=1)
    assert [f.warm for f in r.functions] == [True, False]
    rate = AWS.rate("l40s")
    warm, cold = r.functions
    assert r.usd(AWS, "l40s") == pytest.approx(
        warm.held_seconds * rate + price_planned(AWS, "l40s", [cold.lifetime()])
    )
    assert warm.held_seconds * rate < AWS.price("l40s", warm.lifetime()).usd  # no minimum


def test_the_scalers_fixed_plan_predicts_what_the_stage_will_measure_for_warm_functions() -> None:
    scaler = Scaler(ScalingConfig(), slots=2, device_kind="l40s", throughput=PARAMS)
    ids = list(range(4))
    scaler.observe(ids, [[100] * 4] * 4)
    first = scaler.plan(ids, [10] * 4, 4, warm=0)
    again = scaler.plan(ids, [10] * 4, 4, warm=2)
    assert first.predicted_usd == pytest.approx(2 * NEW)
    # Reused warm, the rollout costs its seconds: what RolloutStage._price charges its leases.
    assert again.predicted_usd < first.predicted_usd / 5
    assert again.predicted_usd == pytest.approx(
        sum(life_usd(AWS, "l40s", 0.0, PARAMS.weight_load_seconds + x, warm=True)
            for x in assign_round_robin(scaler.works(ids, [10] * 4, 4), 2, PARAMS).loads)
    )  # fmt: skip
