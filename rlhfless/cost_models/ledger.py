"""The ledger: a run's billing events priced under one cost model.

It reports the total, and the same split by stage and by device kind: dollars (busy, idle,
cold start) and slot-seconds (GPU-seconds for GPU kinds, the paper's metric).

**Serverful baseline.** The same job as if every physical slot it touched were rented as one
continuous rental from the run's first ``requested_at`` to its last end (the latest
``exited_at``, or ``now`` for a function still alive), priced under the same model and rules
(one start per slot, so one minimum charge per slot). A physical slot is ``(node, device kind, slot index)``;
a function holding ``slots`` slots covers ``slot .. slot + slots - 1``. Its busy time is the union
of the busy intervals of the functions that ran on it; it has no cold-start bucket (a serverful
job's one-off model load is not in the events). Under per-second billing with no minimum and
whole-second times this is never cheaper than the serverless bill; with a minimum charge (AWS,
GCP) many short functions on one slot can cost more than one long rental, and the ledger shows it.

Events are keyed by ``function_id``: a later event for the same function replaces the earlier one
(a live run may emit snapshots of a function before its final event).
"""

from __future__ import annotations

from collections.abc import Iterable

import msgspec

from rlhfless.cost_models.devices import is_gpu, normalise_device_kind
from rlhfless.cost_models.lifetime import Interval, Lifetime, event_slots, merge_intervals
from rlhfless.cost_models.model import Bill, BillingRules, CostModel
from rlhfless.runtime.messages import BillingEvent

UNKNOWN_STAGE = "(unknown)"  # events with stage "" are grouped under this name


class Breakdown(msgspec.Struct, kw_only=True):
    """Sums over some functions. Slot-seconds count every slot (a 4-slot function, 4x)."""

    functions: int = 0
    usd: float = 0.0
    busy_usd: float = 0.0
    idle_usd: float = 0.0  # includes padding_usd
    cold_start_usd: float = 0.0
    padding_usd: float = 0.0  # paid for by rounding up and minimum charges
    slot_seconds: float = 0.0  # physical lifetime x slots
    busy_slot_seconds: float = 0.0
    idle_slot_seconds: float = 0.0
    cold_start_slot_seconds: float = 0.0
    billed_slot_seconds: float = 0.0

    def add(self, bill: Bill) -> None:
        s = bill.slots
        self.functions += 1
        self.usd += bill.usd
        self.busy_usd += bill.busy_usd
        self.idle_usd += bill.idle_usd
        self.cold_start_usd += bill.cold_start_usd
        self.padding_usd += bill.padding_usd
        self.slot_seconds += bill.seconds * s
        self.busy_slot_seconds += bill.busy_seconds * s
        self.idle_slot_seconds += bill.idle_seconds * s
        self.cold_start_slot_seconds += bill.cold_start_seconds * s
        self.billed_slot_seconds += bill.billed_seconds * s


class Serverful(msgspec.Struct, kw_only=True):
    """The serverful baseline (see the module docstring for the precise definition)."""

    slots: int = 0  # physical slots the run touched
    slots_by_device: dict[str, int] = {}
    span_seconds: float = 0.0  # first request .. last end
    usd: float = 0.0
    busy_usd: float = 0.0
    idle_usd: float = 0.0
    slot_seconds: float = 0.0
    usd_by_device: dict[str, float] = {}


class LedgerResult(msgspec.Struct, kw_only=True):
    """A run priced under one model. ``saving_fraction`` = 1 - usd / serverful usd."""

    model: str
    description: str = ""
    rules: BillingRules
    functions: int
    start: float  # first requested_at (0 for an empty run)
    end: float  # last exited_at (or now)
    total: Breakdown
    gpu_seconds: float  # slot-seconds on GPU kinds
    busy_gpu_seconds: float
    by_stage: dict[str, Breakdown]
    by_device: dict[str, Breakdown]
    serverful: Serverful
    saving_usd: float  # serverful usd - usd
    saving_fraction: float  # 0 when the serverful bill is 0


class Ledger:
    """Collects billing events and prices them under ``model``.

    >>> ledger = Ledger(model, events)          # doctest: +SKIP
    >>> ledger.result(now=None).total.usd       # doctest: +SKIP
    """

    def __init__(self, model: CostModel, events: Iterable[BillingEvent] = ()) -> None:
        self.model = model
        self._events: dict[str, BillingEvent] = {}
        for event in events:
            self.add(event)

    def add(self, event: BillingEvent) -> None:
        """Record ``event`` (replacing an earlier event of the same function)."""
        self._events[event.function_id] = event

    @property
    def events(self) -> list[BillingEvent]:
        return list(self._events.values())

    def bills(self, now: float | None = None) -> list[tuple[BillingEvent, Bill]]:
        """Each function's bill; raises if a function is alive and ``now`` is None."""
        out = []
        for event in self._events.values():
            life = Lifetime.from_event(event, now)
            out.append((event, self.model.price(event.device_kind, life, event.slots)))
        return out

    def result(self, now: float | None = None) -> LedgerResult:
        """Price every event. ``now`` cuts functions that have not exited; None forbids them."""
        bills = self.bills(now)
        total = Breakdown()
        by_stage: dict[str, Breakdown] = {}
        by_device: dict[str, Breakdown] = {}
        gpu_seconds = busy_gpu_seconds = 0.0
        for event, bill in bills:
            total.add(bill)
            by_stage.setdefault(event.stage or UNKNOWN_STAGE, Breakdown()).add(bill)
            by_device.setdefault(bill.device_kind, Breakdown()).add(bill)
            if is_gpu(bill.device_kind):
                gpu_seconds += bill.seconds * bill.slots
                busy_gpu_seconds += bill.busy_seconds * bill.slots
        serverful, start, end = self._serverful(now)
        saving = serverful.usd - total.usd
        return LedgerResult(
            model=self.model.name,
            description=self.model.description,
            rules=self.model.rules,
            functions=len(bills),
            start=start,
            end=end,
            total=total,
            gpu_seconds=gpu_seconds,
            busy_gpu_seconds=busy_gpu_seconds,
            by_stage=dict(sorted(by_stage.items())),
            by_device=dict(sorted(by_device.items())),
            serverful=serverful,
            saving_usd=saving,
            saving_fraction=saving / serverful.usd if serverful.usd > 0 else 0.0,
        )

    def _serverful(self, now: float | None) -> tuple[Serverful, float, float]:
        lives = [(e, Lifetime.from_event(e, now)) for e in self._events.values()]
        if not lives:
            return Serverful(), 0.0, 0.0
        start = min(life.requested_at for _, life in lives)
        end = max(life.exited_at for _, life in lives)
        # A physical slot is (node, device kind, slot index): CPU and GPU slots are numbered
        # separately on a node, so slot 0 of each is a different device.
        busy: dict[tuple[str, str, int], list[Interval]] = {}
        for event, life in lives:
            kind = normalise_device_kind(event.device_kind)
            for slot in event_slots(event):
                busy.setdefault((event.node, kind, slot), []).extend(life.busy)
        out = Serverful(span_seconds=end - start)
        by_kind: dict[str, int] = {}
        usd_by_device: dict[str, float] = {}
        for (node, kind, slot), intervals in sorted(busy.items()):
            rental = Lifetime(
                requested_at=start,
                ready_at=start,
                exited_at=end,
                busy=merge_intervals(intervals),
                label=f"serverful {node}:{kind}:{slot}",
            )
            bill = self.model.price(kind, rental, 1)
            out.usd += bill.usd
            out.busy_usd += bill.busy_usd
            out.idle_usd += bill.idle_usd
            out.slot_seconds += bill.seconds
            by_kind[kind] = by_kind.get(kind, 0) + 1
            usd_by_device[kind] = usd_by_device.get(kind, 0.0) + bill.usd
        out.slots = len(busy)
        out.slots_by_device = dict(sorted(by_kind.items()))
        out.usd_by_device = dict(sorted(usd_by_device.items()))
        return out, start, end


def price_events(
    model: CostModel, events: Iterable[BillingEvent], now: float | None = None
) -> LedgerResult:
    """Shortcut: ``Ledger(model, events).result(now)``."""
    return Ledger(model, events).result(now)
