"""The ledger: a small run priced by hand, split by stage and device, against serverful."""

from __future__ import annotations

import pytest
from rich.console import Console

from rlhfless.cost_models import (
    FunctionStillAlive,
    Ledger,
    breakdown_table,
    comparison_table,
    price_events,
)

from .helpers import T0, event, table_model

# h100 at $0.001/s, cpu at $0.0001/s, per second, no minimum.
RUN = [
    # rollout on slot 0: 60 s = cold 10 + busy 40 + idle 10              -> $0.060
    event("a", requested=0, ready=10, busy=[(10, 50)], exited=60),
    # rollout on slot 1: 30 s = cold 10 + busy 10 + idle 10              -> $0.030
    event("b", requested=0, ready=10, busy=[(10, 20)], exited=30, slot=1),
    # train on slots 0-1 (2 slots): 40 s = cold 10 + busy 30, x 2         -> $0.080
    event("c", requested=60, ready=70, busy=[(70, 100)], exited=100, slots=2, stage="train"),
    # reward on CPU slot 0 (CPU slots are numbered apart from GPU slots): 10 s -> $0.001
    event("d", requested=30, ready=31, busy=[(31, 35)], exited=40, kind="cpu", stage="reward"),
]


def test_total_and_buckets() -> None:
    r = price_events(table_model(), RUN)
    assert r.functions == 4
    assert r.total.usd == pytest.approx(0.171)
    assert r.total.busy_usd == pytest.approx(0.040 + 0.010 + 0.060 + 0.0004)
    assert r.total.cold_start_usd == pytest.approx(0.010 + 0.010 + 0.020 + 0.0001)
    assert r.total.idle_usd == pytest.approx(0.010 + 0.010 + 0 + 0.0005)
    assert r.total.busy_usd + r.total.idle_usd + r.total.cold_start_usd == pytest.approx(
        r.total.usd
    )


def test_split_by_stage_and_device() -> None:
    r = price_events(table_model(), RUN)
    assert {k: round(v.usd, 6) for k, v in r.by_stage.items()} == {
        "reward": 0.001,
        "rollout": 0.090,
        "train": 0.080,
    }
    assert {k: round(v.usd, 6) for k, v in r.by_device.items()} == {"cpu": 0.001, "h100": 0.170}
    assert r.by_stage["train"].slot_seconds == pytest.approx(80)


def test_gpu_seconds_exclude_cpu_and_count_every_slot() -> None:
    r = price_events(table_model(), RUN)
    assert r.gpu_seconds == pytest.approx(60 + 30 + 2 * 40)
    assert r.busy_gpu_seconds == pytest.approx(40 + 10 + 2 * 30)
    assert r.total.slot_seconds == pytest.approx(170 + 10)


def test_serverful_holds_every_physical_slot_for_the_whole_run() -> None:
    r = price_events(table_model(), RUN)
    s = r.serverful
    assert (r.start, r.end) == (T0, T0 + 100)
    assert s.slots == 3  # h100 slots 0 and 1 on n1, cpu slot 0 on n1
    assert s.slots_by_device == {"cpu": 1, "h100": 2}
    assert s.span_seconds == pytest.approx(100)
    assert s.usd == pytest.approx(2 * 100 * 0.001 + 100 * 0.0001)  # $0.21
    # busy: h100 slot 0 = 40 (a) + 30 (c); slot 1 = 10 (b) + 30 (c); cpu = 4
    assert s.busy_usd == pytest.approx((70 + 40) * 0.001 + 4 * 0.0001)
    assert r.saving_usd == pytest.approx(0.21 - 0.171)
    assert r.saving_fraction == pytest.approx((0.21 - 0.171) / 0.21)


def test_minimum_charges_can_make_serverless_dearer_than_serverful() -> None:
    # Two 1-second functions on one slot in a 10-second run, 60 s minimum: 2 x 60 s serverless
    # against one 60 s rental.
    run = [event("x", requested=0, ready=0, exited=1), event("y", requested=9, ready=9, exited=10)]
    r = price_events(table_model(minimum=60), run)
    assert r.total.usd == pytest.approx(0.120)
    assert r.serverful.usd == pytest.approx(0.060)
    assert r.saving_usd == pytest.approx(-0.060)


def test_nodes_are_separate_slots() -> None:
    run = [
        event("x", requested=0, ready=0, exited=10),
        event("y", requested=0, exited=10, node="n2"),
    ]
    assert price_events(table_model(), run).serverful.slots == 2


def test_a_later_event_for_the_same_function_replaces_the_earlier() -> None:
    snapshot = event("a", requested=0, ready=10, exited=None)
    final = event("a", requested=0, ready=10, exited=20)
    ledger = Ledger(table_model(), [snapshot, final])
    assert ledger.result().total.usd == pytest.approx(0.020)


def test_live_functions_need_now_and_are_cut_there() -> None:
    run = [event("a", requested=0, ready=10, exited=None)]
    with pytest.raises(FunctionStillAlive):
        price_events(table_model(), run)
    r = price_events(table_model(), run, now=T0 + 25)
    assert r.total.usd == pytest.approx(0.025)
    assert r.end == T0 + 25


def test_empty_run_costs_nothing() -> None:
    r = price_events(table_model(), [])
    assert r.total.usd == r.serverful.usd == r.saving_fraction == 0


def test_unknown_stage_is_grouped() -> None:
    r = price_events(table_model(), [event("a", requested=0, exited=5, stage="")])
    assert list(r.by_stage) == ["(unknown)"]


def test_tables_render_every_model() -> None:
    results = [price_events(table_model(name=n), RUN) for n in ("one", "two")]
    console = Console(width=200, record=True)
    console.print(comparison_table(results))
    console.print(breakdown_table(results, "stage"))
    console.print(breakdown_table(results, "device"))
    text = console.export_text()
    for fragment in ("one", "two", "serverful baseline", "$0.1710", "rollout", "h100"):
        assert fragment in text
