"""The ``rlhfless`` command. Each subcommand lives with its package; this file only wires them."""

from __future__ import annotations

import logging
import sys
import threading
from typing import Annotated, Any

import typer
from typer.core import TyperArgument

from rlhfless.cost_models.cli import make_cost, prices
from rlhfless.runtime.cli import agent, keys_init, launch
from rlhfless.runtime.procutil import exit_now
from rlhfless.sim.cli import make_estimate, simulate
from rlhfless.stages.cli import config_reference, train
from rlhfless.stages.estimate import estimate_beside, load_job
from rlhfless.stages.timeline import timeline_command

HELP_OPTIONS = ["-h", "--help"]

app = typer.Typer(
    name="rlhfless",
    help="Serverless RLHF: every stage runs in on-demand function processes, priced by cost models.",
    no_args_is_help=True,
    add_completion=False,
    context_settings={"help_option_names": HELP_OPTIONS},  # subcommands inherit it
)
app.command("train")(train)
app.command(
    "simulate", help="Replay RLHF jobs on a simulated cluster; compare systems and cost models."
)(simulate)
app.command(
    "estimate", help="Predict a job's time and dollars per cost model, before (or beside) a run."
)(make_estimate(load_job))
app.command(
    "cost",
    help="Price a run's billing events under one or several cost models; for a run directory, "
    "also the estimate beside what was measured.",
)(make_cost(estimate_beside))
app.command("prices", help="List every price table and row with its source and age.")(prices)
app.command("config")(config_reference)
app.command("timeline")(timeline_command)


keys_app = typer.Typer(help="CURVE keys for links between machines.", no_args_is_help=True)
keys_app.command("init")(keys_init)
app.add_typer(keys_app, name="keys")
app.command("agent")(agent)
app.command("launch", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(
    launch
)


def installed_version() -> str:
    from importlib.metadata import version as v

    return v("rlhfless")


def _print_version(value: bool) -> None:
    if value:
        typer.echo(installed_version())
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            "-V",
            callback=_print_version,
            is_eager=True,
            help="Print the installed version and exit.",
        ),
    ] = False,
) -> None:
    """Serverless RLHF: every stage runs in on-demand function processes, priced by cost models."""


@app.command("version")
def version() -> None:
    """Print the installed version."""
    typer.echo(installed_version())


# Help labels typer derives from Python annotations (`<list[str]>`, `<bool>`, `<path>`) say how
# the code is typed, not what to write: a user sees the conventional names instead, and none
# for a flag. (typer carries its own copy of click, so its parameter classes are typer's.)
_LABELS = {
    "str": "TEXT", "int": "INTEGER", "float": "NUMBER", "path": "PATH", "Path": "PATH",
    "int range": "INTEGER", "float range": "NUMBER",
}  # fmt: skip


def _plain_label(param: Any, ctx: Any) -> str | None:
    if getattr(param, "is_flag", False):
        return ""
    desc = getattr(param, "type_descriptor", None)
    if desc is None:
        return None
    if desc.is_choice:
        return "|".join(str(c.value if hasattr(c, "value") else c) for c in desc.choices or ())
    inner = param.display_type(ctx).strip("<>").removeprefix("list[").removesuffix("]")
    return _LABELS.get(inner)  # None: typer's own label


class _PlainArgument(TyperArgument):
    """An argument whose help shows its name (CONFIG) and a plain label (PATH): typer's own
    argument always shows its annotation's label, whatever its metavar."""

    plain_type: str | None = None

    def display_type_rich(self, ctx: Any) -> str | None:
        return self.plain_type if self.plain_type is not None else super().display_type_rich(ctx)


def plain_help_labels(command: Any) -> None:
    """Give every option and argument without a metavar of its own a plain one, in place."""
    ctx = typer.Context(command, help_option_names=HELP_OPTIONS)
    help_option = command.get_help_option(ctx)  # made once and kept by the command
    for param in [*command.params, *([help_option] if help_option is not None else [])]:
        if param.metavar is not None:
            continue
        label = _plain_label(param, ctx)
        if type(param) is TyperArgument:
            param.__class__ = _PlainArgument  # same state, the help method above
            param.plain_type = label
            param.metavar = (param.name or "").upper()
        elif label is not None:
            param.metavar = label
    for sub in getattr(command, "commands", {}).values():
        plain_help_labels(sub)


def command() -> Any:
    cmd = typer.main.get_command(app)
    plain_help_labels(cmd)
    return cmd


def main() -> None:
    try:
        command()(prog_name="rlhfless")
    except SystemExit as done:
        if _nothing_left_running(done.code):
            logging.shutdown()
            exit_now(done.code or 0)  # type: ignore[arg-type]  # an int or None here
        raise


def _nothing_left_running(code: object) -> bool:
    """Whether the command is over and nothing it started still runs, so the interpreter's
    teardown (about a second once torch is loaded: `rlhfless train` returned 1.2 s after its
    summary) can be skipped. Not with a thread that is not a daemon still running (a writer:
    a normal exit would wait for it), nor with Ray loaded (its driver disconnects at exit)."""
    if not (code is None or isinstance(code, int)) or "torch" not in sys.modules:
        return False
    if "ray" in sys.modules:
        return False
    main_thread = threading.main_thread()
    return not any(t is not main_thread and not t.daemon for t in threading.enumerate())


if __name__ == "__main__":
    main()
