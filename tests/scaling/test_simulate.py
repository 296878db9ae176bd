"""The policies end to end on a simulated rollout, and the Scaler facade the pipeline calls."""

from __future__ import annotations

import pytest

from rlhfless.cost_models import get_model
from rlhfless.scaling import (
    BadScalingSetting,
    FunctionProgress,
    Scaler,
    ScalingConfig,
    SequenceProgress,
    ThroughputParams,
    assign_pack,
    assign_round_robin,
    simulate_rollout,
)
from tests.scaling.helpers import heavy_tail_groups, lognormal_groups, works_from

PARAMS = ThroughputParams(cold_start_seconds=5.0, max_batch=64)


@pytest.mark.parametrize("cut", ["none", "per_function", "global"])
@pytest.mark.parametrize("groups", [lognormal_groups(48, 8, 1), heavy_tail_groups(48, 8, 2)])
def test_every_sequence_decodes_exactly_its_length(cut: str, groups: list) -> None:
    works = works_from(groups)
    a = assign_round_robin(works, 6, PARAMS)
    r = simulate_rollout(groups, [100] * len(groups), a.groups, PARAMS, cut=cut, threshold=0.5)  # type: ignore[arg-type]
    assert r.tokens_per_sequence == [x for g in groups for x in g]
    assert sum(f.tokens for f in r.functions) == sum(r.tokens_per_sequence)


def test_per_function_cut_fires_and_releases_functions_early() -> None:
    groups = heavy_tail_groups(48, 8, 7)
    a = assign_round_robin(works_from(groups), 6, PARAMS)
    plain = simulate_rollout(groups, [100] * 48, a.groups, PARAMS)
    cut = simulate_rollout(groups, [100] * 48, a.groups, PARAMS, cut="per_function")
    assert cut.cuts >= 1 and cut.moves >= 1
    assert cut.function_seconds < plain.function_seconds
    assert cut.tokens_per_sequence == plain.tokens_per_sequence


def test_holding_to_the_end_turns_early_finishes_into_idle_time() -> None:
    groups = lognormal_groups(32, 4, 3)
    a = assign_pack(works_from(groups), 4, PARAMS)
    held = simulate_rollout(groups, [50] * 32, a.groups, PARAMS, hold_to_end=True)
    released = simulate_rollout(groups, [50] * 32, a.groups, PARAMS)
    assert held.makespan == released.makespan
    assert released.idle_seconds == pytest.approx(0.0, abs=1e-9)
    assert held.idle_seconds > 0
    aws = get_model("aws")
    assert held.usd(aws, "a10g") >= released.usd(aws, "a10g")


def test_zero_length_and_single_prompt_rollouts() -> None:
    r = simulate_rollout([[0, 0, 0]], [10], [[0]], PARAMS, cut="per_function")
    assert r.tokens_per_sequence == [0, 0, 0]
    one = simulate_rollout([[5]], [0], [[0]], PARAMS, prewarm=True)
    assert one.makespan == pytest.approx(PARAMS.weight_load_seconds + 5 * PARAMS.step_time(1))


def test_scaler_facade_plan_observe_migrate_checkpoint() -> None:
    cfg = ScalingConfig(policy="rlhfless", cost_model="onprem", lam=0.0001, cut="per_function")
    s = Scaler(cfg, slots=4, device_kind="l40s", throughput=PARAMS)
    ids = list(range(12))
    prompts = [[1, 2, 3, *range(100, 100 + i)] for i in ids]
    groups = lognormal_groups(12, 4, 9)
    plan = s.plan(ids, prompts, group_size=4)
    assert sorted(i for g in plan.groups for i in g) == ids
    assert plan.decision is not None and plan.functions <= 4
    s.observe(ids, groups, decode=[(300, 2000, 9.0)], prefill=[(5000, 0.4)], cold_starts=[3.0])
    after = s.plan(ids, prompts, group_size=4)
    assert after.predicted_lengths != plan.predicted_lengths
    assert s.prediction_error().n == 12
    progress = [
        FunctionProgress(function_id="0", assigned=10, finished=9, max_batch=8, unfinished=(
            SequenceProgress(seq_id="x", prompt_tokens=5, tokens=(1, 2), predicted_remaining=3),
        )),
        FunctionProgress(function_id="1", assigned=10, finished=1, max_batch=16, unfinished=tuple(
            SequenceProgress(seq_id=i, prompt_tokens=5, produced=4, predicted_remaining=400)
            for i in range(9)
        )),
    ]  # fmt: skip
    mig = s.migration(progress)
    assert mig.cut == ["0"] and mig.moves[0].tokens == (1, 2)
    restored = Scaler.from_dict(s.to_dict(), cfg, 4, "l40s", throughput=PARAMS)
    assert restored.plan(ids, prompts, 4).groups == after.groups


def test_fixed_policy_is_round_robin_over_the_slots_and_never_cuts() -> None:
    s = Scaler(ScalingConfig(), slots=3, device_kind="cpu")
    plan = s.plan(list(range(7)), [10] * 7, group_size=2)
    assert plan.groups == [[0, 3, 6], [1, 4], [2, 5]]
    assert plan.cut == "none" and s.migration([]).empty


def test_scaler_rejects_an_unpriced_device_kind() -> None:
    from rlhfless.cost_models import UnknownDeviceKind

    with pytest.raises(UnknownDeviceKind):
        Scaler(ScalingConfig(), slots=1, device_kind="tpu-v9")
    with pytest.raises(BadScalingSetting, match="slots"):
        Scaler(ScalingConfig(), slots=0)
