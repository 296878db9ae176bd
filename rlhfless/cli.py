"""The ``rlhfless`` command. Each subcommand lives with its package; this file only wires them."""

from __future__ import annotations

import typer

from rlhfless.cost_models.cli import cost
from rlhfless.runtime.cli import agent, keys_init, launch
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


keys_app = typer.Typer(help="CURVE keys for links between machines.", no_args_is_help=True)
keys_app.command("init")(keys_init)
app.add_typer(keys_app, name="keys")
app.command("agent")(agent)
app.command("launch", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(
    launch
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
