"""The generation limit (``rollout.max_new_tokens``) bounds what the cut planner expects a
straggler still to produce: no sample outlives it."""

from __future__ import annotations

import math

import pytest

from rlhfless.scaling import (
    BadScalingSetting,
    LengthPredictor,
    Scaler,
    ScalingConfig,
    ThroughputParams,
    TransferParams,
    simulate_rollout,
)
from rlhfless.scaling.margin import Margin
from rlhfless.scaling.predictor import expected_remaining
from tests.scaling.test_margin import _heavy_epochs

PARAMS = ThroughputParams(
    step_seconds=0.018, step_seconds_per_seq=0.00008, cold_start_seconds=0.0,
    weight_load_seconds=0.0, max_batch=8,
)  # fmt: skip
FAST_MOVE = TransferParams(prefill_tokens_per_s=1e6)


def test_remaining_never_runs_past_the_limit() -> None:
    support = [100.0, 200.0]
    # Past every point the estimate is tail x produced (800), but the limit leaves 200.
    assert expected_remaining(support, 800) == pytest.approx(800.0)
    assert expected_remaining(support, 800, max_new_tokens=1000) == pytest.approx(200.0)
    # Inside the support the conditional mean (50) is cut to what the limit leaves (10).
    assert expected_remaining(support, 150, max_new_tokens=1000) == pytest.approx(50.0)
    assert expected_remaining(support, 150, max_new_tokens=160) == pytest.approx(10.0)
    assert expected_remaining(support, 1000, max_new_tokens=1000) == 1.0  # still at least 1
    pred = LengthPredictor(alpha=1.0)
    pred.observe("p", [100, 100, 200, 200])
    assert pred.remaining("p", 800) == pytest.approx(800.0)
    assert pred.remaining("p", 800, max_new_tokens=900) == pytest.approx(100.0)


@pytest.mark.parametrize("bad", [0, -5, 0.5, math.nan, math.inf, "512", True])
def test_a_limit_that_is_not_a_token_count_is_rejected(bad: object) -> None:
    with pytest.raises(BadScalingSetting, match="max_new_tokens"):
        expected_remaining([10.0], 0, max_new_tokens=bad)  # type: ignore[arg-type]
    with pytest.raises(BadScalingSetting, match="max_new_tokens"):
        Scaler(ScalingConfig(policy="rlhfless"), slots=2, max_new_tokens=bad)  # type: ignore[arg-type]
    with pytest.raises(BadScalingSetting, match="max_new_tokens"):
        Margin(max_new_tokens=bad)  # type: ignore[arg-type]
    with pytest.raises(BadScalingSetting, match="max_new_tokens"):
        simulate_rollout([[1]], [1.0], [[0]], PARAMS, max_new_tokens=bad)  # type: ignore[arg-type]


def _straggler_rollout(limit: int | None):  # type: ignore[no-untyped-def]
    """Function 0's last sample (95 tokens) outlives its group's profile (10, 10, 60, 60): when
    its third finishes (step 60, τ 0.75) it looks to have as much again to go (60), unless the
    limit (100) says at most 40. Functions 1 and 2 run 100-token samples, 4 and 1 of them."""
    lengths = [[10, 10, 60, 95], [100] * 4, [100]]
    predicted = [[10.0, 10.0, 60.0, 60.0], [100.0] * 4, [100.0]]
    return simulate_rollout(
        lengths, [10.0, 10.0, 10.0], [[0], [1], [2]], PARAMS, predicted=predicted,
        cut="per_function", threshold=0.75, transfer=FAST_MOVE, max_new_tokens=limit,
    )  # fmt: skip


def test_the_limit_lets_a_straggler_near_it_move_without_extending_the_rollout() -> None:
    unbounded, bounded = _straggler_rollout(None), _straggler_rollout(100)
    # Without the limit the straggler's 60 tokens would end past every other function: kept.
    assert unbounded.moves == 0 and unbounded.cuts == 0
    # With it, it fits on function 2 (1 sequence, 40 to go): function 0 is released at once.
    assert bounded.moves == 1 and bounded.cuts == 1
    assert bounded.functions[0].released_at < unbounded.functions[0].released_at
    assert bounded.function_seconds < unbounded.function_seconds
    assert bounded.makespan <= unbounded.makespan * 1.001
    # Nothing is lost or truncated either way: every sample decodes its true length.
    truth = [10, 10, 60, 95, 100, 100, 100, 100, 100]
    assert bounded.tokens_per_sequence == truth == unbounded.tokens_per_sequence


def test_the_scaler_hands_its_limit_to_the_margins_cut_simulations() -> None:
    epochs = _heavy_epochs(32, 8, 2, seed=0)
    scaler = Scaler(ScalingConfig(policy="rlhfless", cut="auto"), slots=4, device_kind="l40s",
                    max_new_tokens=4096)  # fmt: skip
    ids = list(range(32))
    scaler.observe(ids, epochs[0])
    margin = scaler.margin(ids, scaler.works(ids, [300] * 32, 8))
    assert margin is not None and margin.cuts and margin.max_new_tokens == 4096.0
