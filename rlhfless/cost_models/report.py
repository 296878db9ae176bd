"""Showing ledger results: rich tables (models side by side), JSON, and a bar chart."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import msgspec
from rich.table import Table

from rlhfless.cost_models.errors import PlotUnavailable
from rlhfless.cost_models.ledger import LedgerResult
from rlhfless.cost_models.model import BillingRules


def usd(value: float) -> str:
    """Dollars with enough digits to see a test run's fractions of a cent."""
    return f"${value:,.2f}" if abs(value) >= 100 else f"${value:,.4f}"


def rules_text(rules: BillingRules) -> str:
    g = rules.granularity_seconds
    parts = ["continuous" if g == 0 else f"per {g:g} s"]
    parts.append(f"min {rules.minimum_seconds:g} s" if rules.minimum_seconds else "no minimum")
    return ", ".join(parts)


def comparison_table(results: Sequence[LedgerResult], title: str = "Run cost") -> Table:
    """One column per model: totals, busy/idle/cold-start split, serverful baseline."""
    table = Table(title=title)
    table.add_column("", style="bold")
    for r in results:
        table.add_column(r.model, justify="right")

    def row(label: str, cells: Sequence[str]) -> None:
        table.add_row(label, *cells)

    row("billing", [rules_text(r.rules) for r in results])
    row("cold start billed", ["yes" if r.rules.bill_cold_start else "no" for r in results])
    row("functions", [str(r.functions) for r in results])
    row("total", [usd(r.total.usd) for r in results])
    row("  busy", [usd(r.total.busy_usd) for r in results])
    row("  idle (incl. rounding)", [usd(r.total.idle_usd) for r in results])
    row("    of which rounding/minimum", [usd(r.total.padding_usd) for r in results])
    row("  cold start", [usd(r.total.cold_start_usd) for r in results])
    row(
        "serverful baseline",
        [f"{usd(r.serverful.usd)} ({r.serverful.slots} slots)" for r in results],
    )
    row("saving vs serverful", [f"{100 * r.saving_fraction:.1f}%" for r in results])
    row(
        "GPU-seconds (busy)", [f"{r.gpu_seconds:,.1f} ({r.busy_gpu_seconds:,.1f})" for r in results]
    )
    return table


def breakdown_table(results: Sequence[LedgerResult], by: str) -> Table:
    """Dollars per stage (``by="stage"``) or per device kind (``by="device"``), models side by side."""
    if by not in ("stage", "device"):
        raise ValueError(f"by must be 'stage' or 'device', not {by!r}")
    groups = [r.by_stage if by == "stage" else r.by_device for r in results]
    keys = sorted({k for g in groups for k in g})
    table = Table(title=f"Cost by {by}")
    table.add_column(by, style="bold")
    table.add_column("slot-seconds", justify="right")
    for r in results:
        table.add_column(r.model, justify="right")
    for key in keys:
        # Slot-seconds do not depend on the model: take them from any result that has the key.
        seconds = next(g[key].slot_seconds for g in groups if key in g)
        table.add_row(
            key, f"{seconds:,.1f}", *(usd(g[key].usd) if key in g else "-" for g in groups)
        )
    return table


def results_json(results: Sequence[LedgerResult], events_path: Path | str | None = None) -> bytes:
    """``{"events": path, "models": {name: LedgerResult}}`` as JSON bytes."""
    payload = {
        "events": None if events_path is None else str(events_path),
        "models": {r.model: r for r in results},
    }
    return msgspec.json.format(msgspec.json.encode(payload), indent=2)


def plot_costs(results: Sequence[LedgerResult], path: Path | str) -> Path:
    """Stacked bars of busy / idle / cold-start dollars per model, serverful as a marker."""
    try:
        # Figure without pyplot: no global state, no GUI backend, safe in threads and tests.
        from matplotlib.figure import Figure
    except ImportError:
        raise PlotUnavailable() from None
    names = [r.model for r in results]
    busy = [r.total.busy_usd for r in results]
    idle = [r.total.idle_usd for r in results]
    cold = [r.total.cold_start_usd for r in results]
    fig = Figure(figsize=(1.6 * len(results) + 3, 4.5))
    ax = fig.add_subplot()
    ax.bar(names, busy, label="busy")
    ax.bar(names, idle, bottom=busy, label="idle (incl. rounding/minimum)")
    ax.bar(names, cold, bottom=[b + i for b, i in zip(busy, idle, strict=True)], label="cold start")
    ax.scatter(
        names,
        [r.serverful.usd for r in results],
        marker="_",
        s=900,
        color="black",
        label="serverful baseline",
        zorder=3,
    )
    ax.set_ylabel("USD")
    ax.set_title("Run cost by model")
    ax.legend()
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=120)
    return out
