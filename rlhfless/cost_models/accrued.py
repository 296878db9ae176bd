"""The bill of a stretch of a run: what it had accrued by one time, less what it had by another.

Why. A job's bill holds its start (every function's cold start, the first iteration's launches);
a job of hundreds of iterations pays that once and then about the same per iteration. That per
iteration figure is the difference of the bills accrued by two times.

The rule. The run is priced once, whole, as :class:`~rlhfless.cost_models.Ledger` prices it:
one line per function and, under a model that rents whole instances, one per instance run
for what no function held (free slots, rounding, the instance's minimum). Each line's dollars
accrue evenly over its life, from its request to its exit. So the bill accrued by a time never
falls, is the whole bill once every line has ended, and charges nothing ahead of its time: a
function that lives past its minimum is billed by the second; one that exits sooner spreads
its minimum over the seconds it lived, inside the stretch where it ran; and the instance shape
each stretch is charged for is the one the whole bill chose.
"""

from __future__ import annotations

from collections.abc import Iterable

from rlhfless.cost_models.ledger import Ledger
from rlhfless.cost_models.model import CostModel
from rlhfless.runtime.messages import BillingEvent


class Accrual:
    """The bill ``events`` had accrued by any time under ``model`` (module docstring). The
    run must have ended: a live function raises
    :class:`~rlhfless.cost_models.errors.FunctionStillAlive`, naming it."""

    def __init__(self, model: CostModel, events: Iterable[BillingEvent]) -> None:
        self.lines = [
            (e.requested_at, e.exited_at or e.requested_at, bill.usd)
            for e, bill in Ledger(model, list(events)).bills()
        ]

    def at(self, t: float) -> float:
        """Dollars accrued by ``t``: each line's share of its life that had passed by then."""
        return sum(usd * _elapsed(start, end, t) for start, end, usd in self.lines)


def _elapsed(start: float, end: float, t: float) -> float:
    """The fraction of ``start .. end`` before ``t`` (a line of no length: all at its end)."""
    if t >= end:
        return 1.0
    if t <= start:
        return 0.0
    return (t - start) / (end - start)


def accrued_usd(model: CostModel, events: Iterable[BillingEvent], at: float) -> float:
    """Dollars ``events`` had accrued by time ``at`` under ``model`` (:class:`Accrual`)."""
    return Accrual(model, events).at(at)
