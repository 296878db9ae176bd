"""The bill of a stretch of a run: what it had accrued by one time, less what it had by another.

Why. A job's bill holds its start (every function's cold start, the first iteration's launches);
a job of hundreds of iterations pays that once and then about the same per iteration. That per
iteration figure is the difference of the bills accrued by two times, so "accrued by ``t``"
must not charge ahead: a function still alive at ``t`` is billed for the time it has held so far
(continuously: no rounding, no minimum, no idle timeout), and the rest of its bill (rounding, a
per-start minimum, a serverless worker's idle timeout) falls when it exits. So a function that
lives past its minimum is billed by the second throughout, and one that exits sooner pays its
minimum at its exit. By a time after every exit, the accrued bill is the whole bill.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

import msgspec

from rlhfless.cost_models.ledger import Ledger
from rlhfless.cost_models.model import CostModel
from rlhfless.runtime.messages import BillingEvent


def events_as_of(events: Iterable[BillingEvent], at: float) -> list[BillingEvent]:
    """The events as the runtime had recorded them at time ``at``: functions requested later
    left out; one alive at ``at`` not exited, ready only if it was, busy until ``at``, and only
    its leases that had ended (the runtime lists a lease at its release)."""
    out = []
    for e in events:
        if e.requested_at > at:
            continue
        if e.exited_at is not None and e.exited_at <= at:
            out.append(e)
            continue
        leases = [(a, b) for a, b in e.leases if b <= at]
        begun = sum(1 for a, _ in e.leases if a <= at)
        out.append(
            msgspec.structs.replace(
                e,
                ready_at=e.ready_at if e.ready_at is not None and e.ready_at <= at else None,
                busy=[(a, min(b, at)) for a, b in e.busy if a < at],
                leases=leases,
                released_at=leases[-1][1] if leases else None,
                # a spawn after the first is one served warm
                warm_starts=min(e.warm_starts, max(0, begun - 1)) if e.leases else e.warm_starts,
                exited_at=None,
                exit_code=None,
            )
        )
    return out


def usage_model(model: CostModel) -> CostModel:
    """``model`` billing only the time held: continuous, no minimum, no idle timeout."""
    out = copy.copy(model)
    out.rules = msgspec.structs.replace(
        model.rules, granularity_seconds=0.0, minimum_seconds=0.0, idle_timeout_seconds=0.0
    )
    return out


class Accrual:
    """The bill ``events`` had accrued by any time under ``model`` (module docstring).

    Under a model that rents whole instances, what no function held (free slots, rounding, an
    instance's minimum) is a line of the instance's own, which falls when the instance's run
    ends. The run must have ended (a live function raises
    :class:`~rlhfless.cost_models.errors.FunctionStillAlive`, naming it).
    """

    def __init__(self, model: CostModel, events: Iterable[BillingEvent]) -> None:
        self.events = list(events)
        self.usage = usage_model(model)
        self._billed = _ended(model, self.events)
        self._held = _ended(self.usage, self.events)

    def at(self, t: float) -> float:
        """Dollars accrued by ``t``: the time every function had held by then, plus the rest
        of the bill of every function (or instance run) that had ended."""
        held = sum(
            bill.usd for _, bill in Ledger(self.usage, events_as_of(self.events, t)).bills(t)
        )
        rest = _by(self._billed, t) - _by(self._held, t)
        return held + rest


def _ended(model: CostModel, events: list[BillingEvent]) -> list[tuple[float, float]]:
    """(end, dollars) of every line of the run's bill: each function's, each instance run's."""
    return [(e.exited_at or 0.0, bill.usd) for e, bill in Ledger(model, events).bills()]


def _by(lines: list[tuple[float, float]], t: float) -> float:
    return sum(usd for end, usd in lines if end <= t)


def accrued_usd(model: CostModel, events: Iterable[BillingEvent], at: float) -> float:
    """Dollars ``events`` had accrued by time ``at`` under ``model`` (:class:`Accrual`)."""
    return Accrual(model, events).at(at)
