"""``rlhfless cost``: price a run's billing events under one or several cost models.

Registering it in the top-level CLI (``rlhfless/cli.py``)::

    from rlhfless.cost_models.cli import make_cost
    app.command("cost")(make_cost(beside))

``make_cost`` makes a plain typer command function (``beside(run_dir)`` prints more for a run
directory: the top-level CLI passes the estimate beside the measured run); it calls :func:`cost_command`, which does the work,
returns an exit status (0 ok, 1 bad input, with the reason on stderr) and is what tests and other
tools call. Standalone, without the top-level CLI::

    python -m rlhfless.cost_models.cli run.billing.jsonl --model aws --model modal

Usage::

    rlhfless cost EVENTS.jsonl|RUN_DIR [--model NAME ...] [--prices FILE.toml ...] [--json]
                                       [--plot FILE.png] [--now SECONDS|end]

No ``--model``: every built-in model plus those the ``--prices`` files define that price every
device kind in the file (the others are named on stderr). A ``--prices`` file whose ``[model]
name`` is a built-in's replaces that built-in. A price row over 12 months old that the run's
device kinds use is named in a warning. An empty billing file is an error (exit 1): an
all-zero table would read as a free run.

``rlhfless prices [--model NAME] [--prices FILE]`` lists every table and row with its age.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.console import Console
from rich.markup import escape
from rich.text import Text

from rlhfless.cost_models.ages import stale_warnings
from rlhfless.cost_models.devices import normalise_device_kind
from rlhfless.cost_models.errors import CostModelError, NoInstanceFits
from rlhfless.cost_models.events import latest_time, read_billing_events
from rlhfless.cost_models.ledger import Ledger, LedgerResult
from rlhfless.cost_models.model import TableCostModel
from rlhfless.cost_models.registry import resolve_models
from rlhfless.cost_models.report import (
    breakdown_table,
    comparison_table,
    plot_costs,
    prices_table,
    results_json,
    table_title,
)
from rlhfless.runtime.messages import BillingEvent


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
        names = _split_names(models)
        chosen = resolve_models(names, prices or [])
        kinds = {normalise_device_kind(e.device_kind) for e in events}
        if not names:  # every model: those that price what the run used
            skipped = [m for m in chosen if not kinds <= set(m.rates())]
            chosen = [m for m in chosen if m not in skipped]
            for m in skipped:
                missing = ", ".join(sorted(kinds - set(m.rates())))
                _warn(err, f"{m.name} left out: it has no price for {missing}")
            if not chosen:
                raise CostModelError(
                    f"no cost model prices every device kind in the run ({', '.join(sorted(kinds))})"
                )
        for line in stale_warnings(chosen, kinds):
            _warn(err, line)
        cut = latest_time(events) if now == "end" else now
        results = _price_all(chosen, events, cut, err, skip_unpriceable=not names)
        plotted = _plot(results, plot, events_path) if plot is not None else None
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


def _price_all(
    chosen: list[TableCostModel],
    events: list[BillingEvent],
    cut: float | None,
    err: Console,
    skip_unpriceable: bool,
) -> list[LedgerResult]:
    """Each model's result; with ``skip_unpriceable`` (no model named), a model whose
    instances cannot hold the run's functions is left out with a warning instead of failing."""
    results = []
    for m in chosen:
        try:
            results.append(Ledger(m, events).result(cut))
        except NoInstanceFits as exc:
            if not skip_unpriceable:
                raise
            _warn(err, f"{m.name} left out: {exc}")
    if not results:
        raise CostModelError("no cost model could price this run (see the warnings above)")
    return results


def _warn(err: Console, text: str) -> None:
    err.print(Text.assemble(("warning: ", "bold yellow"), text), soft_wrap=True)


def prices_command(prices: list[Path] | None = None, model: list[str] | None = None) -> int:
    """Print every price table and row with its source and age; warn on rows over 12 months.
    Returns the exit status (0; 1 on a bad --prices file or an unknown --model)."""
    err = Console(stderr=True)
    try:
        chosen = resolve_models(_split_names(model or []), prices or [])
    except CostModelError as exc:
        err.print(Text.assemble(("error: ", "bold red"), str(exc)), soft_wrap=True)
        return 1
    out = Console(width=None if sys.stdout.isatty() else 200)
    for m in chosen:
        out.print(prices_table(m))
    stale = [line for m in chosen for line in stale_warnings([m], m.shapes)]
    for line in stale:
        _warn(err, line)
    return 0


def prices(
    prices: Annotated[
        list[Path] | None,
        typer.Option("--prices", help="Your own price file (TOML); defines or overrides a model."),
    ] = None,
    model: Annotated[
        list[str] | None,
        typer.Option("--model", "-m", help="Only these models (repeat or comma-separate)."),
    ] = None,
) -> None:
    """List every price table and row: price, billing rule, source and how old it is."""
    code = prices_command(prices, model)
    if code:
        raise typer.Exit(code)


def _plot(results: list[LedgerResult], path: Path, events_path: Path) -> Path:
    """``plot_costs``, with a path that cannot be written reported like any other bad input."""
    try:
        return plot_costs(results, path, f"Cost of {events_path.name}, by cost model")
    except OSError as exc:
        raise CostModelError(f"cannot write --plot {path}: {exc.strerror or exc}") from None


def _split_names(models: list[str] | None) -> list[str]:
    """``--model aws,gcp --model onprem`` -> ``["aws", "gcp", "onprem"]``."""
    return [n.strip() for m in models or [] for n in m.split(",") if n.strip()]


def _parse_now(value: str | None) -> float | Literal["end"] | None:
    if value is None:
        return None
    if value == "end":
        return "end"
    try:
        return float(value)
    except ValueError:
        raise typer.BadParameter(f"expected Unix seconds or 'end', got {value!r}") from None


RUN_BILLING = "billing.jsonl"  # the name a run directory holds its billing events under


def make_cost(beside: Callable[[Path], int] | None = None) -> Callable[..., None]:
    """``rlhfless cost``; ``beside(run_dir)``, where given, prints more about a run directory
    after its bill (the CLI wires the estimate beside the measured run) and returns a status."""

    def cost(
        events: Annotated[
            Path,
            typer.Argument(help="A run directory, or a billing-event JSONL file a run wrote."),
        ],
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
            typer.Option(
                "--prices", help="Your own price file (TOML); defines or overrides a model."
            ),
        ] = None,
        as_json: Annotated[
            bool, typer.Option("--json", help="Print JSON instead of tables.")
        ] = False,
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
        """Price a run's billing events under one or several cost models, side by side; for a
        run directory, also what was estimated beside what was measured."""
        run_dir = events if events.is_dir() else None
        path = events / RUN_BILLING if run_dir is not None else events
        code = cost_command(path, model or [], prices, as_json, plot, _parse_now(now))
        if not code and run_dir is not None and beside is not None and not as_json:
            code = beside(run_dir)
        if code:
            raise typer.Exit(code)

    return cost


cost = make_cost()


app = typer.Typer(add_completion=False, help="Price a run's billing events (rlhfless cost).")
app.command()(cost)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
