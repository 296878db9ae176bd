"""Loading and validating price files (TOML) into :class:`TableCostModel` objects.

Every problem is a :class:`PriceFileError` naming the file, the ``[[prices]]`` row and the field.
Checks, beyond the types the schema enforces:

* ``unit`` is one of :data:`schema.UNIT_SECONDS`;
* ``device_kind`` normalises to a known kind (:data:`devices.KNOWN_DEVICE_KINDS`) and appears
  once per ``instance`` (a kind may have several shapes; its first row is its default);
* prices, capex, watts, years and rates are finite and not negative (years and ``devices``
  positive, ``pue`` >= 1);
* ``source`` is not blank (``date`` is required by the schema).
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import msgspec

from rlhfless.cost_models.devices import KNOWN_DEVICE_KINDS, normalise_device_kind
from rlhfless.cost_models.errors import PriceFileError
from rlhfless.cost_models.model import BillingRules, PriceRow, TableCostModel
from rlhfless.cost_models.schema import (
    SECONDS_PER_YEAR,
    UNIT_SECONDS,
    ModelHeader,
    OwnedRow,
    RentalRow,
)

_FIELD_IN_ERROR = re.compile(r"at `\$\.(\w+)")
_MISSING_FIELD = re.compile(r"(?:missing required|unknown) field `(\w+)`")


def builtin_price_files() -> list[Path]:
    """The price files shipped in ``rlhfless/cost_models/prices/``, sorted by name."""
    folder = resources.files("rlhfless.cost_models").joinpath("prices")
    return sorted(Path(str(p)) for p in folder.iterdir() if p.name.endswith(".toml"))


def load_price_file(path: Path | str) -> TableCostModel:
    """Read, validate and build the cost model that ``path`` defines."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise PriceFileError(path, f"cannot read it ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise PriceFileError(path, "it is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise PriceFileError(path, f"it is not valid TOML ({exc})") from None
    return model_from_dict(raw, path)


def model_from_dict(raw: dict[str, Any], path: Path | str = "<prices>") -> TableCostModel:
    """Build a model from an already-parsed price file (``path`` is only for messages)."""
    unknown = sorted(set(raw) - {"model", "prices"})
    if unknown:
        raise PriceFileError(
            path, f"unknown top-level table(s) {unknown}; expected [model] and [[prices]]"
        )
    if "model" not in raw:
        raise PriceFileError(
            path, "missing the [model] table (name, billing, granularity_seconds, ...)"
        )
    header = _convert(raw["model"], ModelHeader, path, row=None)
    _check_header(header, path)
    rows_raw = raw.get("prices", [])
    if not isinstance(rows_raw, list) or not rows_raw:
        raise PriceFileError(path, "no [[prices]] rows; a model needs at least one device kind")
    row_type: type[RentalRow] | type[OwnedRow] = (
        RentalRow if header.billing == "rental" else OwnedRow
    )
    shapes: dict[str, list[PriceRow]] = {}
    first_row_of: dict[tuple[str, str], int] = {}
    for index, row_raw in enumerate(rows_raw, start=1):
        if not isinstance(row_raw, dict):
            raise PriceFileError(path, "each [[prices]] entry must be a table", row=index)
        kind_hint = str(row_raw.get("device_kind", "")) or None
        row = _convert(row_raw, row_type, path, row=index, device_kind=kind_hint)
        kind = _check_kind(row.device_kind, path, index)
        key = (kind, row.instance)
        if key in first_row_of:
            raise PriceFileError(
                path,
                f"device kind {kind!r} on instance {row.instance!r} is already priced by row "
                f"{first_row_of[key]}; keep one row per kind and instance",
                row=index,
                field="device_kind",
                device_kind=row.device_kind,
            )
        first_row_of[key] = index
        shapes.setdefault(kind, []).append(_price_row(row, kind, header, path, index))
    rules = BillingRules(
        granularity_seconds=header.granularity_seconds,
        minimum_seconds=header.minimum_seconds,
        bill_cold_start=header.bill_cold_start,
        idle_timeout_seconds=header.idle_timeout_seconds,
    )
    rows = {kind: found[0] for kind, found in shapes.items()}
    return TableCostModel(
        header.name,
        rules,
        rows,
        header.description,
        origin=str(path),
        shapes=shapes,
        rented=header.rented,
    )


def _price_row(
    row: RentalRow | OwnedRow, kind: str, header: ModelHeader, path: Path | str, index: int
) -> PriceRow:
    """The loaded form of one row: hourly prices per slot and per instance."""
    if isinstance(row, RentalRow):
        device_hourly = _rental_hourly(row, path, index)
        _non_negative(row, ("cpu_cores", "memory_gib"), path, index)
        extras = 3600.0 * (
            row.cpu_cores * header.cpu_usd_per_core_second
            + row.memory_gib * header.memory_usd_per_gib_second
        )
        cpu, memory = row.cpu_cores, row.memory_gib
    else:
        device_hourly, extras, cpu, memory = _owned_hourly(row, path, index), 0.0, 0.0, 0.0
    return PriceRow(
        device_kind=kind,
        usd_per_slot_hour=device_hourly + extras,
        usd_per_instance_hour=device_hourly * row.devices,
        instance=row.instance,
        devices=row.devices,
        cpu_cores=cpu,
        memory_gib=memory,
        source=row.source,
        date=row.date.isoformat(),
        note=row.note,
    )


def iter_rows(path: Path | str) -> Iterator[dict[str, Any]]:
    """The raw ``[[prices]]`` rows of a file (for tests and tools that show provenance)."""
    yield from tomllib.loads(Path(path).read_text(encoding="utf-8")).get("prices", [])


# ---------------------------------------------------------------------------------------------


def _convert(
    raw: Any, cls: type, path: Path | str, *, row: int | None, device_kind: str | None = None
) -> Any:
    try:
        return msgspec.convert(raw, cls)
    except msgspec.ValidationError as exc:
        text = str(exc)
        match = _FIELD_IN_ERROR.search(text) or _MISSING_FIELD.search(text)
        field = match.group(1) if match else None
        problem = text.split(" - at ")[0]
        if "missing required field" in text:
            problem = "it is missing (required)"
        elif "unknown field" in text:
            problem = "unknown field (misspelt? see the schema in rlhfless/cost_models/schema.py)"
        elif field == "date":
            problem += " (write a TOML date such as 2024-12-01: the day the price was read)"
        raise PriceFileError(
            path, problem, row=row, field=field or None, device_kind=device_kind
        ) from None


def _check_header(header: ModelHeader, path: Path | str) -> None:
    if not header.name.strip():
        raise PriceFileError(path, "must not be empty", field="name")
    for field in (
        "granularity_seconds",
        "minimum_seconds",
        "idle_timeout_seconds",
        "cpu_usd_per_core_second",
        "memory_usd_per_gib_second",
    ):
        value = getattr(header, field)
        if not (math.isfinite(value) and value >= 0):
            raise PriceFileError(path, f"must be a finite number >= 0, got {value}", field=field)


def _check_kind(device_kind: str, path: Path | str, row: int) -> str:
    kind = normalise_device_kind(device_kind)
    if kind not in KNOWN_DEVICE_KINDS:
        raise PriceFileError(
            path,
            f"unknown device kind {device_kind!r}; known kinds: "
            f"{', '.join(sorted(KNOWN_DEVICE_KINDS))} (a new device is added to "
            "KNOWN_DEVICE_KINDS in rlhfless/cost_models/devices.py)",
            row=row,
            field="device_kind",
        )
    return kind


def _non_negative(row: Any, fields: tuple[str, ...], path: Path | str, index: int) -> None:
    for field in fields:
        value = getattr(row, field)
        if not math.isfinite(value) or value < 0:
            what = "negative" if value < 0 else "not a finite number"
            raise PriceFileError(
                path,
                f"is {what} ({value}); prices and quantities must be finite and >= 0",
                row=index,
                field=field,
                device_kind=row.device_kind,
            )


def _check_common(row: RentalRow | OwnedRow, path: Path | str, index: int) -> None:
    if row.devices < 1:
        raise PriceFileError(
            path,
            f"must be >= 1, got {row.devices}",
            row=index,
            field="devices",
            device_kind=row.device_kind,
        )
    if not row.source.strip():
        raise PriceFileError(
            path,
            "is blank; give the URL or document the price came from",
            row=index,
            field="source",
            device_kind=row.device_kind,
        )


def _rental_hourly(row: RentalRow, path: Path | str, index: int) -> float:
    _check_common(row, path, index)
    if row.unit not in UNIT_SECONDS:
        raise PriceFileError(
            path,
            f"unknown unit {row.unit!r}; use one of {', '.join(UNIT_SECONDS)}",
            row=index,
            field="unit",
            device_kind=row.device_kind,
        )
    _non_negative(row, ("price",), path, index)
    per_second = row.price / UNIT_SECONDS[row.unit]
    return per_second * 3600.0 / row.devices


def _owned_hourly(row: OwnedRow, path: Path | str, index: int) -> float:
    _check_common(row, path, index)
    _non_negative(row, ("capex_usd", "watts", "usd_per_kwh", "ops_usd_per_year"), path, index)
    if not (math.isfinite(row.lifetime_years) and row.lifetime_years > 0):
        raise PriceFileError(
            path,
            f"must be > 0, got {row.lifetime_years}",
            row=index,
            field="lifetime_years",
            device_kind=row.device_kind,
        )
    if not (math.isfinite(row.pue) and row.pue >= 1.0):
        raise PriceFileError(
            path,
            f"must be >= 1 (1.0 = no cooling overhead), got {row.pue}",
            row=index,
            field="pue",
            device_kind=row.device_kind,
        )
    hours_per_year = SECONDS_PER_YEAR / 3600.0
    capex = row.capex_usd / (row.lifetime_years * hours_per_year)
    power = row.watts / 1000.0 * row.usd_per_kwh * row.pue
    ops = row.ops_usd_per_year / hours_per_year
    return (capex + power + ops) / row.devices
