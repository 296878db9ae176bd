"""Hand-computed bills for each billing rule."""

from __future__ import annotations

import pytest

from rlhfless.cost_models import (
    BadBillingEvent,
    FunctionStillAlive,
    Lifetime,
    UnknownDeviceKind,
    get_model,
    model_from_dict,
)

from .helpers import T0, event, table_model


def life(requested: float, exited: float, ready: float | None = None, busy=()) -> Lifetime:
    return Lifetime(
        requested_at=T0 + requested,
        exited_at=T0 + exited,
        ready_at=None if ready is None else T0 + ready,
        busy=tuple((T0 + s, T0 + e) for s, e in busy),
    )


def test_per_second_rounds_up_a_partial_second() -> None:
    bill = table_model().price("h100", life(0, 10.2, ready=0.2))
    assert bill.billed_seconds == 11
    assert bill.usd == pytest.approx(0.011)


def test_exact_boundary_does_not_round_up_despite_float_noise() -> None:
    # T0 + 0.1 + 60 - (T0 + 0.1) is not exactly 60 in floating point.
    start = 0.1
    bill = table_model().price("h100", life(start, start + 60.0, ready=start))
    assert bill.billed_seconds == 60
    assert bill.padding_usd == 0


def test_just_past_the_boundary_rounds_up() -> None:
    assert table_model().price("h100", life(0, 60.5, ready=0)).billed_seconds == 61


def test_minimum_charge_applies_to_a_short_life_and_counts_as_idle() -> None:
    bill = table_model(minimum=60).price("h100", life(0, 5, ready=0, busy=[(0, 5)]))
    assert bill.billed_seconds == 60
    assert bill.usd == pytest.approx(0.060)
    assert bill.busy_usd == pytest.approx(0.005)
    assert bill.idle_usd == pytest.approx(0.055)  # 55 s paid for, unused
    assert bill.padding_usd == pytest.approx(0.055)


def test_above_the_minimum_billing_is_per_second() -> None:
    assert table_model(minimum=60).price("h100", life(0, 61.2, ready=0)).billed_seconds == 62


def test_zero_length_life_costs_nothing_even_with_a_minimum() -> None:
    bill = table_model(minimum=60).price("h100", life(5, 5))
    assert bill.usd == 0
    assert bill.billed_seconds == 0


def test_overlapping_busy_intervals_are_merged() -> None:
    bill = table_model().price("h100", life(0, 30, ready=0, busy=[(0, 10), (5, 15), (14, 20)]))
    assert bill.busy_seconds == pytest.approx(20)
    assert bill.busy_usd == pytest.approx(0.020)
    assert bill.idle_usd == pytest.approx(0.010)


def test_never_ready_is_all_cold_start_when_cold_start_is_billed() -> None:
    bill = table_model().price("h100", life(0, 30))
    assert bill.cold_start_seconds == pytest.approx(30)
    assert bill.usd == pytest.approx(0.030)
    assert bill.cold_start_usd == pytest.approx(0.030)
    assert bill.busy_usd == bill.idle_usd == 0


def test_never_ready_costs_nothing_when_cold_start_is_free() -> None:
    bill = table_model(cold=False, minimum=60).price("h100", life(0, 30))
    assert bill.usd == 0
    assert bill.cold_start_seconds == pytest.approx(30)  # still reported, just not billed


def test_cold_start_free_bills_from_ready() -> None:
    bill = table_model(cold=False).price("h100", life(0, 40, ready=10, busy=[(10, 30)]))
    assert bill.billed_seconds == 30
    assert bill.usd == pytest.approx(0.030)
    assert bill.cold_start_usd == 0
    assert bill.busy_usd == pytest.approx(0.020)


def test_cold_start_billed_is_its_own_bucket() -> None:
    bill = table_model().price("h100", life(0, 40, ready=10, busy=[(10, 30)]))
    assert (bill.cold_start_usd, bill.busy_usd, bill.idle_usd) == pytest.approx((0.01, 0.02, 0.01))


def test_every_slot_of_a_multi_slot_function_is_billed() -> None:
    bill = table_model(minimum=60).price("h100", life(0, 10, ready=0), slots=8)
    assert bill.usd == pytest.approx(8 * 60 * 0.001)


def test_millisecond_granularity() -> None:
    assert table_model(granularity=0.001).price(
        "h100", life(0, 1.2345, ready=0)
    ).billed_seconds == (pytest.approx(1.235))


def test_hourly_granularity() -> None:
    bill = table_model(granularity=3600).price("h100", life(0, 600, ready=0))
    assert bill.billed_seconds == 3600
    assert bill.usd == pytest.approx(3.6)


def test_continuous_billing_does_not_round() -> None:
    assert table_model(granularity=0).price("h100", life(0, 0.25, ready=0)).usd == pytest.approx(
        0.00025
    )


def test_owned_hardware_rate_is_amortised_capex_plus_power_plus_ops() -> None:
    # capex 87,660 over 1 year (8,766 h) = $10/h; 1 kW x $0.10/kWh x PUE 1.5 = $0.15/h;
    # ops $8,766/year = $1/h; total $11.15/h for the instance, halved for 2 devices.
    model = model_from_dict(
        {
            "model": {"name": "own", "billing": "owned", "granularity_seconds": 0},
            "prices": [
                {
                    "device_kind": "H100",
                    "devices": 2,
                    "capex_usd": 87660,
                    "lifetime_years": 1,
                    "watts": 1000,
                    "usd_per_kwh": 0.10,
                    "pue": 1.5,
                    "ops_usd_per_year": 8766,
                    "source": "test",
                    "date": "2025-01-01",
                },
            ],
        }
    )
    assert model.hourly("h100") == pytest.approx(11.15 / 2)
    # Utilisation-independent: an idle hour costs what a busy hour costs.
    busy = model.price("h100", life(0, 3600, ready=0, busy=[(0, 3600)]))
    idle = model.price("h100", life(0, 3600, ready=0))
    assert busy.usd == idle.usd == pytest.approx(5.575)


def test_shipped_aws_gpu_share_h100_is_the_p5_price_per_gpu_with_a_60s_minimum() -> None:
    aws = get_model("aws-gpu-share")
    assert aws.hourly("H100") == pytest.approx(55.04 / 8)
    assert aws.price("h100", life(0, 30, ready=5)).usd == pytest.approx(55.04 / 8 / 60)


def test_planned_lifetime_prices_like_a_real_one() -> None:
    model = table_model(minimum=60)
    bill = model.price(
        "h100", Lifetime.planned(cold_start_seconds=5, busy_seconds=20, idle_seconds=10)
    )
    assert bill.usd == pytest.approx(0.060)
    assert bill.cold_start_usd == pytest.approx(0.005)
    assert bill.busy_usd == pytest.approx(0.020)


def test_unknown_device_kind_lists_the_kinds_the_model_has() -> None:
    with pytest.raises(UnknownDeviceKind, match=r"'gcp' has no price for device kind 'l40s'.*h100"):
        get_model("gcp").price("l40s", life(0, 10, ready=0))


def test_a_live_function_needs_now() -> None:
    ev = event("f", requested=0, ready=1, exited=None)
    with pytest.raises(FunctionStillAlive, match="--now"):
        Lifetime.from_event(ev)
    assert Lifetime.from_event(ev, now=T0 + 10).seconds == pytest.approx(10)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"requested": 10, "exited": 5}, "before it was requested"),
        ({"requested": 0, "ready": 20, "exited": 10}, "ready_at"),
        ({"requested": 0, "ready": 1, "exited": 10, "busy": [(5, 3)]}, "not an interval"),
    ],
)
def test_impossible_times_are_rejected(kwargs: dict, message: str) -> None:
    with pytest.raises(BadBillingEvent, match=message):
        Lifetime.from_event(event("f", **kwargs))


def test_zero_slots_are_rejected() -> None:
    with pytest.raises(BadBillingEvent, match="slots"):
        table_model().price("h100", life(0, 10), slots=0)
