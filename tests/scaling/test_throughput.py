from __future__ import annotations

import pytest

from rlhfless.runtime.messages import BillingEvent
from rlhfless.scaling import (
    BadScalingSetting,
    ThroughputModel,
    ThroughputParams,
    decode_seconds,
    decode_timeline,
)


def test_timeline_batch_shrinks_as_sequences_finish() -> None:
    p = ThroughputParams(step_seconds=1.0, step_seconds_per_seq=0.5, max_batch=8)
    # lengths 1 and 3: step 1 at batch 2 (2 s), then 2 steps at batch 1 (1.5 s each)
    assert decode_timeline([1, 3], p) == pytest.approx([2.0, 5.0])
    assert decode_seconds([0, 0], p) == 0


def test_timeline_queues_beyond_max_batch() -> None:
    p = ThroughputParams(step_seconds=1.0, step_seconds_per_seq=0.0, max_batch=1)
    assert decode_timeline([2, 3], p) == pytest.approx([2.0, 5.0])


def test_calibration_recovers_the_step_time_line() -> None:
    t0, t1 = 0.02, 0.0005
    m = ThroughputModel(ThroughputParams(step_seconds=1.0, step_seconds_per_seq=0.1), 1e-6)
    for steps, tokens in ((100, 100), (100, 3000), (50, 6400), (200, 1000)):
        m.observe_decode(steps, tokens, t0 * steps + t1 * tokens)
    p = m.params()
    assert p.step_seconds == pytest.approx(t0, rel=0.02)
    assert p.step_seconds_per_seq == pytest.approx(t1, rel=0.02)


def test_one_observation_stays_well_posed_and_non_negative() -> None:
    m = ThroughputModel()
    m.observe_decode_step(32, 0.001)
    p = m.params()
    assert p.step_seconds >= 0 and p.step_seconds_per_seq >= 0
    assert p.step_time(32) > 0


def test_prefill_cold_start_and_weight_load_are_measured() -> None:
    m = ThroughputModel()
    m.observe_prefill(1000, 0.5)
    m.observe_prefill(3000, 0.5)
    ev = BillingEvent(
        function_id="f", actor="a", node="n", slot=0, device_kind="cpu",
        requested_at=100.0, ready_at=103.5,
    )  # fmt: skip
    m.observe_billing_event(ev)
    m.observe_weight_load(1.25)
    p = m.params()
    assert p.prefill_tokens_per_s == pytest.approx(4000)
    assert p.cold_start_seconds == pytest.approx(3.5)
    assert p.weight_load_seconds == pytest.approx(1.25)
    assert m.predict_seconds(4000, []) == pytest.approx(1.0)


def test_state_round_trips() -> None:
    m = ThroughputModel()
    m.observe_decode(10, 50, 0.3)
    m.observe_cold_start(2.0)
    assert ThroughputModel.from_dict(m.to_dict()).params() == m.params()


def test_bad_params_are_rejected() -> None:
    with pytest.raises(BadScalingSetting, match="prefill_tokens_per_s"):
        ThroughputParams(prefill_tokens_per_s=0)
    with pytest.raises(BadScalingSetting, match="max_batch"):
        ThroughputParams(max_batch=0)
