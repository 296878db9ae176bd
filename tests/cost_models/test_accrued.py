"""The bill accrued by a time (cost_models/accrued.py): each line of the whole run's bill (a
function; an instance run's unheld time) spread evenly over its life; the whole bill once every
line has ended. A stretch of a run is billed as a difference of two."""

from __future__ import annotations

import itertools
import random

import pytest

from rlhfless.cost_models import (
    UNUSED_STAGE,
    Accrual,
    FunctionStillAlive,
    Ledger,
    TableCostModel,
    accrued_usd,
    builtin_models,
    price_events,
)
from tests.cost_models.helpers import T0, event, table_model

MODELS = list(builtin_models())  # every shipped price table


def some_events(seed: int, kind: str = "h100", widest: int = 8) -> list:
    """Functions of 1, 2 or ``widest`` slots on three nodes, some never ready, some of no
    length, each within one ``widest``-slot instance."""
    rng = random.Random(seed)
    sizes = sorted({1, min(2, widest), widest})
    out = []
    for i in range(14):
        start = rng.uniform(0, 300)
        ready = None if i % 7 == 3 else start + rng.uniform(0, 30)
        end = (ready or start) + (0.0 if i % 5 == 4 else rng.uniform(0, 200))
        busy = [] if ready is None else [(ready, ready + (end - ready) * rng.random())]
        slots = sizes[i % len(sizes)]
        slot = (i * slots) % widest if widest > 1 else i
        out.append(event(f"f{i}", requested=start, ready=ready, exited=end, busy=busy,
                         node=f"n{i % 3}", slot=slot, slots=slots, kind=kind))  # fmt: skip
    return out


def model_events(name: str, seed: int) -> tuple[TableCostModel, list]:
    """A shipped model and events it can price: on an H100 where it has one, else its first
    kind, no function wider than its widest instance of that kind."""
    model = builtin_models()[name]
    kind = "h100" if "h100" in model.rates() else sorted(model.rates())[0]
    widest = max(r.devices for r in model.shapes[kind]) if model.rented == "instance" else 8
    return model, some_events(seed, kind, widest)


@pytest.mark.parametrize("name", MODELS)
def test_after_every_exit_it_is_the_whole_bill_and_before_nothing(name: str) -> None:
    model, events = model_events(name, 0)
    whole = price_events(model, events).total.usd
    assert whole > 0
    assert accrued_usd(model, events, T0 + 10_000) == pytest.approx(whole)
    assert accrued_usd(model, events, T0 - 1) == 0.0


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("seed", [1, 2])
def test_it_never_falls_as_time_goes_on(name: str, seed: int) -> None:
    model, events = model_events(name, seed)
    accrual = Accrual(model, events)
    edges = sorted({t for e in events for t in (e.requested_at, e.ready_at, e.exited_at) if t})
    times = sorted({*edges, *(t + d for t in edges for d in (-0.5, 0.001, 0.5))})
    bills = [accrual.at(t) for t in times]
    assert all(earlier <= later + 1e-12 for earlier, later in itertools.pairwise(bills))
    assert bills[-1] > bills[0]


def test_l40s_shapes_of_one_and_eight_gpus() -> None:
    # aws rents L40S as 1-GPU and 8-GPU instances: the cheaper shape is chosen per run.
    model, events = builtin_models()["aws"], some_events(3, "l40s")
    accrual = Accrual(model, events)
    assert accrual.at(T0 + 10_000) == pytest.approx(price_events(model, events).total.usd)


def test_a_function_is_billed_by_the_second_as_it_lives() -> None:
    # $0.001 per second, by the second, cold start billed, 60 s minimum per start.
    events = [event("f", requested=0, ready=10, exited=100, busy=[(10, 80)])]
    accrual = Accrual(table_model(minimum=60.0), events)
    assert accrual.at(T0 + 5) == pytest.approx(0.005)  # starting: not the minimum ahead of time
    assert accrual.at(T0 + 40) == pytest.approx(0.040)
    assert accrual.at(T0 + 100) == pytest.approx(0.100)


def test_a_short_life_spreads_its_minimum_over_the_seconds_it_lived() -> None:
    # b lives 20 s and pays 60: $0.003 a second while it runs, none before or after.
    events = [
        event("a", requested=0, ready=1, exited=100),
        event("b", requested=50, ready=51, exited=70),
    ]
    accrual = Accrual(table_model(minimum=60.0, granularity=10.0), events)
    assert accrual.at(T0 + 50) == pytest.approx(0.050)
    assert accrual.at(T0 + 60) == pytest.approx(0.060 + 0.030)
    assert accrual.at(T0 + 70) == pytest.approx(0.070 + 0.060)
    assert accrual.at(T0 + 100) == pytest.approx(0.100 + 0.060)


def test_an_idle_timeout_is_part_of_the_life_it_follows() -> None:
    # RunPod bills a worker's idle timeout after its last work, even if it exits sooner.
    events = [event("f", requested=0, ready=0, exited=30, busy=[(0, 30)])]
    model = builtin_models()["runpod"]
    accrual = Accrual(model, events)
    assert (
        accrual.at(T0 + 29)
        < accrual.at(T0 + 30)
        == pytest.approx(price_events(model, events).total.usd)
    )


def test_a_run_must_have_ended() -> None:
    with pytest.raises(FunctionStillAlive, match="f"):
        Accrual(table_model(), [event("f", requested=0, ready=1, exited=None)])


def test_an_instance_is_billed_by_the_second_while_it_runs() -> None:
    # One p5 (8 x H100) under aws, 60 s minimum per start: 20 s in, 20 s are billed, not 60;
    # a steady stretch of 60 s costs 60 s of the instance.
    model = builtin_models()["aws"]
    events = [event("f", requested=0, ready=0, exited=300, slots=8)]
    accrual = Accrual(model, events)
    per_second = 8 * model.rate("h100")
    assert accrual.at(T0 + 20) == pytest.approx(20 * per_second)
    assert accrual.at(T0 + 80) - accrual.at(T0 + 20) == pytest.approx(60 * per_second)
    assert accrual.at(T0 + 300) == pytest.approx(price_events(model, events).total.usd)


def test_each_stretch_is_charged_for_the_shape_the_whole_bill_chose() -> None:
    # aws rents L40S as 1-GPU and 8-GPU instances. One function holds slot 0 for 1000 s and
    # short ones come and go on slots 1-7: the whole bill takes one 8-GPU instance, and each
    # stretch of the run is charged for it (priced on the events so far, a stretch would be
    # charged for the 1-GPU shape and the rest would fall at the end).
    model = builtin_models()["aws"]
    events = [event("long", requested=0, ready=0, exited=1000, kind="l40s")]
    events += [
        event(f"s{slot}-{k}", requested=25 * k, ready=25 * k, exited=25 * k + 1, slot=slot,
              kind="l40s")
        for slot in range(1, 8)
        for k in range(40)
    ]  # fmt: skip
    wide = max(model.shapes["l40s"], key=lambda r: r.devices)
    unheld = {e.actor for e, _ in Ledger(model, events).bills() if e.stage == UNUSED_STAGE}
    assert unheld == {f"(instance {wide.instance})"}
    per_second = wide.usd_per_instance_hour / 3600
    accrual = Accrual(model, events)
    assert accrual.at(T0 + 900) - accrual.at(T0 + 500) == pytest.approx(400 * per_second, rel=0.01)
