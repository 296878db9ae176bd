"""Billing as clouds rent: whole instances, not GPU shares.

Under a model with ``rented = "instance"`` (AWS EC2, GCP, Lambda) a function's slot belongs to an
instance, and the provider bills the instance:

* **Placement.** Slot ``s`` of node ``n`` is on instance ``s // devices`` of that node, for the
  instance shape (a row of the price table: g6e.xlarge holds 1 L40S, g6e.48xlarge 8). Choosing a
  shape is a placement choice; the ledger takes, per node and device kind, the cheapest shape
  that holds every function it ran (a function's slots must lie on one instance).
* **Billing.** An instance runs from the first start of a function on it while any of its
  slots is held or warm (``requested_at`` .. ``exited_at`` of the functions on it; from
  ``ready_at`` when cold starts are not billed). Each such run is billed under the model's rules
  (granularity, and the minimum charge per instance start), at the instance's price.
* **Attribution.** A run's dollars go to its functions in proportion to the slot-seconds each
  held, at the shape's per-slot rate; whatever no function held (free slots, rounding, the
  per-start minimum) is a line of its own: stage :data:`UNUSED_STAGE`. Functions sharing a slot
  (several on one CPU slot) split the run's dollars by their slot-seconds and leave nothing free.

:func:`price_packed` prices a hypothetical placement (planned lifetimes packed onto instances)
under the same rules, for a planner comparing packings.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from rlhfless.cost_models.errors import BadBillingEvent, NoInstanceFits
from rlhfless.cost_models.lifetime import Lifetime, merge_intervals
from rlhfless.cost_models.model import Bill, BillingRules, PriceRow, TableCostModel
from rlhfless.runtime.messages import BillingEvent

UNUSED_STAGE = "(instance: no function)"  # rented time of an instance no function held


@dataclass(frozen=True)
class Placed:
    """One function on an instance: its life and how many of the instance's slots it holds."""

    life: Lifetime
    slots: int
    event: BillingEvent | None = None


@dataclass(frozen=True)
class InstanceRun:
    """One start-to-stop of one instance and what it cost."""

    node: str
    device_kind: str
    shape: PriceRow
    index: int  # instance number on the node
    start: float
    end: float
    usd: float  # billed seconds x instance price
    unused_usd: float  # the part no function held


def billed_span(life: Lifetime, rules: BillingRules) -> tuple[float, float] | None:
    """``(start, end)`` of a life's billed time on its instance; None when nothing is billed."""
    if rules.bill_cold_start:
        start = life.requested_at
    elif life.ready_at is None:
        return None
    else:
        start = life.ready_at
    return start, life.exited_at


def fits(shape: PriceRow, placed: Iterable[tuple[int, int]]) -> bool:
    """Whether every ``(first slot, slots)`` lies within one instance of ``shape``."""
    d = shape.devices
    return all(first // d == (first + n - 1) // d for first, n in placed)


def instance_runs(
    model: TableCostModel, shape: PriceRow, by_instance: dict[int, list[Placed]], node: str
) -> tuple[list[InstanceRun], list[tuple[Placed, float]]]:
    """Price each instance of one node under ``shape``: its runs, and each function's dollars."""
    rules = model.rules
    per_second = shape.usd_per_instance_hour / 3600.0
    runs: list[InstanceRun] = []
    shares: list[tuple[Placed, float]] = []
    for index, placed in sorted(by_instance.items()):
        spans = [(p, billed_span(p.life, rules)) for p in placed]
        for lo, hi in merge_intervals(s for _, s in spans if s is not None):
            inside = [(p, s) for p, s in spans if s is not None and lo <= s[0] and s[1] <= hi]
            usd = rules.billed_seconds(hi - lo) * per_second
            held = sum(p.slots * (s[1] - s[0]) for p, s in inside)
            # Dollars per slot-second held: the shape's per-slot rate (free slots, rounding and
            # the minimum are the instance's own line), unless functions share slots and hold
            # more slot-seconds than the instance has: then they split the whole run.
            capacity = shape.devices * (hi - lo)
            per_slot_second = usd / held if held > capacity else per_second / shape.devices
            for p, s in inside:
                shares.append((p, per_slot_second * p.slots * (s[1] - s[0])))
            used = per_slot_second * held
            runs.append(InstanceRun(node, shape.device_kind, shape, index, lo, hi, usd, usd - used))
        # A function billed nothing (never ready, cold start not billed) still gets a bill.
        shares.extend((p, 0.0) for p, s in spans if s is None)
    return runs, shares


def cheapest_placement(
    model: TableCostModel, kind: str, node: str, placed: Sequence[tuple[int, Placed]]
) -> tuple[list[InstanceRun], list[tuple[Placed, float]]]:
    """The cheapest shape of ``kind`` for one node's functions (``(first slot, Placed)``)."""
    best: tuple[float, list[InstanceRun], list[tuple[Placed, float]]] | None = None
    for shape in model.shapes[kind]:
        if not fits(shape, ((slot, p.slots) for slot, p in placed)):
            continue
        by_instance: dict[int, list[Placed]] = {}
        for slot, p in placed:
            by_instance.setdefault(slot // shape.devices, []).append(p)
        runs, shares = instance_runs(model, shape, by_instance, node)
        total = sum(r.usd for r in runs)
        if best is None or total < best[0] - 1e-12:
            best = (total, runs, shares)
    if best is None:
        widest = max(p.slots for _, p in placed)
        shapes = ", ".join(f"{s.instance} ({s.devices})" for s in model.shapes[kind])
        raise NoInstanceFits(
            f"cost model {model.name!r} has no {kind} instance holding a {widest}-slot "
            f"function (its {kind} shapes: {shapes}); add a larger shape in a price file"
        )
    return best[1], best[2]


def share_bill(model: TableCostModel, kind: str, p: Placed, usd: float) -> Bill:
    """A function's bill for ``usd`` of its instance, split into busy/idle/cold like its life."""
    continuous = BillingRules(
        granularity_seconds=0.0, minimum_seconds=0.0, bill_cold_start=model.rules.bill_cold_start
    )
    base = TableCostModel("share", continuous, model.rows).price(kind, p.life, p.slots)
    scale = usd / base.usd if base.usd > 0 else 0.0
    return Bill(
        device_kind=base.device_kind,
        slots=p.slots,
        seconds=base.seconds,
        cold_start_seconds=base.cold_start_seconds,
        busy_seconds=base.busy_seconds,
        idle_seconds=base.idle_seconds,
        billed_seconds=base.billed_seconds,
        usd=usd,
        busy_usd=base.busy_usd * scale,
        idle_usd=base.idle_usd * scale,
        cold_start_usd=base.cold_start_usd * scale,
        padding_usd=0.0,
    )


def unused_bill(run: InstanceRun) -> Bill:
    """The line for what an instance run paid that no function held (free slots, minimum)."""
    return Bill(
        device_kind=run.device_kind,
        slots=1,
        seconds=0.0,
        cold_start_seconds=0.0,
        busy_seconds=0.0,
        idle_seconds=0.0,
        billed_seconds=0.0,
        usd=run.unused_usd,
        busy_usd=0.0,
        idle_usd=run.unused_usd,
        cold_start_usd=0.0,
        padding_usd=run.unused_usd,
    )


def unused_event(run: InstanceRun) -> BillingEvent:
    """A stand-in event naming the instance run, so the ledger can group its unused line."""
    return BillingEvent(
        function_id=f"instance {run.node}:{run.device_kind}:{run.index}@{run.start:.3f}",
        actor=f"(instance {run.shape.instance})",
        stage=UNUSED_STAGE,
        node=run.node,
        slot=run.index * run.shape.devices,
        slots=run.shape.devices,
        device_kind=run.device_kind,
        requested_at=run.start,
        ready_at=run.start,
        exited_at=run.end,
    )


def instance_bills(
    model: TableCostModel, lives: Sequence[tuple[BillingEvent, Lifetime]]
) -> list[tuple[BillingEvent, Bill]]:
    """Every function's share of its instance, plus one line per instance run's unused part."""
    groups: dict[tuple[str, str], list[tuple[int, Placed]]] = {}
    for event, life in lives:
        kind = model.rate_kind(event.device_kind)  # raises UnknownDeviceKind naming the input
        groups.setdefault((event.node, kind), []).append(
            (event.slot, Placed(life, event.slots, event))
        )
    out: list[tuple[BillingEvent, Bill]] = []
    for (node, kind), placed in groups.items():
        runs, shares = cheapest_placement(model, kind, node, placed)
        for p, usd in shares:
            assert p.event is not None
            out.append((p.event, share_bill(model, kind, p, usd)))
        out.extend((unused_event(r), unused_bill(r)) for r in runs if r.unused_usd > 1e-12)
    return out


def price_packed(
    model: TableCostModel,
    device_kind: str,
    lives: Sequence[Lifetime],
    slots_per_function: int = 1,
    shape: PriceRow | None = None,
) -> float:
    """Dollars for ``lives`` packed first-fit onto instances of ``shape`` (default: the kind's
    default shape): the function with the ``i``-th earliest start takes the first slot free at
    that time. Each instance is billed from its first start while any slot is held, with the
    minimum per instance start. For a planner: pricing k functions this way instead of k
    separate per-function bills is the placement choice "pack them onto shared instances"."""
    kind = model.rate_kind(device_kind)
    chosen = shape or model.rows[kind]
    if slots_per_function > chosen.devices:
        raise BadBillingEvent(
            "planned", f"{slots_per_function} slots do not fit a {chosen.instance} instance"
        )
    per_instance = chosen.devices // slots_per_function
    free_at: list[float] = []  # when each function position becomes free
    placed: list[tuple[int, Placed]] = []
    for life in sorted(lives, key=lambda x: x.requested_at):
        position = next((i for i, t in enumerate(free_at) if t <= life.requested_at), len(free_at))
        if position == len(free_at):
            free_at.append(math.inf)
        free_at[position] = life.exited_at
        instance, within = divmod(position, per_instance)
        first = instance * chosen.devices + within * slots_per_function
        placed.append((first, Placed(life, slots_per_function)))
    by_instance: dict[int, list[Placed]] = {}
    for first, p in placed:
        by_instance.setdefault(first // chosen.devices, []).append(p)
    runs, _ = instance_runs(model, chosen, by_instance, "planned")
    return sum(r.usd for r in runs)


def price_planned(
    model: TableCostModel,
    device_kind: str,
    lives: Sequence[Lifetime],
    slots_per_function: int = 1,
) -> float:
    """Dollars for new functions ``lives`` placed the cheapest way the model rents them: packed
    first-fit onto instances of each shape that holds a function (:func:`price_packed`), the
    cheapest shape's total. With a 1-slot shape that is one instance (and one minimum) per
    function; with a shape of 8 it is one minimum per 8 functions, and the unused slots paid
    for. The placement choice a planner prices for a plan of new functions."""
    kind = model.rate_kind(device_kind)
    shapes = [s for s in model.shapes[kind] if s.devices >= slots_per_function]
    if not shapes:
        raise NoInstanceFits(
            f"cost model {model.name!r} has no {kind} instance holding a "
            f"{slots_per_function}-slot function; add a larger shape in a price file"
        )
    return min(price_packed(model, device_kind, lives, slots_per_function, s) for s in shapes)
