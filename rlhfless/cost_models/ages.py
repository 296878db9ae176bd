"""How old each price row is, and warnings for rows too old to plan with.

A price is a reading of a provider's page on a day (the row's ``date``). Prices move (AWS cut
P5 on-demand by ~45% in June 2025), so a row older than :data:`STALE_AFTER_DAYS` is named in
a warning wherever it is used to price something (``rlhfless cost``, ``rlhfless prices``).
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable

from rlhfless.cost_models.devices import normalise_device_kind
from rlhfless.cost_models.model import CostModel, PriceRow, TableCostModel

STALE_AFTER_DAYS = 365  # twelve months: a year-old price is a guess, not a price


def age_days(row: PriceRow, today: datetime.date | None = None) -> int:
    """Days since the row's price was read."""
    today = today or datetime.date.today()
    return (today - datetime.date.fromisoformat(row.date)).days


def age_text(days: int) -> str:
    """``3 days``, ``5 months``, ``2.1 years``: what a person reads at a glance."""
    if days < 60:
        return f"{days} day{'s' if days != 1 else ''}"
    if days < 730:
        return f"{days // 30} months"
    return f"{days / 365.25:.1f} years"


def is_stale(row: PriceRow, today: datetime.date | None = None) -> bool:
    return age_days(row, today) > STALE_AFTER_DAYS


def stale_warnings(
    models: Iterable[CostModel], device_kinds: Iterable[str], today: datetime.date | None = None
) -> list[str]:
    """One line per stale row that pricing ``device_kinds`` under ``models`` uses."""
    kinds = {normalise_device_kind(k) for k in device_kinds}
    out = []
    for model in models:
        if not isinstance(model, TableCostModel):
            continue
        for kind in sorted(kinds & set(model.shapes)):
            for row in model.shapes[kind]:
                if is_stale(row, today):
                    days = age_days(row, today)
                    out.append(
                        f"price row {model.name}/{kind}"
                        f"{f' ({row.instance})' if row.instance else ''} was read {row.date}, "
                        f"{age_text(days)} ago (over 12 months): re-read it at its source "
                        f"({row.source}) before planning with it"
                    )
    return out
