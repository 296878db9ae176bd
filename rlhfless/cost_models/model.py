"""The cost-model interface: device kind + lifetime -> dollars, under a provider's billing rules.

A :class:`CostModel` knows a price per slot-second for each device kind (:meth:`CostModel.rates`)
and three billing rules (:class:`BillingRules`). :meth:`CostModel.price` applies them:

1. Billing starts at ``requested_at`` if cold starts are billed, else at ``ready_at`` (a function
   that never became ready then bills nothing).
2. The billed span is rounded UP to the granularity, then raised to the minimum charge. A span
   of zero (within 1 microsecond) bills nothing: nothing was rented, so no minimum applies.
3. Dollars = billed seconds x price per slot-second x slots held (every slot is billed).

Owned hardware uses the same machinery with continuous billing and no minimum: its price per
slot-second is amortised capex + power + operations (see ``schema.OwnedRow``), paid whether the
slot is busy or idle.

A model with rules of its own (spot prices that change over time, tiered discounts) subclasses
:class:`CostModel` and overrides :meth:`CostModel.price`.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence

import msgspec

from rlhfless.cost_models.devices import normalise_device_kind
from rlhfless.cost_models.errors import BadBillingEvent, UnknownDeviceKind
from rlhfless.cost_models.lifetime import Lifetime

# Billing times are differences of Unix timestamps (~1.7e9 s), whose float resolution is
# ~2.4e-7 s. A span that exceeds a granularity boundary by less than this is float noise, not a
# real extra second, so it must not round up to the next unit.
ROUNDING_TOLERANCE_SECONDS = 1e-6


class BillingRules(msgspec.Struct, frozen=True, kw_only=True):
    """How a provider turns a held span into billed seconds."""

    granularity_seconds: float = 1.0  # round up to a multiple of this; 0 = continuous
    minimum_seconds: float = 0.0  # per start with a positive billed span
    bill_cold_start: bool = True  # whether requested_at..ready_at is billed
    # Billed after a function's last work even if it exits sooner (a serverless worker's idle
    # timeout: RunPod bills it). 0: billing ends at exit.
    idle_timeout_seconds: float = 0.0

    def billed_seconds(self, span: float) -> float:
        """Seconds charged for holding a slot ``span`` seconds (monotone non-decreasing in span)."""
        g = self.granularity_seconds
        if g > 0:
            units = math.ceil(max(0.0, span - ROUNDING_TOLERANCE_SECONDS) / g)
            rounded = units * g
        else:
            rounded = max(0.0, span)
        if rounded <= 0.0:
            return 0.0
        return max(rounded, self.minimum_seconds)


class Bill(msgspec.Struct, frozen=True, kw_only=True):
    """One function's bill. Seconds are per slot; dollars cover all ``slots``.

    ``usd = busy_usd + idle_usd + cold_start_usd``. Paid-for time that did no work because of
    rounding up and minimum charges (``padding_usd``) is counted inside ``idle_usd``. Under a
    model that does not bill cold starts, ``cold_start_usd`` is 0 while ``cold_start_seconds``
    still reports the physical time.
    """

    device_kind: str
    slots: int
    seconds: float  # requested_at .. exited_at
    cold_start_seconds: float
    busy_seconds: float
    idle_seconds: float
    billed_seconds: float  # after the model's rules
    usd: float
    busy_usd: float
    idle_usd: float
    cold_start_usd: float
    padding_usd: float


class CostModel(ABC):
    """Prices one function's lifetime on a device kind. Subclasses supply :meth:`rates`."""

    # "slot": each function pays for its own slots; "instance": the ledger bills whole
    # instances (see instances.py), and price() is one function's slot share.
    rented = "slot"

    def __init__(self, name: str, rules: BillingRules, description: str = "") -> None:
        self.name = name
        self.rules = rules
        self.description = description

    @abstractmethod
    def rates(self) -> Mapping[str, float]:
        """USD per slot-second for each (normalised) device kind this model prices."""

    def device_kinds(self) -> tuple[str, ...]:
        return tuple(sorted(self.rates()))

    def rate(self, device_kind: str) -> float:
        """USD per slot-second of ``device_kind``; :class:`UnknownDeviceKind` if not priced."""
        kind = normalise_device_kind(device_kind)
        rates = self.rates()
        if kind not in rates:
            raise UnknownDeviceKind(self.name, device_kind, rates, kind)
        return rates[kind]

    def rate_kind(self, device_kind: str) -> str:
        """``device_kind`` normalised; :class:`UnknownDeviceKind` (naming it) if not priced."""
        self.rate(device_kind)
        return normalise_device_kind(device_kind)

    def hourly(self, device_kind: str) -> float:
        """USD per slot-hour, the unit people quote."""
        return self.rate(device_kind) * 3600.0

    def price(self, device_kind: str, lifetime: Lifetime, slots: int = 1) -> Bill:
        """The bill for holding ``slots`` slots of ``device_kind`` for ``lifetime``."""
        if slots < 1:
            raise BadBillingEvent(lifetime.label, f"slots must be >= 1, got {slots}")
        per_slot_second = self.rate(device_kind)  # before normalising: errors name the input
        kind = normalise_device_kind(device_kind)
        rules = self.rules
        cold = lifetime.cold_start_seconds
        if rules.bill_cold_start:
            start, billed_cold = lifetime.requested_at, cold
        else:
            start = lifetime.exited_at if lifetime.ready_at is None else lifetime.ready_at
            billed_cold = 0.0
        span = billed_end(lifetime, rules) - start
        billed = rules.billed_seconds(span)
        # Split the billed time into buckets. `covered` is the part of the span that was billed
        # (all of it, unless float noise rounded a hair off the end).
        covered = min(span, billed)
        cold_b = min(billed_cold, covered)
        busy_b = lifetime.busy_within(start, start + covered)
        idle_b = max(0.0, covered - cold_b - busy_b)
        padding = billed - covered
        dollars = per_slot_second * slots
        return Bill(
            device_kind=kind,
            slots=slots,
            seconds=lifetime.seconds,
            cold_start_seconds=cold,
            busy_seconds=lifetime.busy_seconds,
            idle_seconds=lifetime.idle_seconds,
            billed_seconds=billed,
            usd=billed * dollars,
            busy_usd=busy_b * dollars,
            idle_usd=(idle_b + padding) * dollars,
            cold_start_usd=cold_b * dollars,
            padding_usd=padding * dollars,
        )


def billed_end(lifetime: Lifetime, rules: BillingRules) -> float:
    """When billing stops: at exit, or ``idle_timeout_seconds`` after the last work if later
    (a serverless worker is billed for its idle timeout even when it is stopped sooner)."""
    if rules.idle_timeout_seconds <= 0:
        return lifetime.exited_at
    if lifetime.busy:
        last = lifetime.busy[-1][1]
    else:
        last = lifetime.requested_at if lifetime.ready_at is None else lifetime.ready_at
    return max(lifetime.exited_at, last + rules.idle_timeout_seconds)


class PriceRow(msgspec.Struct, frozen=True, kw_only=True):
    """Where a rate came from: shown by ``rlhfless cost`` and kept for provenance.

    ``usd_per_slot_hour`` is everything one slot costs an hour (device share + the CPU and
    memory its function requests); ``usd_per_instance_hour`` is what renting the whole
    ``instance`` costs (``devices`` slots)."""

    device_kind: str
    usd_per_slot_hour: float
    instance: str
    devices: int
    source: str
    date: str
    note: str = ""
    usd_per_instance_hour: float = 0.0
    cpu_cores: float = 0.0
    memory_gib: float = 0.0


class TableCostModel(CostModel):
    """A cost model whose rates come from a price table (a shipped or user TOML file)."""

    def __init__(
        self,
        name: str,
        rules: BillingRules,
        rows: Mapping[str, PriceRow],
        description: str = "",
        origin: str = "",
        *,
        shapes: Mapping[str, Sequence[PriceRow]] | None = None,
        rented: str = "slot",
    ) -> None:
        super().__init__(name, rules, description)
        self.rows = dict(rows)  # each kind's default row: its first in the file
        # Every row of each kind (instance shapes: g6e.xlarge, g6e.48xlarge), default first.
        self.shapes = {k: tuple(v) for k, v in (shapes or {}).items()} or {
            k: (r,) for k, r in self.rows.items()
        }
        self.rented = rented
        self.origin = origin  # the file it was loaded from
        self._rates = {kind: row.usd_per_slot_hour / 3600.0 for kind, row in self.rows.items()}

    def all_rows(self) -> list[PriceRow]:
        """Every row of the table, default shapes first within a kind."""
        return [row for kind in sorted(self.shapes) for row in self.shapes[kind]]

    def rates(self) -> Mapping[str, float]:
        return self._rates

    def __repr__(self) -> str:
        return f"TableCostModel({self.name!r}, kinds={self.device_kinds()}, origin={self.origin!r})"
