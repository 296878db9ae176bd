"""Billing as rented, on hand-computed traces: whole instances, serverless platforms, spot.

Hand models keep the arithmetic readable: a 4-slot instance at $3.60/h is $0.001 per
instance-second ($0.00025 per slot-second), billed per second with a 60 s minimum per instance
start. The shipped tables are checked with their own published numbers.
"""

from __future__ import annotations

import datetime
import math

import msgspec
import pytest

from rlhfless.cost_models import (
    UNUSED_STAGE,
    Ledger,
    Lifetime,
    NoInstanceFits,
    get_model,
    model_from_dict,
    price_packed,
    price_planned,
)
from rlhfless.runtime.messages import BillingEvent

from .helpers import T0, event

PER_INSTANCE_SECOND = 0.001


def instance_model(minimum: float = 60.0, devices: int = 4):
    row = {
        "device_kind": "h100",
        "instance": f"{devices} x H100 box",
        "devices": devices,
        "price": 3.6,
        "unit": "usd_per_hour",
        "source": "test table",
        "date": datetime.date(2026, 1, 1),
    }
    return model_from_dict(
        {
            "model": {
                "name": "boxes",
                "billing": "rental",
                "rented": "instance",
                "granularity_seconds": 1.0,
                "minimum_seconds": minimum,
            },
            "prices": [row],
        }
    )


def killed(e: BillingEvent) -> BillingEvent:
    """``e`` as the runtime records a function SIGKILLed while a caller held it."""
    assert e.exited_at is not None
    return msgspec.structs.replace(
        e, exit_code=-9, leases=[(e.requested_at, e.exited_at)], released_at=e.exited_at
    )


def released(e: BillingEvent, at: float) -> BillingEvent:
    """``e`` released at ``at`` (relative) and exited normally later."""
    return msgspec.structs.replace(
        e, exit_code=0, leases=[(e.requested_at, T0 + at)], released_at=T0 + at
    )


def test_two_functions_sharing_an_instance_pay_one_minimum() -> None:
    model = instance_model()
    a = event("a", requested=0, ready=2, busy=[(2, 20)], exited=20, slot=0)
    b = event("b", requested=5, ready=7, busy=[(7, 25)], exited=25, slot=1)
    r = Ledger(model, [a, b]).result()
    # One instance, 0 .. 25 s, raised to one 60 s minimum: 60 x $0.001.
    assert r.total.usd == pytest.approx(60 * PER_INSTANCE_SECOND)
    assert r.functions == 2
    # Each function's share is its slot-seconds at $0.00025: 20 s each. The rest (free slots
    # and the minimum) is the instance's own line.
    assert r.by_stage["rollout"].usd == pytest.approx(40 * PER_INSTANCE_SECOND / 4)
    assert r.by_stage[UNUSED_STAGE].usd == pytest.approx(0.060 - 0.010)
    # Billed per function as a GPU share, each start would pay its own minimum: 2 x 60 slot-s.
    share = get_model("aws-gpu-share")
    per_function = Ledger(share, [a, b]).result().total.billed_slot_seconds
    assert per_function == pytest.approx(120)


def test_an_instance_is_billed_while_any_slot_is_warm_and_stops_in_a_gap() -> None:
    model = instance_model()
    # a works 10 s then stays warm until 100; b starts at 50 on another slot, exits at 150:
    # the instance never stops, 0 .. 150.
    a = released(event("a", requested=0, ready=0, busy=[(0, 10)], exited=100, slot=0), 10)
    b = event("b", requested=50, ready=50, busy=[(50, 60)], exited=150, slot=1)
    assert Ledger(model, [a, b]).result().total.usd == pytest.approx(150 * PER_INSTANCE_SECOND)
    # With nothing alive between 30 and 200 the instance stops: two starts, two minimums.
    c = event("c", requested=0, ready=0, busy=[(0, 30)], exited=30, slot=0)
    d = event("d", requested=200, ready=200, busy=[(200, 230)], exited=230, slot=2)
    assert Ledger(model, [c, d]).result().total.usd == pytest.approx(120 * PER_INSTANCE_SECOND)
    # Slots 0-3 are one instance, slot 4 the next: two instances, each its own minimum.
    e = event("e", requested=0, ready=0, busy=[(0, 30)], exited=30, slot=4)
    assert Ledger(model, [c, e]).result().total.usd == pytest.approx(120 * PER_INSTANCE_SECOND)


def test_functions_sharing_a_slot_split_the_instance_and_leave_nothing_unused() -> None:
    model = instance_model(devices=1)
    a = event("a", requested=0, ready=0, busy=[(0, 100)], exited=100, slot=0)
    b = event("b", requested=0, ready=0, busy=[(0, 100)], exited=100, slot=0, stage="reward")
    r = Ledger(model, [a, b]).result()
    assert r.total.usd == pytest.approx(100 * PER_INSTANCE_SECOND)
    assert r.by_stage["rollout"].usd == pytest.approx(r.by_stage["reward"].usd)
    assert UNUSED_STAGE not in r.by_stage


def test_aws_places_a_node_on_its_cheapest_l40s_shape() -> None:
    aws = get_model("aws")
    # One single-GPU function for 100 s: a g6e.xlarge ($1.86/h), not 1/8 of a g6e.48xlarge.
    one = [event("a", requested=0, ready=0, busy=[(0, 100)], exited=100, kind="l40s")]
    assert Ledger(aws, one).result().total.usd == pytest.approx(100 * 1.86 / 3600)
    # Eight at once: eight g6e.xlarge ($14.88/h) still cost less than one g6e.48xlarge.
    eight = [
        event(f"f{i}", requested=0, ready=0, busy=[(0, 100)], exited=100, slot=i, kind="l40s")
        for i in range(8)
    ]
    assert Ledger(aws, eight).result().total.usd == pytest.approx(8 * 100 * 1.86 / 3600)
    # A 2-GPU function does not fit a g6e.xlarge: the node is a g6e.48xlarge, billed whole.
    wide = [event("w", requested=0, ready=0, busy=[(0, 100)], exited=100, slots=2, kind="l40s")]
    assert Ledger(aws, wide).result().total.usd == pytest.approx(100 * 30.13 / 3600)
    # gcp's only H100 shape holds one GPU: a 2-GPU function cannot be placed, and says so.
    with pytest.raises(NoInstanceFits, match="'gcp' has no h100 instance holding a 2-slot"):
        Ledger(get_model("gcp"), [event("w", requested=0, exited=10, slots=2)]).result()


def test_the_serverful_baseline_rents_whole_instances() -> None:
    a = event("a", requested=0, ready=0, busy=[(0, 100)], exited=100)
    r = Ledger(get_model("aws"), [a]).result()
    # The run held 1 H100 of a p5.48xlarge for 100 s: serverless and serverful both pay the
    # whole instance ($55.04/h) for those 100 s.
    assert r.total.usd == pytest.approx(100 * 55.04 / 3600)
    assert r.serverful.usd == pytest.approx(100 * 55.04 / 3600)
    assert r.serverful.slots == 8


def test_modal_bills_the_cpu_and_memory_a_function_requests() -> None:
    modal = get_model("modal")
    a = event("a", requested=0, ready=20, busy=[(20, 90)], exited=100)
    r = Ledger(modal, [a]).result()
    per_second = 3.95 / 3600 + 4 * 0.0000131 + 16 * 0.00000222  # GPU + 4 cores + 16 GiB
    assert r.total.usd == pytest.approx(100 * per_second)
    assert r.total.cold_start_usd == pytest.approx(20 * per_second)  # the start is billed
    # A CPU-only container pays only for its cores and memory.
    cpu = event("c", requested=0, ready=0, busy=[(0, 10)], exited=10, kind="cpu")
    expected = 10 * (4 * 0.0000131 + 16 * 0.00000222)
    assert Ledger(modal, [cpu]).result().total.usd == pytest.approx(expected)


def test_runpod_bills_the_start_rounds_up_and_bills_its_idle_timeout() -> None:
    runpod = get_model("runpod")
    # Started at 0, ready at 10, last work ends at 12.3; the runtime stopped it at 13, but the
    # worker's 5 s idle timeout runs to 17.3: billed 0 .. 17.3, rounded up to 18 s.
    a = event("a", requested=0, ready=10, busy=[(10, 12.3)], exited=13)
    r = Ledger(runpod, [a]).result()
    assert r.total.usd == pytest.approx(18 * 0.00116)
    assert r.total.cold_start_usd == pytest.approx(10 * 0.00116)
    assert r.total.busy_usd == pytest.approx(2.3 * 0.00116)
    # Kept warm longer than the timeout, the worker is billed to its exit (40 s).
    b = event("b", requested=0, ready=10, busy=[(10, 12.3)], exited=40)
    assert Ledger(runpod, [b]).result().total.usd == pytest.approx(40 * 0.00116)


def test_spot_with_an_interruption_bills_the_lost_work_separately() -> None:
    spot = get_model("aws-spot")
    # A rollout on one H200 of a p5en.48xlarge is interrupted at 300 s; its work is re-run by
    # another function on the same slot from 300 to 900 s.
    lost = killed(event("a", requested=0, ready=30, busy=[(30, 300)], exited=300, kind="h200"))
    rerun = released(
        event("b", requested=300, ready=330, busy=[(330, 880)], exited=900, kind="h200"), 890
    )
    r = Ledger(spot, [lost, rerun]).result()
    # One instance running 0 .. 900 s at the spot price.
    assert r.total.usd == pytest.approx(900 * 27.20 / 3600)
    # The killed function's share: 300 slot-seconds at 1/8 of the instance price.
    assert r.lost.functions == 1
    assert r.lost.usd == pytest.approx(300 * 27.20 / 8 / 3600)
    # A function that exits after its release lost nothing, even with a non-zero exit code.
    shut = msgspec.structs.replace(rerun, exit_code=-15)
    assert Ledger(spot, [shut]).result().lost.functions == 0


def test_price_packed_puts_concurrent_functions_on_one_instance() -> None:
    model = instance_model()
    lives = [Lifetime.planned(5, busy) for busy in (40.0, 70.0, 100.0)]
    # Three 1-slot functions from t = 0 fit one 4-slot instance, billed 0 .. 105 s once.
    assert price_packed(model, "h100", lives) == pytest.approx(105 * PER_INSTANCE_SECOND)
    # Five need two instances; the second holds only the fifth (0 .. 25 s -> 60 s minimum).
    five = [*lives, Lifetime.planned(5, 10.0), Lifetime.planned(5, 20.0)]
    assert price_packed(model, "h100", five) == pytest.approx((105 + 60) * PER_INSTANCE_SECOND)
    # Two-slot functions: two per instance (0 .. 75 s for the first two, 0 .. 105 s).
    assert price_packed(model, "h100", lives, slots_per_function=2) == pytest.approx(
        (75 + 105) * PER_INSTANCE_SECOND
    )
    assert not math.isnan(price_packed(model, "h100", []))


def test_no_row_is_older_than_twelve_months_and_an_old_row_is_named() -> None:
    from rlhfless.cost_models import builtin_models, stale_warnings

    models = list(builtin_models().values())
    kinds = {k for m in models for k in m.rates()}
    assert stale_warnings(models, kinds, today=datetime.date(2026, 12, 5)) == []
    later = stale_warnings(models, ["h100"], today=datetime.date(2027, 12, 1))
    assert any(
        line.startswith("price row aws/h100 (p5.48xlarge) was read 2026-11-09") for line in later
    )
    assert T0  # the helpers' epoch is shared with these events


def two_shape_model():
    """A 1-slot box at $2/h and a 4-slot box at $6/h ($1.50 per slot): packing pays off only
    when enough functions share the big box."""
    rows = [
        {"device_kind": "h100", "instance": f"{n} x H100", "devices": n, "price": usd,
         "unit": "usd_per_hour", "source": "test table", "date": datetime.date(2026, 1, 1)}
        for n, usd in ((4, 6.0), (1, 2.0))
    ]  # fmt: skip
    return model_from_dict({
        "model": {"name": "two-shapes", "billing": "rental", "rented": "instance",
                  "granularity_seconds": 1.0, "minimum_seconds": 60.0},
        "prices": rows,
    })  # fmt: skip


def test_price_planned_places_new_functions_the_cheapest_way() -> None:
    model = two_shape_model()
    hour = [Lifetime.planned(0.0, 3600.0)]
    # one function: its own small box ($2) beats a big one ($6)
    assert price_planned(model, "h100", hour) == pytest.approx(2.0)
    # three: three small boxes ($6) tie one big box ($6); four: one big box ($6) beats $8
    assert price_planned(model, "h100", hour * 3) == pytest.approx(6.0)
    assert price_planned(model, "h100", hour * 4) == pytest.approx(6.0)
    # short lives pay the minimum per instance start: four 10 s functions packed pay one 60 s
    # minimum of the big box ($0.10) instead of four of the small one ($0.133)
    short = [Lifetime.planned(0.0, 10.0)] * 4
    assert price_planned(model, "h100", short) == pytest.approx(60 * 6.0 / 3600)
    # a 2-slot function does not fit the small box: packed two per big box
    assert price_planned(model, "h100", hour * 2, slots_per_function=2) == pytest.approx(6.0)
    with pytest.raises(NoInstanceFits, match="5-slot"):
        price_planned(model, "h100", hour, slots_per_function=5)
