"""The ledger: a run's billing events priced under one cost model.

It reports the total, and the same split by stage and by device kind: dollars (busy, idle,
cold start) and slot-seconds (GPU-seconds for GPU kinds, the paper's metric).

**Serverful baseline.** The same job as if every physical slot it touched were rented while the
job ran, priced under the same model and rules. A physical slot is ``(node, device kind, slot
index)``; a function holding ``slots`` slots covers ``slot .. slot + slots - 1``.

*While the job ran* is made precise by **activity segments**: the stretches of time in which at
least one function of the job was alive (``requested_at .. exited_at``, or ``.. now`` for a
function still alive). A lull with nothing alive for at most ``gap_seconds`` (default
:data:`SEGMENT_GAP_SECONDS`) stays inside its segment: the job's driver is still working between
stages, and no serverful cluster is handed back and re-provisioned for a lull that short. A longer
gap means the job was not running (it ended, crashed, or waited for ``--resume``), and a serverful
user pays nothing for it. Each **rental** holds every slot its segments touched, from its first
segment's start to its last segment's end (one start per slot, so one minimum charge per slot).
A rental covers one segment, or several consecutive ones when renting straight through the gaps
costs less than starting again (a 60 s minimum charge can make that so for short segments a
minute or two apart); the ledger picks the cheapest such schedule of rentals of up to
:data:`MAX_SEGMENTS_PER_RENTAL` segments. Downtime never inflates the saving, and for a job of up
to that many segments the baseline is never more than one rental over the whole run.

A slot's busy time in a rental is the union of the busy intervals of the functions that ran on
it; a rental has no cold-start bucket (a serverful job's one-off model load is not in the
events). Under per-second billing with no minimum and whole-second times the baseline is never
cheaper than the serverless bill; with a minimum charge (AWS, GCP) many short functions on one slot
can cost more than one long rental, and the ledger shows it.

Events are keyed by ``function_id``: a later event for the same function replaces the earlier one
(a live run may emit snapshots of a function before its final event).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Sequence

import msgspec

from rlhfless.cost_models.devices import is_gpu, normalise_device_kind
from rlhfless.cost_models.instances import UNUSED_STAGE, instance_bills
from rlhfless.cost_models.lifetime import Interval, Lifetime, event_slots, merge_intervals
from rlhfless.cost_models.model import Bill, BillingRules, CostModel, TableCostModel
from rlhfless.runtime.messages import BillingEvent

UNKNOWN_STAGE = "(unknown)"  # events with stage "" are grouped under this name

# A lull with no function alive for at most this long stays inside one activity segment. The
# runtime keeps a released function warm for keep_alive_s (30 s by default), so a running job
# rarely has nothing alive for a whole minute; and a serverful cluster takes minutes to
# provision, so nobody hands one back for a shorter lull. A job with keep_alive_s = 0 and
# driver-side steps longer than this is split mid-run: that makes the baseline cheaper, the
# conservative side for a "saving vs serverful" claim.
SEGMENT_GAP_SECONDS = 60.0

# A serverful rental covering more activity segments than this is not considered (see
# Ledger._rental_plan): it bounds the search for files of many tiny, widely spaced functions.
MAX_SEGMENTS_PER_RENTAL = 64

Slot = tuple[str, str, int]  # (node, normalised device kind, slot index)

# A function that dies in a lease is released by the runtime as it records the exit, a few
# microseconds apart; a function released and then shut down exits seconds later.
LEASE_END_TOLERANCE_SECONDS = 0.01


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

    def add(self, bill: Bill, count: bool = True) -> None:
        """Add one bill; ``count=False``: not a function (an instance's unused time)."""
        s = bill.slots
        self.functions += int(count)
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


class Rental(msgspec.Struct, kw_only=True):
    """One serverful rental: ``slots`` slots held from ``start`` to ``end`` (Unix seconds)."""

    start: float
    end: float
    slots: int  # physical slots its segments touched
    segments: int  # activity segments it covers (more than 1: renting through was cheaper)
    usd: float


class Serverful(msgspec.Struct, kw_only=True):
    """The serverful baseline (see the module docstring for the precise definition)."""

    slots: int = 0  # physical slots the run touched, in any rental
    slots_by_device: dict[str, int] = {}
    span_seconds: float = 0.0  # first request .. last end, downtime included
    rented_seconds: float = 0.0  # wall-clock time inside rentals (span less the gaps not rented)
    gap_seconds: float = SEGMENT_GAP_SECONDS  # longest lull kept inside one segment
    segments: list[tuple[float, float]] = []  # activity segments, start .. end
    rentals: list[Rental] = []
    usd: float = 0.0
    busy_usd: float = 0.0
    idle_usd: float = 0.0
    slot_seconds: float = 0.0  # sum over rentals of slots x rental length
    usd_by_device: dict[str, float] = {}


class LedgerResult(msgspec.Struct, kw_only=True):
    """A run priced under one model. ``saving_fraction`` = 1 - usd / serverful usd."""

    model: str
    description: str = ""
    rules: BillingRules
    rented: str = "slot"  # "instance": whole instances billed (see instances.py)
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
    # Functions that died holding a lease (killed: spot interruption, the fault injector, a
    # crash): their whole bill, already inside ``total``. Their work in flight was lost and
    # re-run by another function, so this is what the deaths cost.
    lost: Breakdown = msgspec.field(default_factory=lambda: Breakdown())

    @property
    def empty(self) -> bool:
        """No function was priced: every number is 0 because nothing was recorded, not because
        the run was free. Callers should say so (``rlhfless cost`` on an empty file)."""
        return self.functions == 0


class Ledger:
    """Collects billing events and prices them under ``model``.

    >>> ledger = Ledger(model, events)          # doctest: +SKIP
    >>> ledger.result(now=None).total.usd       # doctest: +SKIP
    """

    def __init__(
        self,
        model: CostModel,
        events: Iterable[BillingEvent] = (),
        *,
        gap_seconds: float = SEGMENT_GAP_SECONDS,
    ) -> None:
        if not gap_seconds >= 0:
            raise ValueError(f"gap_seconds must be >= 0, got {gap_seconds}")
        self.model = model
        self.gap_seconds = gap_seconds  # see SEGMENT_GAP_SECONDS
        self._events: dict[str, BillingEvent] = {}
        for event in events:
            self.add(event)

    def add(self, event: BillingEvent) -> None:
        """Record ``event`` (replacing an earlier event of the same function)."""
        self._events[event.function_id] = event

    @property
    def events(self) -> list[BillingEvent]:
        return list(self._events.values())

    @property
    def empty(self) -> bool:
        """No events recorded: a result would be all zeros (see :attr:`LedgerResult.empty`)."""
        return not self._events

    def bills(self, now: float | None = None) -> list[tuple[BillingEvent, Bill]]:
        """Each function's bill; raises if a function is alive and ``now`` is None. Under a
        model that rents whole instances, each function's share of its instance, and a line
        (stage :data:`~rlhfless.cost_models.instances.UNUSED_STAGE`) per instance run for what
        no function held (see instances.py)."""
        lives = [(e, Lifetime.from_event(e, now)) for e in self._events.values()]
        if self.model.rented == "instance" and isinstance(self.model, TableCostModel):
            return instance_bills(self.model, lives)
        return [(e, self.model.price(e.device_kind, life, e.slots)) for e, life in lives]

    def result(self, now: float | None = None) -> LedgerResult:
        """Price every event. ``now`` cuts functions that have not exited; None forbids them."""
        bills = self.bills(now)
        total = Breakdown()
        by_stage: dict[str, Breakdown] = {}
        by_device: dict[str, Breakdown] = {}
        gpu_seconds = busy_gpu_seconds = 0.0
        lost = Breakdown()
        for event, bill in bills:
            is_function = event.stage != UNUSED_STAGE
            total.add(bill, is_function)
            by_stage.setdefault(event.stage or UNKNOWN_STAGE, Breakdown()).add(bill, is_function)
            by_device.setdefault(bill.device_kind, Breakdown()).add(bill, is_function)
            if died_in_lease(event):
                lost.add(bill)
            if is_gpu(bill.device_kind) and is_function:
                gpu_seconds += bill.seconds * bill.slots
                busy_gpu_seconds += bill.busy_seconds * bill.slots
        serverful, start, end = self._serverful(now)
        saving = serverful.usd - total.usd
        return LedgerResult(
            model=self.model.name,
            description=self.model.description,
            rules=self.model.rules,
            rented=self.model.rented,
            functions=sum(1 for e, _ in bills if e.stage != UNUSED_STAGE),
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
            lost=lost,
        )

    def _serverful(self, now: float | None) -> tuple[Serverful, float, float]:
        lives = [(e, Lifetime.from_event(e, now)) for e in self._events.values()]
        if not lives:
            return Serverful(gap_seconds=self.gap_seconds), 0.0, 0.0
        start = min(life.requested_at for _, life in lives)
        end = max(life.exited_at for _, life in lives)
        segments = activity_segments((life for _, life in lives), self.gap_seconds)
        # Per segment, the busy intervals of each physical slot it touched. CPU and GPU slots are
        # numbered separately on a node, so slot 0 of each is a different device.
        starts = [s for s, _ in segments]
        used: list[dict[Slot, list[Interval]]] = [{} for _ in segments]
        for event, life in lives:
            # Every life lies inside exactly one segment: the last one starting at or before it.
            seg = used[bisect.bisect_right(starts, life.requested_at) - 1]
            kind = normalise_device_kind(event.device_kind)
            for slot in event_slots(event):
                seg.setdefault((event.node, kind, slot), []).extend(life.busy)
                for other in self._instance_slots(kind, slot):  # rented whole: every slot
                    seg.setdefault((event.node, kind, other), [])
        out = Serverful(
            span_seconds=end - start, gap_seconds=self.gap_seconds, segments=list(segments)
        )
        slots_seen: dict[Slot, None] = {}
        usd_by_device: dict[str, float] = {}
        for first, last in self._rental_plan(segments, used):
            lo, hi = segments[first][0], segments[last][1]
            busy = _slots_busy(used[first : last + 1])
            rental = Rental(start=lo, end=hi, slots=len(busy), segments=last - first + 1, usd=0.0)
            for key, bill in self._rent(busy, lo, hi):
                rental.usd += bill.usd
                out.busy_usd += bill.busy_usd
                out.idle_usd += bill.idle_usd
                out.slot_seconds += bill.seconds
                usd_by_device[key[1]] = usd_by_device.get(key[1], 0.0) + bill.usd
                slots_seen[key] = None
            out.usd += rental.usd
            out.rented_seconds += hi - lo
            out.rentals.append(rental)
        by_kind: dict[str, int] = {}
        for _, kind, _ in slots_seen:
            by_kind[kind] = by_kind.get(kind, 0) + 1
        out.slots = len(slots_seen)
        out.slots_by_device = dict(sorted(by_kind.items()))
        out.usd_by_device = dict(sorted(usd_by_device.items()))
        return out, start, end

    def _instance_slots(self, kind: str, slot: int) -> range:
        """The slots rented with ``slot``: its whole instance (default shape) under a model
        that rents instances, else none besides it."""
        model = self.model
        if model.rented != "instance" or not isinstance(model, TableCostModel):
            return range(0)
        d = model.rows[kind].devices if kind in model.rows else 1
        return range(slot // d * d, slot // d * d + d)

    def _rent(
        self, busy: dict[Slot, list[Interval]], lo: float, hi: float
    ) -> list[tuple[Slot, Bill]]:
        """The bill of each slot in ``busy`` rented once, continuously, from ``lo`` to ``hi``."""
        out = []
        for key, intervals in sorted(busy.items()):
            node, kind, slot = key
            rental = Lifetime(
                requested_at=lo,
                ready_at=lo,
                exited_at=hi,
                busy=merge_intervals(intervals),
                label=f"serverful {node}:{kind}:{slot}",
            )
            out.append((key, self.model.price(kind, rental, 1)))
        return out

    def _rental_plan(
        self, segments: Sequence[Interval], used: Sequence[dict[Slot, list[Interval]]]
    ) -> list[tuple[int, int]]:
        """The cheapest way to cover the segments with rentals of consecutive segments.

        Returns ``(first, last)`` segment indices per rental. Dynamic programming over where
        rentals end: ``best[j]`` is the cheapest cover of segments ``0 .. j - 1``, and the last
        rental of that cover starts at ``choice[j]``. Two limits keep it linear in the number
        of segments. A gap longer than ``2 x (minimum + granularity)`` is never rented through:
        starting every slot again costs at most that much extra, renting through costs the
        whole gap. And a rental spans at most :data:`MAX_SEGMENTS_PER_RENTAL` segments, which
        only a file of many tiny functions a minute apart could want.
        """
        rules = self.model.rules
        never_through = 2 * (rules.minimum_seconds + rules.granularity_seconds)
        n = len(segments)
        best = [0.0] + [math.inf] * n
        choice = [0] * (n + 1)
        for j in range(1, n + 1):
            hi = segments[j - 1][1]
            slots: set[Slot] = set()
            per_kind: dict[str, int] = {}
            # From the shortest rental (segment j - 1 alone) outwards, growing the slot set as
            # it goes; on a tie the shorter rental wins: nothing is paid for downtime unless
            # that is cheaper.
            for first in range(j - 1, max(-1, j - 1 - MAX_SEGMENTS_PER_RENTAL), -1):
                if first < j - 1 and segments[first + 1][0] - segments[first][1] > never_through:
                    break
                for key in used[first].keys() - slots:
                    slots.add(key)
                    per_kind[key[1]] = per_kind.get(key[1], 0) + 1
                lo = segments[first][0]
                # Dollars depend on the span, not on busy time (that only splits the buckets),
                # so one price per device kind prices the whole group.
                span = Lifetime(requested_at=lo, ready_at=lo, exited_at=hi, label="serverful")
                usd = sum(self.model.price(k, span, c).usd for k, c in per_kind.items())
                if best[first] + usd < best[j] - 1e-12:
                    best[j], choice[j] = best[first] + usd, first
        plan = []
        j = n
        while j > 0:
            plan.append((choice[j], j - 1))
            j = choice[j]
        return plan[::-1]


def died_in_lease(event: BillingEvent) -> bool:
    """Whether a function died while a caller held it: a non-zero exit (a signal: SIGKILL from
    a preemption or the fault injector; a crash) at the end of its last lease. A function that
    exits after its release (warm expiry, shutdown) lost nothing."""
    if event.exit_code in (None, 0) or event.exited_at is None or not event.leases:
        return False
    return event.leases[-1][1] >= event.exited_at - LEASE_END_TOLERANCE_SECONDS


def activity_segments(lives: Iterable[Lifetime], gap_seconds: float) -> list[Interval]:
    """Stretches in which some function was alive (``requested_at .. exited_at``), sorted.

    A lull with nothing alive for at most ``gap_seconds`` is kept inside its segment. Unlike
    :func:`merge_intervals`, a zero-length life still makes (or joins) a segment.
    """
    merged: list[list[float]] = []
    for start, end in sorted((life.requested_at, life.exited_at) for life in lives):
        if merged and start - merged[-1][1] <= gap_seconds:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(s, e) for s, e in merged]


def _slots_busy(used: Iterable[dict[Slot, list[Interval]]]) -> dict[Slot, list[Interval]]:
    """Every slot the given segments touched, with all its busy intervals."""
    out: dict[Slot, list[Interval]] = {}
    for seg in used:
        for key, intervals in seg.items():
            out.setdefault(key, []).extend(intervals)
    return out


def price_events(
    model: CostModel, events: Iterable[BillingEvent], now: float | None = None
) -> LedgerResult:
    """Shortcut: ``Ledger(model, events).result(now)``."""
    return Ledger(model, events).result(now)
