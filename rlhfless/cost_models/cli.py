"""``rlhfless cost``: price a run's billing events under one or several cost models.

Registering it in the top-level CLI (``rlhfless/cli.py``)::

    from rlhfless.cost_models.cli import cost
    app.command("cost")(cost)

``cost`` is a plain typer command function; it calls :func:`cost_command`, which does the work,
returns an exit status (0 ok, 1 bad input, with the reason on stderr) and is what tests and other
tools call. Standalone, without the top-level CLI::

    python -m rlhfless.cost_models.cli run.billing.jsonl --model aws --model serverless

Usage::

    rlhfless cost EVENTS.jsonl [--model NAME ...] [--prices FILE.toml ...] [--json]
                               [--plot FILE.png] [--now SECONDS|end]

No ``--model``: every built-in model plus those the ``--prices`` files define. A ``--prices`` file
whose ``[model] name`` is a built-in's replaces that built-in.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.console import Console
from rich.markup import escape
from rich.text import Text

from rlhfless.cost_models.errors import CostModelError
from rlhfless.cost_models.events import latest_time, read_billing_events
from rlhfless.cost_models.ledger import Ledger, LedgerResult
from rlhfless.cost_models.registry import resolve_models
from rlhfless.cost_models.report import (
    breakdown_table,
    comparison_table,
    plot_costs,
    results_json,
    table_title,
)


def cost_command(
    events_path: Path,
    models: list[str],
    prices: list[Path] | None,
    as_json: bool,
    plot: Path | None,
    now: float | Literal["end"] | None = None,
) -> int:
    """Price ``events_path`` under ``models`` (empty: all available) and print the comparison.

    ``now`` prices functions that have not exited up to that time; ``"end"`` means the latest time
    in the file. Without it, a live function is an error. Returns the exit status.
    """
    err = Console(stderr=True)
    try:
        # An empty file is an error: an all-zero table would read as a free run.
        events = read_billing_events(events_path, allow_empty=False)
        chosen = resolve_models(_split_names(models), prices or [])
        cut = latest_time(events) if now == "end" else now
        results = [Ledger(m, events).result(cut) for m in chosen]
        plotted = _plot(results, plot) if plot is not None else None
    except CostModelError as exc:
        # Text, not markup: messages contain "[model]" and "[[prices]]", which rich would eat.
        err.print(Text.assemble(("error: ", "bold red"), str(exc)), soft_wrap=True)
        return 1
    if as_json:
        sys.stdout.write(results_json(results, events_path).decode() + "\n")
        sys.stdout.flush()
    else:
        out = Console(width=None if sys.stdout.isatty() else 160)
        title = escape(table_title(events_path, len(events)))  # a path is not markup
        out.print(comparison_table(results, title=title, source=events_path))
        out.print(breakdown_table(results, "stage"))
        out.print(breakdown_table(results, "device"))
    if plotted is not None:
        err.print(f"wrote {plotted}", markup=False, highlight=False)
    return 0


def _plot(results: list[LedgerResult], path: Path) -> Path:
    """``plot_costs``, with a path that cannot be written reported like any other bad input."""
    try:
        return plot_costs(results, path)
    except OSError as exc:
        raise CostModelError(f"cannot write --plot {path}: {exc.strerror or exc}") from None


def _split_names(models: list[str] | None) -> list[str]:
    """``--model aws,gcp --model onprem`` -> ``["aws", "gcp", "onprem"]``."""
    return [n.strip() for m in models or [] for n in m.split(",") if n.strip()]


def _parse_now(value: str | None) -> float | Literal["end"] | None:
    if value is None or value == "end":
        return value
    try:
        return float(value)
    except ValueError:
        raise typer.BadParameter(f"expected Unix seconds or 'end', got {value!r}") from None


def cost(
    events: Annotated[Path, typer.Argument(help="Billing-event JSONL file written by a run.")],
    model: Annotated[
        list[str] | None,
        typer.Option(
            "--model",
            "-m",
            help="Cost model(s) to compare (repeat or comma-separate); default: all.",
        ),
    ] = None,
    prices: Annotated[
        list[Path] | None,
        typer.Option("--prices", help="Your own price file (TOML); defines or overrides a model."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
    plot: Annotated[
        Path | None,
        typer.Option("--plot", help="Write a bar chart (PNG) of busy/idle/cold-start dollars."),
    ] = None,
    now: Annotated[
        str | None,
        typer.Option(
            "--now",
            help="Price live functions up to this Unix time ('end': the file's latest time).",
        ),
    ] = None,
) -> None:
    """Price a run's billing events under one or several cost models, side by side."""
    code = cost_command(events, model or [], prices, as_json, plot, _parse_now(now))
    if code:
        raise typer.Exit(code)


app = typer.Typer(add_completion=False, help="Price a run's billing events (rlhfless cost).")
app.command()(cost)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
