"""The cut planned and simulated with the online estimates the rollout stage's cut controller
makes (``simulate_rollout(remaining="siblings")``, scaling/online.py): nothing lost, the same
numbers as the predictor's own, and a batch of prompts never seen before gets a cut that pays
within the bound."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rlhfless.scaling import (
    BadScalingInput,
    ScalingConfig,
    ThroughputParams,
    assign_round_robin,
    simulate_rollout,
)
from rlhfless.scaling.online import SiblingPredictor, median_remaining
from rlhfless.scaling.policy import Scaler
from tests.scaling.helpers import heavy_tail_groups, works_from

PARAMS = ThroughputParams(cold_start_seconds=5.0, max_batch=64)
# A 7B model on one L40S, as benchmarks/scaling.py models it.
L40S = ThroughputParams(
    step_seconds=0.018, step_seconds_per_seq=0.00008, prefill_tokens_per_s=12000.0,
    cold_start_seconds=5.0, weight_load_seconds=2.0, max_batch=256,
)  # fmt: skip
CAP = 4096


@settings(max_examples=200, deadline=None)
@given(
    centre=st.floats(0.5, 5000),
    produced=st.integers(0, 6000),
    shape=st.lists(st.floats(0.05, 20), min_size=1, max_size=16),
    limit=st.one_of(st.none(), st.integers(1, 4096)),
)
def test_remaining_at_is_median_remaining(
    centre: float, produced: int, shape: list[float], limit: int | None
) -> None:
    p = SiblingPredictor({"g": 4}, shape=shape, max_new_tokens=limit)
    support = [centre * r for r in sorted(shape)]
    assert p.remaining_at(centre, produced) == median_remaining(support, produced, limit)


@pytest.mark.parametrize("cut", ["per_function", "global"])
@pytest.mark.parametrize("seen", [True, False])
def test_every_sequence_decodes_exactly_its_length(cut: str, seen: bool) -> None:
    groups = heavy_tail_groups(48, 8, 3)
    a = assign_round_robin(works_from(groups), 6, PARAMS)
    r = simulate_rollout(
        groups, [100] * 48, a.groups, PARAMS, cut=cut, threshold=0.7,  # type: ignore[arg-type]
        predicted=[[300.0] * 8] * 48, remaining="siblings",
        priors=None if seen else [0.0] * 48,
    )  # fmt: skip
    assert r.moves >= 1
    assert r.tokens_per_sequence == [x for g in groups for x in g]
    assert sum(f.tokens for f in r.functions) == sum(r.tokens_per_sequence)


def test_priors_must_match_the_groups() -> None:
    groups = heavy_tail_groups(4, 2, 1)
    with pytest.raises(BadScalingInput, match="4 groups, 3 priors"):
        simulate_rollout(
            groups, [10] * 4, [[0, 1], [2, 3]], PARAMS, cut="per_function",
            remaining="siblings", priors=[1.0, 1.0, 1.0],
        )  # fmt: skip
    with pytest.raises(BadScalingInput, match="priors must be finite"):
        simulate_rollout(
            groups, [10] * 4, [[0, 1], [2, 3]], PARAMS, cut="per_function",
            remaining="siblings", priors=[1.0, float("nan"), 1.0, 1.0],
        )  # fmt: skip
    with pytest.raises(BadScalingInput, match="conditional/naive/siblings"):
        simulate_rollout(groups, [10] * 4, [[0, 1], [2, 3]], PARAMS, remaining="oracle")  # type: ignore[arg-type]


def _heavy(rng: random.Random, medians: list[float]) -> list[list[int]]:
    """One epoch: 8 samples per prompt, lognormal around its median, 5% of samples 10x."""
    return [
        [
            max(1, min(CAP, int(rng.lognormvariate(m, 0.4) * (10 if rng.random() < 0.05 else 1))))
            for _ in range(8)
        ]
        for m in medians
    ]


@pytest.mark.parametrize("seed", [0, 1])
def test_a_batch_of_new_prompts_gets_a_cut_that_pays_within_the_bound(seed: int) -> None:
    # The predictor has seen 128 other prompts once; every prompt of this batch is new (a job's
    # first epoch). Until the cut was planned on online estimates, none was planned here: its
    # effect could not be judged before errors of seen prompts were measured.
    rng = random.Random(seed)
    old = [rng.gauss(math.log(300), 0.7) for _ in range(128)]
    new = [rng.gauss(math.log(300), 0.7) for _ in range(128)]
    scaler = Scaler(
        ScalingConfig(policy="rlhfless"), 8, "l40s", throughput=L40S, max_new_tokens=CAP
    )
    scaler.observe([f"old{i}" for i in range(128)], _heavy(rng, old))
    ids = [f"new{i}" for i in range(128)]
    tokens = [rng.randint(200, 1024) for _ in range(128)]
    truth = _heavy(rng, new)
    plan = scaler.plan(ids, tokens, 8)
    assert plan.cut == "per_function"
    works = scaler.works(ids, tokens, 8)
    predicted = [list(w.lengths) for w in works]
    rr = assign_round_robin(works, 8, L40S)
    base = simulate_rollout(
        truth, tokens, rr.groups, L40S, predicted=predicted, warm=8, hold_to_end=True
    )
    run = {
        "predicted": predicted, "prewarm": True, "shape": scaler.predictor.shape_ratios(),
        "max_new_tokens": CAP, "remaining": "siblings", "priors": [0.0] * 128,
    }  # fmt: skip
    cut = simulate_rollout(
        truth, tokens, plan.groups, L40S, cut="per_function", threshold=plan.cut_threshold, **run
    )  # type: ignore[arg-type]
    uncut = simulate_rollout(truth, tokens, plan.groups, L40S, **run)  # type: ignore[arg-type]
    assert cut.tokens_per_sequence == [x for g in truth for x in g]
    assert cut.makespan <= 1.05 * base.makespan
    assert cut.function_seconds < 0.8 * uncut.function_seconds  # 32-43% less on seeds 0-3
