"""The ``rlhfless`` command. Each subcommand lives with its package; this file only wires them."""

from __future__ import annotations

import typer

from rlhfless.cost_models.cli import cost
from rlhfless.sim.cli import simulate
from rlhfless.stages.cli import train

app = typer.Typer(
    name="rlhfless",
    help="Serverless RLHF: every stage runs in on-demand function processes, priced by cost models.",
    no_args_is_help=True,
    add_completion=False,
)
app.command("train")(train)
app.command(
    "simulate", help="Replay RLHF jobs on a simulated cluster; compare systems and cost models."
)(simulate)
app.command("cost", help="Price a run's billing events (JSONL) under one or several cost models.")(
    cost
)


@app.command("version")
def version() -> None:
    """Print the installed version."""
    from importlib.metadata import version as v

    typer.echo(v("rlhfless"))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
