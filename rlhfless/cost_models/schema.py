"""The price-file schema: what a TOML price file may contain, as msgspec structs.

A price file defines one cost model::

    [model]                      # the billing rules (see ModelHeader)
    name = "aws"
    billing = "rental"           # or "owned"
    granularity_seconds = 1.0
    minimum_seconds = 60.0
    bill_cold_start = true

    [[prices]]                   # RentalRow or OwnedRow rows, per `billing`; one per device kind
    device_kind = "h100"         # and instance: the first row of a kind is its default shape
    ...

Unknown fields are rejected (``forbid_unknown_fields``) so a misspelt field fails instead of
being ignored. Semantic checks (negative prices, unknown units, unknown device kinds) live in
``prices.py`` where the file and row are known and the message can name them.
"""

from __future__ import annotations

import datetime
from typing import Literal

import msgspec

# Price units a rental row may use, and how many seconds one unit of time is.
UNIT_SECONDS: dict[str, float] = {
    "usd_per_hour": 3600.0,
    "usd_per_minute": 60.0,
    "usd_per_second": 1.0,
    "usd_per_millisecond": 0.001,
}

SECONDS_PER_YEAR = 365.25 * 24 * 3600.0  # Julian year: the leap-day average, no calendar needed


class ModelHeader(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The ``[model]`` table: a model's name and its billing rules."""

    name: str  # how --model and registry look it up; a user file may reuse a built-in's name
    description: str = ""
    billing: Literal["rental", "owned"]  # rental: RentalRow rows; owned: OwnedRow rows
    # Billed time is rounded UP to a multiple of this (1 = per second, 0.001 = per millisecond,
    # 3600 = per hour). 0 means continuous: no rounding (used for owned hardware).
    granularity_seconds: float
    # Minimum billed time per function start (AWS EC2 and GCP: 60 s). Applies to every start
    # with a positive billed time; a start that billed nothing costs nothing.
    minimum_seconds: float = 0.0
    # Whether requested_at..ready_at (process start, model load) is billed. When false, billing
    # starts at ready_at, and a function that never became ready costs nothing.
    bill_cold_start: bool = True
    # What is rented. "slot": each function pays for its own slots (a serverless worker, or the
    # per-GPU share of an instance). "instance": the whole instance a slot belongs to is billed
    # from its start while any of its slots is held or warm, the minimum per instance start
    # (AWS EC2, GCP, Lambda); see instances.py.
    rented: Literal["slot", "instance"] = "slot"
    # Seconds billed after a function's last work even when it stops sooner: a serverless
    # worker's idle timeout (RunPod Serverless: 5 s by default). 0: billing ends at exit.
    idle_timeout_seconds: float = 0.0
    # Charges on top of the device price, per CPU core-second and per GiB-second of memory a
    # function requests (Modal). A row's cpu_cores and memory_gib say how much it requests.
    cpu_usd_per_core_second: float = 0.0
    memory_usd_per_gib_second: float = 0.0


class RentalRow(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A rented device: ``price`` per ``unit`` for an ``instance`` of ``devices`` slots.

    The price of one slot is ``price / devices``, so a row can quote the provider's own instance
    price (p5.48xlarge: 8 x H100) and the per-GPU share is derived, visibly, from it.
    """

    device_kind: str
    price: float  # in USD per `unit`, for the whole instance
    unit: str  # one of UNIT_SECONDS
    instance: str = ""  # the provider's name for what `price` buys, e.g. "p5.48xlarge"
    devices: int = 1  # device slots in that instance
    # CPU cores and GiB of memory one slot's function requests, billed at the header's
    # cpu_usd_per_core_second and memory_usd_per_gib_second (a request, chosen per job).
    cpu_cores: float = 0.0
    memory_gib: float = 0.0
    source: str  # URL or document name, and what kind of price it is (list, on-demand, region)
    date: datetime.date  # when the price was read (TOML date: 2024-12-01)
    note: str = ""


class OwnedRow(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Owned hardware: amortised purchase + electricity x PUE + operations, per ``instance``.

    Cost per slot-second = (capex_usd / (lifetime_years * year) + watts / 1000 * usd_per_kwh
    * pue / 3600 + ops_usd_per_year / year) / devices. Paid whether busy or idle: the hardware
    draws ``watts`` (take the nameplate maximum for a conservative bill) and depreciates anyway.
    """

    device_kind: str
    instance: str = ""  # e.g. "8x H100 SXM server"
    devices: int = 1  # device slots in that instance
    capex_usd: float  # purchase price of the instance
    lifetime_years: float  # depreciation period
    watts: float  # power draw of the instance
    usd_per_kwh: float
    pue: float  # power usage effectiveness of the data centre (>= 1)
    ops_usd_per_year: float = 0.0  # maintenance, space, staff share, network
    source: str
    date: datetime.date
    note: str = ""
