"""Showing ledger results: rich tables (models side by side), JSON, and a bar chart.

An empty billing file prices to all zeros, which reads like a free run; the comparison table and
the JSON say "no billing events" (:func:`empty_message`), so the caller need not remember to.
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Sequence
from pathlib import Path

import msgspec
from rich.table import Table
from rich.text import Text

from rlhfless.cost_models.ages import age_days, age_text, is_stale
from rlhfless.cost_models.devices import is_gpu
from rlhfless.cost_models.errors import PlotUnavailable
from rlhfless.cost_models.ledger import LedgerResult, Serverful
from rlhfless.cost_models.model import BillingRules, TableCostModel

SIGNIFICANT_DIGITS = 4  # below one cent; a CPU test run's busy dollars are ~$0.0005
MAX_DECIMALS = 10  # below $1e-7 a bill is float noise, not money


def usd(value: float) -> str:
    """Dollars: cents from $100, 4 decimals from $0.01, and 4 significant figures below a cent.

    Every dollar cell of every table goes through here. Four fixed decimals would print a test
    run's $0.000478 as $0.0005 and anything under $0.00005 as $0.0000.
    """
    size = abs(value)
    if size >= 100:
        return f"${value:,.2f}"
    if size >= 0.01 or size == 0:
        return f"${value:,.4f}"
    decimals = SIGNIFICANT_DIGITS - 1 - math.floor(math.log10(size))
    return f"${value:.{min(decimals, MAX_DECIMALS)}f}"


def plural(count: int, noun: str) -> str:
    """``1 slot``, ``4 slots``: the nouns used here all take a plain -s."""
    return f"{count:,} {noun}" if count == 1 else f"{count:,} {noun}s"


def table_title(source: Path | str, events: int) -> str:
    """The comparison table's title for a billing file holding ``events`` lines."""
    return f"Cost of {source} ({plural(events, 'event') if events else 'no billing events'})"


def empty_message(source: Path | str | None = None, *, hint: bool = True) -> str:
    """What to say when nothing was priced (see :attr:`LedgerResult.empty`); ``hint`` adds
    what to check (left out under a table, where the line must stay short)."""
    where = f" in {source}" if source is not None else ""
    text = f"no billing events{where}: nothing was priced, every amount is zero"
    if hint:
        text += (
            ". A run writes a function's event when the function exits: check the path, or "
            "price the file once the run has finished a function."
        )
    return text


def all_empty(results: Sequence[LedgerResult]) -> bool:
    """Whether there is nothing to show: no result, or no result priced any function."""
    return all(r.empty for r in results)


def rules_text(rules: BillingRules, rented: str = "slot") -> str:
    g = rules.granularity_seconds
    parts = ["continuous" if g == 0 else f"per {g:g} s"]
    minimum = f"min {rules.minimum_seconds:g} s" if rules.minimum_seconds else "no minimum"
    parts.append(minimum + (" per instance" if rented == "instance" and minimum[0] == "m" else ""))
    if rules.idle_timeout_seconds:
        parts.append(f"{rules.idle_timeout_seconds:g} s idle billed")
    return ", ".join(parts)


def prices_table(model: TableCostModel, today: datetime.date | None = None) -> Table:
    """One model's rows: what a slot and an instance cost, the source, the date and its age."""
    rented = "whole instances" if model.rented == "instance" else "per function"
    title = f"{model.name}: {model.description or ''} [{rented}; {rules_text(model.rules, model.rented)}]"
    table = Table(title=Text(title), title_justify="left", show_lines=False)
    for name, just in (("kind", "left"), ("instance", "left"), ("slots", "right")):
        table.add_column(name, justify=just)  # type: ignore[arg-type]
    table.add_column("$/slot-h", justify="right")
    table.add_column("$/instance-h", justify="right")
    table.add_column("read", justify="right")
    table.add_column("age", justify="right")
    table.add_column("source", overflow="fold")
    for row in model.all_rows():
        days = age_days(row, today)
        age = Text(age_text(days), style="bold red" if is_stale(row, today) else "")
        extra = f" (+{row.cpu_cores:g} cores, {row.memory_gib:g} GiB)" if row.cpu_cores else ""
        table.add_row(
            row.device_kind,
            Text(row.instance or "-"),
            str(row.devices),
            f"{row.usd_per_slot_hour:,.4g}{extra}",
            f"{row.usd_per_instance_hour:,.4g}" if row.usd_per_instance_hour else "-",
            row.date,
            age,
            Text(row.source + (f" NOTE: {row.note}" if row.note else "")),
        )
    return table


def serverful_text(s: Serverful) -> str:
    """``$0.8000 (4 slots, 200.0 s)``: dollars, slots touched, wall-clock seconds rented."""
    if not s.rentals:
        return usd(s.usd)
    return f"{usd(s.usd)} ({plural(s.slots, 'slot')}, {s.rented_seconds:,.1f} s)"


def rentals_text(s: Serverful) -> str:
    """``2 rentals for 2 segments``, or ``1 rental for 2 segments`` where renting through the
    gap was cheaper than starting again (see the ledger's docstring)."""
    return f"{plural(len(s.rentals), 'rental')} for {plural(len(s.segments), 'segment')}"


def comparison_table(
    results: Sequence[LedgerResult], title: str = "Run cost", *, source: Path | str | None = None
) -> Table:
    """One column per model: totals, busy/idle/cold-start split, serverful baseline.

    When no function was priced the caption says so (naming ``source``, the billing file, when
    given): an all-zero table is otherwise indistinguishable from a free run.
    """
    table = Table(title=title)
    if all_empty(results):
        # Text, not a str: rich would read "[...]" in a path as markup and drop it.
        table.caption = Text(empty_message(source, hint=False), style="bold yellow")
    table.add_column("", style="bold")
    for r in results:
        table.add_column(r.model, justify="right")

    def row(label: str, cells: Sequence[str]) -> None:
        table.add_row(label, *cells)

    row("billing", [rules_text(r.rules, r.rented) for r in results])
    row("cold start billed", ["yes" if r.rules.bill_cold_start else "no" for r in results])
    row("functions", [str(r.functions) for r in results])
    row("total", [usd(r.total.usd) for r in results])
    row("  busy", [usd(r.total.busy_usd) for r in results])
    row("  idle (incl. rounding)", [usd(r.total.idle_usd) for r in results])
    row("    of which rounding/minimum", [usd(r.total.padding_usd) for r in results])
    row("  cold start", [usd(r.total.cold_start_usd) for r in results])
    if any(r.lost.functions for r in results):  # only a run where functions died in a lease
        row(
            "lost work (killed functions)",
            [f"{usd(r.lost.usd)} ({plural(r.lost.functions, 'function')})" for r in results],
        )
    row("serverful baseline", [serverful_text(r.serverful) for r in results])
    # Only a job that stopped and resumed has several segments; a single-segment run (the common
    # case, and the worked example in docs/cost_models.md) keeps the shorter table.
    if any(len(r.serverful.segments) > 1 for r in results):
        row("  rented", [rentals_text(r.serverful) for r in results])
    row("saving vs serverful", [f"{100 * r.saving_fraction:.1f}%" for r in results])
    # The paper's metric is GPU-seconds; a CPU-only run has none, and "0.0 (0.0)" read like a
    # run that did nothing. Show its CPU slot-seconds instead, and no row when nothing ran.
    kinds = {kind for r in results for kind in r.by_device}
    if any(is_gpu(kind) for kind in kinds):
        row(
            "GPU-seconds (busy)",
            [f"{r.gpu_seconds:,.1f} ({r.busy_gpu_seconds:,.1f})" for r in results],
        )
    elif kinds:
        row(
            "CPU slot-seconds (busy)",
            [f"{r.total.slot_seconds:,.1f} ({r.total.busy_slot_seconds:,.1f})" for r in results],
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
    """``{"events": path, "warnings": [...], "models": {name: LedgerResult}}`` as JSON bytes.

    ``warnings`` holds :func:`empty_message` when no function was priced, else nothing.
    """
    payload = {
        "events": None if events_path is None else str(events_path),
        "warnings": [empty_message(events_path)] if all_empty(results) else [],
        "models": {r.model: r for r in results},
    }
    return msgspec.json.format(msgspec.json.encode(payload), indent=2)


def plot_costs(results: Sequence[LedgerResult], path: Path | str, title: str = "") -> Path:
    """Per model: a stacked bar of the run's busy / idle / cold-start dollars, and beside it a
    grey bar of the serverful baseline. Linear dollar axis; each bar is labelled with its total
    (significant digits, so a test run's fraction of a cent reads as one), and the dollars lost
    to killed functions are named under the total where there were any."""
    try:
        # Figure without pyplot: no global state, no GUI backend, safe in threads and tests.
        from matplotlib.figure import Figure
        from matplotlib.ticker import FuncFormatter
    except ImportError:
        raise PlotUnavailable() from None
    n = len(results)
    x = list(range(n))
    width = 0.38
    run_x = [i - width / 2 for i in x]
    base_x = [i + width / 2 for i in x]
    busy = [r.total.busy_usd for r in results]
    idle = [r.total.idle_usd for r in results]
    cold = [r.total.cold_start_usd for r in results]
    base = [r.serverful.usd for r in results]
    fig = Figure(figsize=(max(7.0, 1.9 * n + 2.5), 4.8))
    ax = fig.add_subplot()
    # One colour per meaning, the same in every bar.
    ax.bar(run_x, busy, width, color="#2b6cb0", label="busy (working)")
    ax.bar(run_x, idle, width, bottom=busy, color="#f6ad55", label="idle (warm, rounding, minimum)")
    bottom = [b + i for b, i in zip(busy, idle, strict=True)]
    ax.bar(run_x, cold, width, bottom=bottom, color="#68d391", label="cold start")
    ax.bar(
        base_x, base, width, color="#a0aec0", label="serverful baseline (same job, slots rented)"
    )
    top = max([r.total.usd for r in results] + base + [0.0])
    for i, r in enumerate(results):
        label = usd(r.total.usd)
        if r.lost.functions:
            label += f"\nlost {usd(r.lost.usd)}"
        ax.annotate(label, (run_x[i], r.total.usd), ha="center", va="bottom", fontsize=8,
                    xytext=(0, 2), textcoords="offset points")  # fmt: skip
        ax.annotate(usd(base[i]), (base_x[i], base[i]), ha="center", va="bottom", fontsize=8,
                    xytext=(0, 2), textcoords="offset points")  # fmt: skip
    ax.set_xticks(x, [f"{r.model}\n{rules_text(r.rules, r.rented)}" for r in results], fontsize=8)
    ax.set_xlim(-0.7, n - 0.3)
    ax.set_ylim(0, top * 1.25 if top > 0 else 1.0)
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"${v:.3g}"))
    ax.set_ylabel("dollars (linear scale)")
    ax.set_title(title or "Run cost by cost model", fontsize=10)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, fontsize=8, frameon=False)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=120)
    return out
