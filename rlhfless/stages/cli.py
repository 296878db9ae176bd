"""``rlhfless train``: the standalone job with a progress bar and an end-of-run summary.

The job's modules (pipeline, runtime, torch) are imported inside :func:`train`: this module is
imported by every ``rlhfless`` command, and ``rlhfless keys init`` should not wait 2 s for torch.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import os
import re
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import msgspec
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Column, Table

from rlhfless.stages.config import Config, ConfigError, load_config, settings_given

if TYPE_CHECKING:
    from rlhfless.stages.pipeline import IterationMetrics
    from rlhfless.stages.run import Job

_ENUM = re.compile(r"^invalid value for key '(?P<key>[\w.]+)': Invalid enum value ")


def fail(message: str, code: int = 1) -> NoReturn:
    """One plain line on stderr (never rich markup: messages hold ``[train]``), then exit."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def user_errors() -> tuple[type[Exception], ...]:
    """Errors a user causes and can fix (bad input, a missing package, an unreachable agent):
    ``train`` prints their message, not a traceback. Anything else is a bug and keeps its
    traceback. Imported here, not at the top: ``handover`` and ``run`` import torch."""
    from rlhfless.adapters.errors import EngineError
    from rlhfless.adapters.tiny import TokenizerError
    from rlhfless.cost_models.errors import CostModelError
    from rlhfless.runtime.auth import KeyError_
    from rlhfless.runtime.ray_provider import RayProviderError
    from rlhfless.scaling.errors import ScalingError
    from rlhfless.stages.handover import HandOverError
    from rlhfless.stages.run import RunError
    from rlhfless.stages.tasks import TaskError

    return (
        ConfigError, RunError, EngineError, TaskError, HandOverError, TokenizerError,
        CostModelError, ScalingError, KeyError_, RayProviderError,
    )  # fmt: skip


def user_message(exc: BaseException, known: tuple[type[Exception], ...]) -> str | None:
    """The message to print for ``exc`` if it is a user's error, else None (keep the traceback).

    A function that raised one of ``known`` reaches us as RemoteError (a method raised) or
    ActorInitError (its ``__init__`` raised, e.g. EngineError "needs vLLM"): its inner message is
    the useful part. A SpawnError that is not a death (no agent answered, a node not up) is the
    cluster's state, which the user fixes.
    """
    from rlhfless.runtime.errors import ActorInitError, FunctionDied, RemoteError, SpawnError

    if isinstance(exc, known):
        return str(exc)
    if isinstance(exc, RemoteError | ActorInitError):
        remote = exc.remote_type
        message = exc.remote_message
        return message if _is_known_type(remote, known) else None
    if isinstance(exc, SpawnError) and not isinstance(exc, FunctionDied):
        return str(exc)
    return None


def _is_known_type(qualified: str, known: tuple[type[Exception], ...]) -> bool:
    """``"rlhfless.adapters.errors.EngineError"`` (as a function reports it) is one of ``known``
    or a subclass. Only rlhfless modules are imported to find out: they are ours and cheap."""
    module, _, name = qualified.rpartition(".")
    if not module.startswith("rlhfless."):
        return False
    try:
        cls = getattr(importlib.import_module(module), name, None)
    except ImportError:
        return False
    return isinstance(cls, type) and issubclass(cls, known)


def explain_config_error(message: str) -> str:
    """msgspec says ``Invalid enum value 'dpo'`` without the choices; name them."""
    m = _ENUM.match(message)
    if m is None:
        return message
    info: msgspec.inspect.Type = msgspec.inspect.type_info(Config)
    for part in m["key"].split("."):
        fields = {f.name: f.type for f in getattr(info, "fields", ())}
        if part not in fields:
            return message
        info = fields[part]
    options = info.types if isinstance(info, msgspec.inspect.UnionType) else (info,)
    values = [v for t in options if isinstance(t, msgspec.inspect.LiteralType) for v in t.values]
    return f"{message}; valid: {', '.join(map(str, values))}" if values else message


def check_dir(path: str, key: str) -> None:
    """A directory the run writes to (made if missing) must be one: fail before any work."""
    if os.path.exists(path) and not os.path.isdir(path):
        fail(f"{key} = {path!r} is a file, not a directory", 2)
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        fail(f"{key} = {path!r} cannot be used as a directory: {exc.strerror or exc}", 2)
    if not os.access(path, os.W_OK | os.X_OK):
        fail(f"{key} = {path!r} is not writable by this user", 2)


def _train_settings(
    config: Path | None, set_: list[str], resume: bool, run_dir: str | None, allow_changes: str
) -> tuple[Config, tuple[str, ...]]:
    """The run's config from the file and overrides (a resume's laid over its checkpoint's),
    and the settings --allow-changes lets differ; a bad one exits 2 naming it."""
    overrides = list(set_)
    if resume:
        overrides.append("run.resume=true")
    if run_dir:
        overrides.append(f"run.run_dir={run_dir!s}")
    try:
        cfg = load_config(config, overrides)
    except ConfigError as exc:
        fail(explain_config_error(str(exc)), 2)
    except UnicodeDecodeError as exc:
        fail(f"config file {config} is not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset "
             f"{exc.start})", 2)  # fmt: skip
    except OSError as exc:  # a directory, no permission: load_config handles only "missing"
        fail(f"cannot read config file {config}: {exc.strerror or exc}", 2)
    check_dir(cfg.run.run_dir, "run.run_dir")
    if cfg.checkpoint.dir:
        check_dir(cfg.checkpoint.dir, "checkpoint.dir")
    from rlhfless.stages.resume import check_allowance

    if allow_changes and not resume:
        fail("--allow-changes is for --resume (a fresh run has no earlier settings)", 2)
    try:
        allowed = check_allowance(allow_changes.split(","))
        if resume:
            cfg = resumed_config(cfg, config, overrides)
    except ConfigError as exc:
        fail(explain_config_error(str(exc)), 2)
    return cfg, allowed


def train(
    config: Annotated[
        Path | None, typer.Argument(help="TOML config; omit for the embedded default")
    ] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="override: key=value, e.g. train.lr=1e-3")
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="continue from the latest checkpoint")
    ] = False,
    run_dir: Annotated[
        str | None, typer.Option("--run-dir", help="where metrics, billing, checkpoints go")
    ] = None,
    allow_changes: Annotated[
        str,
        typer.Option(
            "--allow-changes",
            metavar="KEYS",
            help="with --resume: settings that change what is trained which may differ from the "
            "checkpoint's, comma-separated (e.g. train.lr,train.kl_coef)",
        ),
    ] = "",
) -> None:
    """Run synchronous RLHF (GRPO or PPO); every stage runs in functions started on demand.

    --resume keeps the run's settings: the checkpoint's config, with only what you give (a config file, --set) laid over it. A change to what is trained is refused unless named in --allow-changes; every change is recorded in RUN_DIR/changes.jsonl. `rlhfless config` lists every setting.
    """  # one line per paragraph: the help keeps a docstring's line breaks
    cfg, allowed = _train_settings(config, set_ or [], resume, run_dir, allow_changes)
    known = user_errors()  # imports the job's modules (torch) once the config is known good
    from rlhfless.stages.run import Job, NothingToDo

    console = Console(stderr=True)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("rlhfless.samples").setLevel(logging.INFO)  # run.show_samples_every
    progress = ProgressReport(
        console, f"{cfg.train.algo} on {cfg.model.kind}", cfg.train.iterations
    )
    job = Job(cfg, progress.iteration, allowed)
    if cfg.run.resume:  # the count starts where the checkpoint is, not at 0
        with contextlib.suppress(Exception):  # the job itself reports a missing checkpoint
            progress.start_at(job.checkpoints.meta()["next_iteration"])
    try:
        with progress:
            summary = asyncio.run(job.run())
    except NothingToDo as exc:
        # Exit 0: the run already has what was asked for, so a script that re-runs
        # `train --resume` until it succeeds (after a preemption, say) ends here, not in a loop.
        typer.echo(str(exc), err=True)
        return
    except KeyboardInterrupt:
        typer.echo(interrupted_message(job, cfg.run.run_dir), err=True)
        raise typer.Exit(130) from None  # 128 + SIGINT, as a shell reports a Ctrl-C'd command
    except Exception as exc:
        message = user_message(exc, known)
        if message is None:
            raise  # a bug: its traceback is what a report needs
        fail(message, 1)
    print_summary(Console(), summary, cfg.run.run_dir)


def iteration_detail(m: IterationMetrics) -> str:
    """Reward, response length and each stage's seconds (whatever stages the iteration had)."""
    stages = " ".join(f"{k} {v:.2f}s" for k, v in m.stage_seconds.items())
    return f"reward {m.reward_mean:.3f}  len {m.response_len_mean:.1f}  {stages}"


class ProgressReport:
    """Progress of a run on stderr. On a terminal, a bar whose counter and elapsed time come
    first, so an 80-column terminal cuts the detail, not them. Anywhere else (a file, a pipe, a
    CI log), one plain line per iteration as it ends, flushed, so a log shows the run while it
    runs."""

    def __init__(self, console: Console, title: str, total: int) -> None:
        self.console = console
        self.total = total
        self.done = 0
        self.t0 = time.monotonic()
        self.live = console.is_terminal
        counter = 2 * len(str(total)) + 1
        # Fixed widths for what must stay; the detail takes what is left (ratio) and is cut.
        self.bar = Progress(
            TextColumn("[bold]{task.description}", table_column=Column(no_wrap=True)),
            BarColumn(bar_width=16),
            MofNCompleteColumn(table_column=Column(min_width=counter, no_wrap=True)),
            TimeElapsedColumn(table_column=Column(min_width=7, no_wrap=True)),
            TextColumn(
                "{task.fields[info]}",
                table_column=Column(ratio=1, no_wrap=True, overflow="ellipsis"),
            ),
            console=console, disable=not self.live, expand=True,
        )  # fmt: skip
        self.task = self.bar.add_task(title, total=total, info="starting")

    def start_at(self, iteration: int) -> None:
        self.done = min(iteration, self.total)
        self.bar.update(self.task, completed=self.done)

    def iteration(self, m: IterationMetrics) -> None:
        self.done = m.iteration + 1
        detail = iteration_detail(m)
        if self.live:
            self.bar.update(self.task, completed=self.done, info=detail)
            return
        elapsed = time.monotonic() - self.t0
        width = len(str(self.total))
        line = f"iteration {self.done:>{width}}/{self.total}  {elapsed:7.1f}s  {detail}"
        print(line, file=sys.stderr, flush=True)

    def __enter__(self) -> ProgressReport:
        self.bar.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.__exit__(None, None, None)


def resumed_config(cfg: Config, path: Path | None, overrides: list[str]) -> Config:
    """The checkpoint's settings with the ones given laid over them (stages/resume.py). Without
    a readable checkpoint ``cfg`` stays as given: the job reports what is missing."""
    from rlhfless.stages.resume import keep_run_settings
    from rlhfless.stages.run import Checkpoints, RunError

    root = Path(cfg.checkpoint.dir or Path(cfg.run.run_dir) / "checkpoints")
    try:
        saved = Checkpoints(root, cfg.checkpoint.keep).meta().get("config", {})
    except (RunError, OSError, ValueError):
        return cfg
    return keep_run_settings(saved, settings_given(path, overrides), cfg)


def config_reference() -> None:
    """Print every setting of `train`: default, accepted values, meaning (docs/config.md)."""
    from rlhfless.stages import config_doc

    typer.echo(config_doc.config_reference(), nl=False)


def interrupted_message(job: Job, run_dir: str) -> str:
    """One line after Ctrl-C: where the run stopped and how to continue it (if it can)."""
    stopped = f"interrupted at iteration {job.next_iteration} of {job.cfg.train.iterations}"
    if not job.cfg.run.resume and job.next_iteration == 0:
        # A fresh run with no iteration done keeps nothing (an earlier run's checkpoint may be
        # back in place, but resuming it would not continue what was just stopped).
        return f"{stopped}; no iteration completed, nothing of this run was kept"
    try:
        latest = job.checkpoints.latest()
    except Exception:  # a half-written pointer: say nothing about it rather than fail here
        latest = None
    if latest is None:
        return f"{stopped}; no checkpoint was written, so a new run starts from iteration 0"
    return (
        f"{stopped}; latest checkpoint {latest}; `rlhfless train --resume --run-dir {run_dir}` "
        "(with the same settings) continues from it"
    )


def cost_row(d: dict) -> str:
    """Total, then the parts that add up to it. Older summaries have no ``cold_start`` key: it
    is what the total holds beyond busy and idle (the cost models' usd = busy + idle + cold)."""
    cold = d.get("cold_start")
    if cold is None:
        cold = max(0.0, d["total"] - d["busy"] - d["idle"])  # never print rounding as -$0.000000
    return (
        f"${d['total']:.6f} (busy ${d['busy']:.6f}, idle ${d['idle']:.6f}, "
        f"cold start ${cold:.6f}); serverful ${d['serverful']:.6f}"
    )


def print_summary(console: Console, s: dict, run_dir: str) -> None:
    # Cells are rich markup: every string from outside (paths, error text, names) is escaped.
    table = Table(title="rlhfless train: summary", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    if s["reward_first"] is not None:
        table.add_row(
            "reward", f"{s['reward_first']:.3f} (first {s['window']} iterations) -> "
            f"{s['reward_last']:.3f} (last {s['window']})",
        )  # fmt: skip
    session = s.get("session", {})
    resumed = bool(session.get("resumed"))
    if resumed and s["iterations"]:  # this session's part of a longer run: say so
        first, total = session["first_iteration"], session["run_iterations"]
        done = f"{first}-{total - 1} of {total} (this session)"
    else:
        done = str(s["iterations"])
    table.add_row("iterations / wall time", f"{done} / {s['seconds']:.1f} s")
    stages = ", ".join(f"{k} {v:.1f}s" for k, v in s["stage_seconds"].items())
    if "iteration_seconds" in s:  # older summaries lack it
        stages += f" (of {s['iteration_seconds']:.1f}s in iterations)"
    table.add_row("time per stage", escape(stages))
    cold = (
        f"{s['cold_start_median_s']:.2f}s median" if s["cold_start_median_s"] is not None else "-"
    )
    table.add_row("functions started (cold)", f"{s['functions_started']} ({cold})")
    table.add_row("warm starts", str(s["warm_starts"]))
    table.add_row("deaths / re-runs", f"{s['deaths']} / {s['retries']}")
    scope = ", this session" if resumed else ""
    for name, d in s["dollars"].items():
        table.add_row(escape(f"cost ({name}{scope})"), cost_row(d))
    if "dollars_error" in s:
        table.add_row(f"cost{scope}", escape(f"not priced: {s['dollars_error']}"))
    for name, d in s.get("dollars_run", {}).items():
        table.add_row(escape(f"cost ({name}, whole run)"), cost_row(d))
    if "dollars_run_error" in s:
        table.add_row("cost, whole run", escape(f"not priced: {s['dollars_run_error']}"))
    table.add_row(
        "run directory",
        escape(f"{run_dir} (metrics.jsonl, billing.jsonl, checkpoints/, summary.json)"),
    )
    console.print(table)
