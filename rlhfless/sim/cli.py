"""``rlhfless simulate``: the lead registers it with ``app.command("simulate")(simulate)``.

    rlhfless simulate --nodes 20 --gpu h100 --model 7b --algo grpo --dataset gsm8k-like \\
        --cost aws,gcp,onprem --systems all --json out.json --plot out.png --sweep nodes=4,8,16
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, NoReturn

import msgspec
import typer
from rich.console import Console
from rich.progress import Progress

from rlhfless.cost_models import CostModelError
from rlhfless.sim.errors import BadSweep, SimError
from rlhfless.sim.estimate import JobSpec
from rlhfless.sim.hardware import get_gpu
from rlhfless.sim.interruptions import Interruptions
from rlhfless.sim.perf import startup_for
from rlhfless.sim.run import SimConfig, SimReport, resolve_systems
from rlhfless.sim.run import simulate as run_simulation
from rlhfless.sim.workload import Workload

SWEEP_KEYS = {"nodes": int, "batch": int, "model": str, "gpu": str}


def parse_sweep(text: str) -> tuple[str, list]:
    key, sep, values = text.partition("=")
    key = key.strip()
    if not sep or not values.strip():
        raise BadSweep(text, "missing '='")
    if key not in SWEEP_KEYS:
        raise BadSweep(text, f"unknown key {key!r}; known: {', '.join(SWEEP_KEYS)}")
    out = []
    for v in values.split(","):
        v = v.strip()
        if not v:
            raise BadSweep(text, "empty value")
        try:
            x = SWEEP_KEYS[key](v)
        except ValueError:
            raise BadSweep(text, f"{v!r} is not an integer") from None
        if isinstance(x, int) and x < 1:
            raise BadSweep(text, f"{v!r} must be >= 1")
        out.append(x)
    return key, out


def simulate_command(
    nodes: Annotated[int, typer.Option(min=1, help="nodes of --gpu")] = 20,
    gpus_per_node: Annotated[
        int, typer.Option(min=0, help="GPUs per node: 1, 2, 4, 8 (0: the instance's 8)")
    ] = 0,
    gpu: Annotated[str, typer.Option(help="h100, a100, l40s, l4, cpu-tiny")] = "h100",
    model: Annotated[
        str, typer.Option(help="0.5b 1.5b 3b 7b 14b 32b 70b tiny smollm2, or a config.json")
    ] = "7b",
    algo: Annotated[str, typer.Option(help="grpo or ppo")] = "grpo",
    dataset: Annotated[
        str, typer.Option(help="gsm8k-like, gpqa-like, livecodebench-like")
    ] = "gsm8k-like",
    cost: Annotated[str, typer.Option(help="cost models, comma separated")] = "aws,onprem",
    systems: Annotated[str, typer.Option(help="all, or a comma list")] = "all",
    iterations: Annotated[int, typer.Option(min=1)] = 4,
    batch: Annotated[int, typer.Option(min=1, help="prompts per iteration")] = 256,
    group: Annotated[int, typer.Option(min=0, help="samples per prompt (0: 8 GRPO, 1 PPO)")] = 0,
    seed: int = 0,
    trace: Annotated[Path | None, typer.Option(help="lengths JSONL to replay")] = None,
    prompt_len: Annotated[int, typer.Option(min=0, help="median prompt tokens (0: dataset)")] = 0,
    response_len: Annotated[
        int, typer.Option(min=0, help="median response tokens (0: dataset)")
    ] = 0,
    max_response: Annotated[int, typer.Option(min=0, help="generation limit (0: dataset)")] = 0,
    micro_batch: Annotated[int, typer.Option(min=1, help="sequences per micro-batch")] = 4,
    eager: Annotated[bool, typer.Option(help="rollout engines without CUDA graphs")] = False,
    keep_alive: Annotated[float, typer.Option(min=0)] = 300.0,
    train_gpus: Annotated[
        int,
        typer.Option(
            min=0,
            help="rlhfless's training gang: train.slots (0: the cheapest within 3% of the fastest)",
        ),
    ] = 0,
    spot_mtbi_hours: Annotated[
        float,
        typer.Option(min=0, help="spot: mean hours between reclaims of one node (0: none)"),
    ] = 0.0,
    json_out: Annotated[Path | None, typer.Option("--json", help="write results here")] = None,
    plot: Annotated[Path | None, typer.Option(help="write a PNG here")] = None,
    sweep: Annotated[str, typer.Option(help="KEY=V1,V2,... (nodes, batch, model, gpu)")] = "",
) -> None:
    """Simulate an RLHF job on a cluster under several systems and cost models."""
    console = Console(width=None if sys.stdout.isatty() else 160)  # never cut numbers in a pipe
    try:
        key, values = parse_sweep(sweep) if sweep else ("", [None])
        base = dict(nodes=nodes, gpu=gpu, model=model, batch=batch)
        costs = tuple(c.strip() for c in cost.split(",") if c.strip())
        names = resolve_systems(systems)
        workload = dict(
            algo=algo, dataset=dataset, group_size=group or (1 if algo == "ppo" else 8),
            iterations=iterations, seed=seed, trace=str(trace or ""), prompt_len=prompt_len,
            response_len=response_len, max_response=max_response, micro_batch=micro_batch,
        )  # fmt: skip
        cluster = dict(
            systems=names, costs=costs, gpus_per_node=gpus_per_node, eager=eager,
            train_gpus=train_gpus,
            interruptions=Interruptions(mtbi_hours=spot_mtbi_hours, seed=seed)
            if spot_mtbi_hours else None,
        )  # fmt: skip
        configs = [
            _point_config(dict(base, **({key: v} if key else {})), workload, cluster, keep_alive)
            for v in values
        ]
        reports = _run_points(configs, [f"{key}={v}" for v in values] if key else [], console)
    except (SimError, CostModelError) as exc:
        fail(str(exc), 2)
    from rlhfless.sim.report import plot as draw
    from rlhfless.sim.report import table, to_json

    for r in reports:
        console.print(table(r))
    if json_out:
        try:
            json_out.write_bytes(to_json(reports))
        except OSError as exc:
            fail(f"cannot write --json {json_out}: {exc.strerror or exc}", 1)
        console.print(f"wrote {json_out}", markup=False, highlight=False)
    if plot:
        try:
            draw(reports, plot)
        except OSError as exc:
            fail(f"cannot write --plot {plot}: {exc.strerror or exc}", 1)
        console.print(f"wrote {plot}", markup=False, highlight=False)


def _point_config(
    point: dict[str, Any], workload: dict[str, Any], cluster: dict[str, Any], keep_alive: float
) -> SimConfig:
    """One configuration of a run or a sweep: ``point`` holds nodes, gpu, model and batch."""
    return SimConfig(
        nodes=point["nodes"], gpu=point["gpu"], model=point["model"],
        workload=Workload(batch_prompts=point["batch"], **workload),
        startup=msgspec.structs.replace(
            startup_for(get_gpu(str(point["gpu"]))), keep_alive_seconds=keep_alive
        ),
        **cluster,
    )  # fmt: skip


def _run_points(configs: list[SimConfig], labels: list[str], console: Console) -> list[SimReport]:
    """Simulate each configuration; a sweep shows its progress: a bar on a terminal, elsewhere
    a line per point on stderr (a large cluster's point can take minutes)."""
    if not labels:
        return [run_simulation(c) for c in configs]
    reports = []
    with Progress(console=console, transient=True, disable=not console.is_terminal) as bar:
        task = bar.add_task("simulating", total=len(configs))
        for i, (cfg, label) in enumerate(zip(configs, labels, strict=True)):
            t0 = time.perf_counter()
            reports.append(run_simulation(cfg))
            bar.advance(task)
            if not console.is_terminal:
                took = time.perf_counter() - t0
                typer.echo(f"simulated {label} ({i + 1}/{len(configs)}) in {took:.1f} s", err=True)
    return reports


def fail(message: str, code: int) -> NoReturn:
    """One plain line on stderr: messages hold ``[model]`` and ``[int, ...]``, which rich markup
    would eat (or fail on, for ``[/x]``)."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


simulate = simulate_command  # the name the lead registers


def make_estimate(load_job: Callable[[Path | None, list[str]], JobSpec]) -> Callable[..., None]:
    """``rlhfless estimate``; ``load_job`` reads a config (stages' loader, wired by the CLI)."""

    def estimate_command(
        config: Annotated[
            Path | None, typer.Argument(help="TOML config; omit for the default")
        ] = None,
        set_: Annotated[list[str] | None, typer.Option("--set", help="key=value override")] = None,
        cost: Annotated[
            str, typer.Option(help="cost models, comma separated")
        ] = "aws,gcp,modal,onprem",
        history: Annotated[
            Path | None,
            typer.Option(help="an earlier run's directory: its lengths and stage times"),
        ] = None,
        run: Annotated[
            Path | None,
            typer.Option(help="a finished run of this config: estimate beside measured"),
        ] = None,
        json_out: Annotated[
            Path | None, typer.Option("--json", help="write the estimate here")
        ] = None,
        gpu: Annotated[
            str, typer.Option(help="simulate on this GPU instead (h100, a100, l40s, l4)")
        ] = "",
        nodes: Annotated[int, typer.Option(min=1, help="with --gpu: nodes")] = 1,
        gpus_per_node: Annotated[int, typer.Option(min=0, help="with --gpu: GPUs per node")] = 0,
    ) -> None:
        """Predict a job's time and cost per iteration and in all, per cost model, as a range."""
        from rlhfless.sim.estimate import estimate, read_run
        from rlhfless.sim.estimate_gpu import estimate_gpu
        from rlhfless.sim.report import estimate_table

        try:
            job = load_job(config, list(set_ or []))
            if gpu:
                job = msgspec.structs.replace(
                    job, device=gpu, device_kind=get_gpu(gpu).device_kind, nodes=nodes,
                    gpus_per_node=gpus_per_node,
                )  # fmt: skip
            earlier = read_run(history) if history else None
            costs = [c.strip() for c in cost.split(",") if c.strip()]
            est = (estimate_gpu if gpu else estimate)(job, costs, earlier)
            measured = read_run(run) if run else None
        except (SimError, CostModelError) as exc:
            fail(str(exc), 2)
        Console(width=None if sys.stdout.isatty() else 160).print(
            estimate_table(est, job, measured)
        )
        if json_out:
            try:
                json_out.write_bytes(msgspec.json.encode(est))
            except OSError as exc:
                fail(f"cannot write --json {json_out}: {exc.strerror or exc}", 1)

    return estimate_command


if __name__ == "__main__":
    typer.run(simulate_command)
