"""Shared builders for the cost-model tests: real models from real (tiny) price tables."""

from __future__ import annotations

import datetime
from typing import Any

from rlhfless.cost_models import TableCostModel, model_from_dict
from rlhfless.runtime.messages import BillingEvent

T0 = 1_700_000_000.0  # a realistic Unix time: float noise in differences is part of the test


def table_model(
    *,
    granularity: float = 1.0,
    minimum: float = 0.0,
    cold: bool = True,
    h100_per_hour: float = 3.6,  # = $0.001 per second: hand-computed bills stay readable
    cpu_per_hour: float = 0.36,  # = $0.0001 per second
    name: str = "test",
) -> TableCostModel:
    """A rental model built through the same loader as the shipped files."""
    row: dict[str, Any] = {
        "unit": "usd_per_hour",
        "source": "test table",
        "date": datetime.date(2025, 1, 1),
    }
    return model_from_dict(
        {
            "model": {
                "name": name,
                "billing": "rental",
                "granularity_seconds": granularity,
                "minimum_seconds": minimum,
                "bill_cold_start": cold,
            },
            "prices": [
                {**row, "device_kind": "h100", "price": h100_per_hour},
                {**row, "device_kind": "cpu", "price": cpu_per_hour},
            ],
        }
    )


def event(
    function_id: str,
    *,
    requested: float,
    exited: float | None,
    ready: float | None = None,
    busy: list[tuple[float, float]] | None = None,
    stage: str = "rollout",
    node: str = "n1",
    slot: int = 0,
    slots: int = 1,
    kind: str = "h100",
) -> BillingEvent:
    """An event with times given relative to T0."""
    return BillingEvent(
        function_id=function_id,
        actor="tests.actors:Dummy",
        stage=stage,
        node=node,
        slot=slot,
        slots=slots,
        device_kind=kind,
        requested_at=T0 + requested,
        ready_at=None if ready is None else T0 + ready,
        busy=[(T0 + s, T0 + e) for s, e in busy or []],
        exited_at=None if exited is None else T0 + exited,
    )
