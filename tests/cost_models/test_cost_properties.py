"""Hypothesis properties of the billing rules and the ledger."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rlhfless.cost_models import Lifetime, builtin_models, merge_intervals, price_events
from rlhfless.runtime.messages import BillingEvent

from .helpers import T0, table_model

MODELS = [  # every shipped model that prices an h100 (aws-spot prices only h200)
    *(m for m in builtin_models().values() if "h100" in m.rates()),
    table_model(granularity=0.001, minimum=0.5, cold=False, name="ms-free-cold"),
    table_model(granularity=3600, minimum=0, name="hourly"),
]
PROPERTY = settings(max_examples=150, deadline=None)

seconds = st.floats(min_value=0, max_value=5000, allow_nan=False, allow_infinity=False)


@st.composite
def lifetimes(draw: st.DrawFn) -> Lifetime:
    start = T0 + draw(seconds)
    cold = draw(seconds)
    never_ready = draw(st.booleans())
    rest = draw(seconds)
    ready = None if never_ready else start + cold
    end = start + cold + rest
    busy = []
    if ready is not None:
        for a, b in draw(st.lists(st.tuples(seconds, seconds), max_size=4)):
            lo, hi = sorted((a, b))
            busy.append((ready + min(lo, rest), ready + min(hi, rest)))
    return Lifetime(requested_at=start, ready_at=ready, exited_at=end, busy=tuple(busy))


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.name)
@PROPERTY
@given(life=lifetimes(), later=seconds, earlier=seconds)
def test_cost_never_decreases_when_a_lifetime_grows(
    model, life: Lifetime, later: float, earlier: float
) -> None:
    kind = "h100"
    base = model.price(kind, life).usd
    longer = Lifetime(
        requested_at=life.requested_at,
        ready_at=life.ready_at,
        exited_at=life.exited_at + later,
        busy=life.busy,
    )
    assert model.price(kind, longer).usd >= base
    started_earlier = Lifetime(
        requested_at=life.requested_at - earlier,
        ready_at=life.ready_at,
        exited_at=life.exited_at,
        busy=life.busy,
    )
    assert model.price(kind, started_earlier).usd >= base


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.name)
@PROPERTY
@given(life=lifetimes(), slots=st.integers(1, 8))
def test_buckets_add_up_to_the_bill(model, life: Lifetime, slots: int) -> None:
    bill = model.price("h100", life, slots)
    assert bill.usd >= 0 and min(bill.busy_usd, bill.idle_usd, bill.cold_start_usd) >= 0
    assert bill.busy_usd + bill.idle_usd + bill.cold_start_usd == pytest.approx(bill.usd, abs=1e-9)
    assert 0 <= bill.padding_usd <= bill.idle_usd + 1e-12


@PROPERTY
@given(st.lists(st.tuples(seconds, seconds), max_size=8))
def test_merged_intervals_are_sorted_disjoint_and_no_longer(raw: list[tuple[float, float]]) -> None:
    intervals = [tuple(sorted(p)) for p in raw]
    merged = merge_intervals(intervals)
    assert all(a < b for a, b in merged)
    assert all(merged[i][1] < merged[i + 1][0] for i in range(len(merged) - 1))
    assert sum(b - a for a, b in merged) <= sum(b - a for a, b in intervals) + 1e-9


@st.composite
def runs(draw: st.DrawFn, whole_seconds: bool) -> list[BillingEvent]:
    """Functions placed on (node, slot) without overlap, as a real runtime would place them."""
    free: dict[tuple[str, int], float] = {}
    events = []
    number = st.integers(0, 300) if whole_seconds else seconds
    for i in range(draw(st.integers(1, 12))):
        node = draw(st.sampled_from(["n1", "n2"]))
        slots = draw(st.sampled_from([1, 1, 1, 2, 4]))
        first = draw(st.integers(0, 8 - slots))
        held = [(node, first + k) for k in range(slots)]
        start = max(free.get(h, 0.0) for h in held) + draw(number)
        cold, busy_for, idle_for = draw(number), draw(number), draw(number)
        ready, end = start + cold, start + cold + busy_for + idle_for
        for h in held:
            free[h] = end
        events.append(
            BillingEvent(
                function_id=f"f{i}",
                actor="x:Y",
                stage="rollout",
                node=node,
                slot=first,
                slots=slots,
                device_kind="h100",
                requested_at=T0 + start,
                ready_at=T0 + ready,
                busy=[(T0 + ready, T0 + ready + busy_for)],
                exited_at=T0 + end,
            )
        )
    return events


@PROPERTY
@given(runs(whole_seconds=True))
def test_serverful_costs_at_least_serverless_under_per_second_billing(run) -> None:
    # Whole-second times: per-second rounding then adds nothing to either side. (With fractional
    # times, or a minimum charge, many short functions can out-cost one rental; see the ledger
    # tests.)
    result = price_events(builtin_models()["modal"], run)
    assert result.serverful.usd >= result.total.usd - 1e-9


@PROPERTY
@given(runs(whole_seconds=False))
def test_serverful_costs_at_least_serverless_under_continuous_billing(run) -> None:
    result = price_events(builtin_models()["onprem"], run)
    assert result.serverful.usd >= result.total.usd * (1 - 1e-9)
