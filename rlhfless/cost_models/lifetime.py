"""A function's lifetime as the cost models see it: requested, ready, busy intervals, exited.

Billed lifetime of a function is ``requested_at .. exited_at``. Within it:

* cold start = ``requested_at .. ready_at`` (the whole life when the function never became ready),
* busy       = the union of its busy intervals, clipped to ``ready_at .. exited_at``,
* idle       = the rest (warm in the pool, or leased but waiting).

:class:`Lifetime` checks the times once, so every cost model can trust them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from rlhfless.cost_models.errors import BadBillingEvent, FunctionStillAlive
from rlhfless.runtime.messages import BillingEvent

Interval = tuple[float, float]


def merge_intervals(intervals: Iterable[Interval]) -> tuple[Interval, ...]:
    """Sorted union of ``intervals``; overlapping or touching ones become one. Empty ones vanish."""
    merged: list[list[float]] = []
    for start, end in sorted(intervals):
        if end <= start:
            continue
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return tuple((s, e) for s, e in merged)


def clip_intervals(intervals: Iterable[Interval], lo: float, hi: float) -> tuple[Interval, ...]:
    """The parts of ``intervals`` inside ``lo .. hi`` (input need not be merged)."""
    return merge_intervals((max(s, lo), min(e, hi)) for s, e in intervals)


def total_length(intervals: Iterable[Interval]) -> float:
    return sum(e - s for s, e in merge_intervals(intervals))


@dataclass(frozen=True, slots=True)
class Lifetime:
    """One function's life on its slot(s). Build it with :meth:`from_event` or :meth:`planned`.

    ``busy`` is stored merged, sorted and clipped to ``ready_at .. exited_at`` (empty when the
    function never became ready: it cannot have served a call). ``label`` names the function in
    error messages.
    """

    requested_at: float
    exited_at: float
    ready_at: float | None = None
    busy: tuple[Interval, ...] = ()
    label: str = "?"

    def __post_init__(self) -> None:
        times = [self.requested_at, self.exited_at]
        if self.ready_at is not None:
            times.append(self.ready_at)
        if not all(math.isfinite(t) for t in times):
            raise BadBillingEvent(self.label, f"times must be finite numbers, got {times}")
        end = self.exited_at
        if end < self.requested_at:
            raise BadBillingEvent(
                self.label, f"it ends at {end} before it was requested at {self.requested_at}"
            )
        if self.ready_at is not None and not self.requested_at <= self.ready_at <= end:
            raise BadBillingEvent(
                self.label,
                f"ready_at {self.ready_at} is outside requested_at {self.requested_at} .. end {end}",
            )
        for start, stop in self.busy:
            if not (math.isfinite(start) and math.isfinite(stop)) or stop < start:
                raise BadBillingEvent(
                    self.label, f"busy interval ({start}, {stop}) is not an interval"
                )
        # Normalise once so that every model sees the same busy time. object.__setattr__ because
        # the dataclass is frozen; this is the only place that writes it.
        busy = () if self.ready_at is None else clip_intervals(self.busy, self.ready_at, end)
        object.__setattr__(self, "busy", busy)

    @classmethod
    def from_event(cls, event: BillingEvent, now: float | None = None) -> Lifetime:
        """The lifetime an event records; a live function (no ``exited_at``) is cut at ``now``."""
        end = event.exited_at
        if end is None:
            if now is None:
                raise FunctionStillAlive(event.function_id)
            end = now
        return cls(
            requested_at=event.requested_at,
            exited_at=end,
            ready_at=event.ready_at,
            busy=tuple((float(s), float(e)) for s, e in event.busy),
            label=event.function_id,
        )

    @classmethod
    def planned(
        cls, cold_start_seconds: float, busy_seconds: float, idle_seconds: float = 0.0
    ) -> Lifetime:
        """A hypothetical life starting at 0: cold start, then busy, then idle (for planners).

        The scaler prices "k functions for T seconds each" with this, under the same rules as a
        real run's bill.
        """
        for name, value in (
            ("cold_start", cold_start_seconds),
            ("busy", busy_seconds),
            ("idle", idle_seconds),
        ):
            if not value >= 0:
                raise BadBillingEvent("planned", f"{name}_seconds must be >= 0, got {value}")
        ready = float(cold_start_seconds)
        return cls(
            requested_at=0.0,
            ready_at=ready,
            exited_at=ready + busy_seconds + idle_seconds,
            busy=((ready, ready + busy_seconds),),
            label="planned",
        )

    # Physical durations, per slot, independent of any billing rule.
    @property
    def seconds(self) -> float:
        return self.exited_at - self.requested_at

    @property
    def cold_start_seconds(self) -> float:
        ready = self.exited_at if self.ready_at is None else self.ready_at
        return ready - self.requested_at

    @property
    def busy_seconds(self) -> float:
        return total_length(self.busy)

    @property
    def idle_seconds(self) -> float:
        return max(0.0, self.seconds - self.cold_start_seconds - self.busy_seconds)

    def busy_within(self, lo: float, hi: float) -> float:
        return total_length(clip_intervals(self.busy, lo, hi))


def event_slots(event: BillingEvent) -> Sequence[int]:
    """Slot indices an event's function held: ``slot .. slot + slots - 1`` on its node.

    A BillingEvent records only its first slot and a count, so consecutive slots are assumed (the
    runtime's placement hands out contiguous slots). The serverful baseline needs physical slots
    to count each one once.
    """
    if event.slots < 1:
        raise BadBillingEvent(event.function_id, f"slots must be >= 1, got {event.slots}")
    return range(event.slot, event.slot + event.slots)
