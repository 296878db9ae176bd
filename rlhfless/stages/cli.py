"""``rlhfless train``: the standalone job with a progress bar and an end-of-run summary."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from rlhfless.stages.config import ConfigError, load_config
from rlhfless.stages.pipeline import IterationMetrics
from rlhfless.stages.run import Job, RunError


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
) -> None:
    """Run synchronous RLHF (GRPO or PPO); every stage runs in functions started on demand."""
    console = Console(stderr=True)
    overrides = list(set_ or [])
    if resume:
        overrides.append("run.resume=true")
    if run_dir:
        overrides.append(f"run.run_dir={run_dir!s}")
    try:
        cfg = load_config(config, overrides)
    except ConfigError as exc:
        console.print(f"[red]config error:[/red] {exc}")
        raise typer.Exit(2) from None
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    progress = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=console,
    )  # fmt: skip
    task = progress.add_task(
        f"{cfg.train.algo} on {cfg.model.kind}", total=cfg.train.iterations, info="starting"
    )

    def on_iteration(m: IterationMetrics) -> None:
        st = m.stage_seconds
        info = (
            f"reward {m.reward_mean:.3f}  len {m.response_len_mean:.1f}  "
            f"rollout {st.get('rollout', 0):.2f}s score {st.get('score', 0):.2f}s train {st.get('train', 0):.2f}s"
        )
        progress.update(task, completed=m.iteration + 1, info=info)

    job = Job(cfg, on_iteration)
    try:
        with progress:
            summary = asyncio.run(job.run())
    except RunError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None
    print_summary(Console(), summary, cfg.run.run_dir)


def print_summary(console: Console, s: dict, run_dir: str) -> None:
    table = Table(title="rlhfless train: summary", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    if s["reward_first"] is not None:
        table.add_row(
            "reward", f"{s['reward_first']:.3f} (first {s['window']} iterations) -> "
            f"{s['reward_last']:.3f} (last {s['window']})",
        )  # fmt: skip
    table.add_row("iterations / wall time", f"{s['iterations']} / {s['seconds']:.1f} s")
    table.add_row(
        "time per stage", ", ".join(f"{k} {v:.1f}s" for k, v in s["stage_seconds"].items())
    )
    cold = (
        f"{s['cold_start_median_s']:.2f}s median" if s["cold_start_median_s"] is not None else "-"
    )
    table.add_row("functions started (cold)", f"{s['functions_started']} ({cold})")
    table.add_row("warm starts", str(s["warm_starts"]))
    table.add_row("deaths / re-runs", f"{s['deaths']} / {s['retries']}")
    for name, d in s["dollars"].items():
        table.add_row(
            f"cost ({name})", f"${d['total']:.6f} (busy ${d['busy']:.6f}, idle ${d['idle']:.6f}); "
            f"serverful ${d['serverful']:.6f}",
        )  # fmt: skip
    if "dollars_error" in s:
        table.add_row("cost", f"not priced: {s['dollars_error']}")
    table.add_row(
        "run directory", f"{run_dir} (metrics.jsonl, billing.jsonl, checkpoints/, summary.json)"
    )
    console.print(table)
