"""The bill accrued by a time (cost_models.ledger.events_as_of / accrued_usd): what a run would
have cost had it stopped then, so the bill of a stretch of a run is a difference of two."""

from __future__ import annotations

import itertools
import random

import pytest

from rlhfless.cost_models import accrued_usd, events_as_of, get_model, price_events
from tests.cost_models.helpers import T0, event, table_model


def some_events(seed: int) -> list:
    rng = random.Random(seed)
    out = []
    for i in range(12):
        start = rng.uniform(0, 300)
        ready = start + rng.uniform(0, 30)
        end = ready + rng.uniform(0, 200)
        busy = [(ready, ready + (end - ready) * rng.random())]
        out.append(event(f"f{i}", requested=start, ready=ready, exited=end, busy=busy,
                         node=f"n{i % 3}", slot=i % 8))  # fmt: skip
    return out


@pytest.mark.parametrize("name", ["aws", "onprem", "modal"])
def test_after_every_exit_it_is_the_whole_bill(name: str) -> None:
    model, events = get_model(name), some_events(0)
    whole = price_events(model, events).total.usd
    assert whole > 0
    assert accrued_usd(model, events, T0 + 10_000) == pytest.approx(whole)
    assert accrued_usd(model, events, T0 - 1) == 0.0


@pytest.mark.parametrize("name", ["aws", "onprem", "gcp"])
def test_it_never_falls_as_time_goes_on(name: str) -> None:
    model, events = get_model(name), some_events(1)
    bills = [accrued_usd(model, events, T0 + t) for t in range(0, 560, 7)]
    assert all(earlier <= later + 1e-12 for earlier, later in itertools.pairwise(bills))
    assert bills[-1] > bills[0]


def test_a_live_function_is_billed_to_the_time_asked() -> None:
    # $0.001 per second, billed by the second, cold start included.
    events = [event("f", requested=0, ready=10, exited=100, busy=[(10, 80)])]
    model = table_model()
    assert accrued_usd(model, events, T0 + 5) == pytest.approx(0.005)  # still starting
    assert accrued_usd(model, events, T0 + 40) == pytest.approx(0.040)
    assert accrued_usd(model, events, T0 + 100) == pytest.approx(0.100)
    (cut,) = events_as_of(events, T0 + 40)
    assert cut.exited_at is None and cut.busy == [(T0 + 10, T0 + 40)]
    (starting,) = events_as_of(events, T0 + 5)
    assert starting.ready_at is None and starting.busy == []


def test_a_start_costs_its_minimum_as_soon_as_it_is_asked_for() -> None:
    events = [
        event("a", requested=0, ready=1, exited=100),
        event("b", requested=50, ready=51, exited=70),
    ]
    model = table_model(minimum=60.0)
    assert accrued_usd(model, events, T0 + 10) == pytest.approx(0.060)
    # b is requested at 50: its 60 s minimum counts from then, though it lives 20 s.
    assert accrued_usd(model, events, T0 + 55) == pytest.approx(0.120)
    assert accrued_usd(model, events, T0 + 100) == pytest.approx(0.160)
    assert [e.function_id for e in events_as_of(events, T0 + 20)] == ["a"]
