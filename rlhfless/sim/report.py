"""Showing a simulation: a rich table, JSON, and a PNG (time and cost; a busy/idle timeline)."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
from rich.table import Table

from rlhfless.sim.estimate import Earlier, Estimate, JobSpec, Range
from rlhfless.sim.run import SimReport


def usd(x: float) -> str:
    """Dollars with 3 significant digits (a small job is $0.000216, never $0.00)."""
    if x == 0:
        return "$0"
    return f"${x:,.2f}" if abs(x) >= 100 else f"${x:.3g}"


def span(r: Range, fmt: Callable[[float], str] = lambda x: f"{x:.3g}") -> str:
    return f"{fmt(r.low)} - {fmt(r.high)} (mid {fmt(r.mid)})"


def estimate_table(est: Estimate, job: JobSpec, measured: Earlier | None = None) -> Table:
    """Predicted ranges; with ``measured``, what the run measured and predicted mid / measured."""
    model = job.model_profile.name if job.model_profile else job.model
    t = Table(title=f"estimate: {job.algo} {model}, {job.iterations} iterations of "
              f"{job.batch_prompts} x {job.group_size} ({est.basis})")  # fmt: skip
    cols = ["quantity", "predicted"] + (["measured", "mid / measured"] if measured else [])
    for c in cols:
        t.add_column(c, justify="right")

    def row(
        name: str, r: Range | None, got: float | None,
        fmt: Callable[[float], str] = lambda x: f"{x:.3g} s",
    ) -> None:  # fmt: skip
        cells = [name, "n/a" if r is None else span(r, fmt)]
        if measured:
            ratio = f"{r.mid / got:.2f}" if got and r is not None else "-"
            cells += ["-" if got is None else fmt(got), ratio]
        t.add_row(*cells)

    m = measured
    steady = statistics.median(m.seconds[1:]) if m and len(m.seconds) > 1 else None
    row("s / iteration (steady)", est.iteration_seconds, steady)
    row("job seconds", est.job_seconds, m.wall_seconds if m else None)
    for p in est.priced:
        total, serverful = m.dollars(p.cost_model) if m else (None, None)
        row(f"$ {p.cost_model} serverless (job)", p.serverless_usd, total, usd)
        row(f"$ {p.cost_model} serverful (job)", p.serverful_usd, serverful, usd)
    if est.gang is not None:
        gang_rows(t, est, job, bool(measured))
    return t


def gang_rows(t: Table, est: Estimate, job: JobSpec, measured: bool) -> None:
    """The job on the gang the simulator chooses, central values beside the config's."""
    g = est.gang
    assert g is not None
    pad = ["-", "-"] if measured else []
    t.add_row(
        f"train GPUs chosen (train.slots = {job.train_slots})", gang_range(g.train_gpus), *pad
    )
    t.add_row("s / iteration (steady), chosen gang", f"{g.iteration_seconds:.3g} s", *pad)
    for m, d in g.usd.items():
        t.add_row(f"$ {m} serverless (job), chosen gang", "n/a" if d is None else usd(d), *pad)


def table(report: SimReport, title: str = "") -> Table:
    c = report.config
    costs = list(c.costs)
    t = Table(
        title=title
        or f"{c.workload.algo} {c.model} on {c.nodes} x {report.gpus // c.nodes} {c.gpu} "
        f"(tp {report.tp}), {c.workload.dataset if not c.workload.trace else 'trace'}, "
        f"{c.workload.batch_prompts} x {c.workload.group_size} samples"
    )
    spot = c.interruptions is not None
    cols = ["system", "s/iter", "speedup", "train GPUs", "GPU-h busy", "GPU-h idle", "GPU-h cold"]
    for col in cols + (["reclaims", "GPU-h lost"] if spot else []):
        t.add_column(col, justify="right")
    for m in costs:
        t.add_column(f"$ {m} job (saved vs colo)", justify="right")
        t.add_column(f"$ {m} / steady iteration", justify="right")
    base = report.systems.get("serverful-colocated")
    for name, s in report.systems.items():
        row = [
            name,
            f"{s.mean_iteration_seconds:.2f}",
            f"{base.mean_iteration_seconds / s.mean_iteration_seconds:.2f}x" if base else "-",
            gang_range(s.train_gpus),
            f"{s.busy_gpu_hours:.3f}",
            f"{s.idle_gpu_hours:.3f}",
            f"{s.cold_gpu_hours:.3f}",
        ]
        if spot:
            row += [str(s.interruptions), f"{s.lost_gpu_hours:.3f}"]
        for m in costs:
            row.append(cost_cell(s.usd.get(m), base.usd.get(m) if base else None))
            row.append(cost_cell(s.steady_usd.get(m), base.steady_usd.get(m) if base else None))
        t.add_row(*row)
    return t


def cost_cell(dollars: float | None, ref: float | None) -> str:
    """Dollars and, where the baseline's ``ref`` is not zero, the reduction against it."""
    if dollars is None:
        return "n/a"
    return f"{usd(dollars)} ({1 - dollars / ref:+.1%})" if ref else usd(dollars)


def gang_range(gpus: list[int]) -> str:
    """The training gangs of a run's iterations: one number, or the least and the most."""
    lo, hi = min(gpus, default=0), max(gpus, default=0)
    return str(lo) if lo == hi else f"{lo}-{hi}"


def to_json(reports: list[SimReport]) -> bytes:
    return msgspec.json.format(msgspec.json.encode(reports), indent=1)


SYSTEM_COLOURS = {  # one colour per system, the same in every panel
    "serverful-colocated": "tab:blue",
    "serverful-fused": "tab:orange",
    "rlhfless": "tab:green",
    "rlhfless-staged": "tab:purple",
}
# Timeline states in greys, so no state shares a colour with a system.
STATE_COLOURS = {"busy": "#303030", "idle": "#d9d9d9", "cold": "#8c8c8c"}
SWEPT = ("nodes", "gpu", "model")


def swept_key(reports: list[SimReport]) -> str:
    """The setting that differs between the reports (a sweep), or "" for one configuration."""
    for key in SWEPT:
        if len({getattr(r.config, key) for r in reports}) > 1:
            return key
    if len({r.config.workload.batch_prompts for r in reports}) > 1:
        return "batch"
    return ""


def plot(reports: list[SimReport], path: str | Path) -> None:
    """Time and cost per system — bars for one configuration, lines over a sweep — and one
    steady iteration's timeline of the last configuration (busy / idle / cold per function)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(18, 5.5), gridspec_kw={"width_ratios": [1, 1.3, 1.4]})
    key = swept_key(reports)
    if key:
        _sweep_lines(axes[0], axes[1], reports, key)
    else:
        _bars(axes[0], axes[1], reports[0])
    _timeline(axes[2], reports[-1])
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _bars(ax_t: Any, ax_c: Any, r: SimReport) -> None:
    names = list(r.systems)
    colours = [SYSTEM_COLOURS.get(n, "tab:gray") for n in names]
    secs = [r.systems[n].mean_iteration_seconds for n in names]
    bars = ax_t.bar(range(len(names)), secs, color=colours)
    ax_t.bar_label(bars, labels=[f"{x:.3g} s" for x in secs], fontsize=8)
    ax_t.set_xticks(range(len(names)), names, rotation=20, ha="right", fontsize=8)
    ax_t.set(ylabel="seconds per iteration (steady)", title="time per iteration")
    costs = list(r.config.costs)
    width = 0.8 / max(len(names), 1)
    for i, n in enumerate(names):
        xs = [c + (i - (len(names) - 1) / 2) * width for c in range(len(costs))]
        ys = [r.systems[n].usd.get(m) or 0.0 for m in costs]
        b = ax_c.bar(xs, ys, width, color=SYSTEM_COLOURS.get(n, "tab:gray"), label=n)
        ax_c.bar_label(b, labels=[usd(y) for y in ys], fontsize=6, padding=1)
    ax_c.set_xticks(range(len(costs)), costs)
    ax_c.set(ylabel="USD for the whole job", title="cost per cost model (linear axis)")
    ax_c.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=2)


def _sweep_lines(ax_t: Any, ax_c: Any, reports: list[SimReport], key: str) -> None:
    def value(r: SimReport) -> object:
        return r.config.workload.batch_prompts if key == "batch" else getattr(r.config, key)

    xs = [str(value(r)) for r in reports]
    styles = ["-", "--", ":", "-."]
    for n in reports[-1].systems:
        colour = SYSTEM_COLOURS.get(n, "tab:gray")
        ax_t.plot(xs, [r.systems[n].mean_iteration_seconds for r in reports], "o-",
                  color=colour, label=n)  # fmt: skip
        for j, m in enumerate(reports[-1].config.costs):
            ys = [r.systems[n].usd.get(m) or float("nan") for r in reports]
            ax_c.plot(xs, ys, marker="o", linestyle=styles[j % 4], color=colour, label=f"{n}, {m}")
    ax_t.set(xlabel=key, ylabel="seconds per iteration (steady)", title="time per iteration")
    ax_c.set(xlabel=key, ylabel="USD for the whole job (linear axis)",
             title="cost (line style: cost model)")  # fmt: skip
    ax_t.legend(fontsize=7)
    ax_c.legend(fontsize=6, ncol=2)


def _timeline(ax: Any, r: SimReport) -> None:
    from matplotlib.patches import Patch

    y, ticks, labels = 0.0, [], []
    total = sum(len({sp.row for sp in s.timeline}) for s in r.systems.values())
    for name, s in r.systems.items():
        count = len({sp.row for sp in s.timeline})
        h = max(1.0, 0.15 * total / max(count, 1))  # a few-function system still gets room
        rows: dict[str, float] = {}
        t0 = min((sp.start for sp in s.timeline), default=0.0)
        first = y
        for sp in s.timeline:
            if sp.row not in rows:
                rows[sp.row] = y
                y += h
            ax.barh(rows[sp.row], sp.end - sp.start, left=sp.start - t0, height=h,
                    color=STATE_COLOURS[sp.kind], linewidth=0)  # fmt: skip
        if rows:
            ticks.append((first + y - h) / 2)
            labels.append(f"{name}\n({len(rows)} functions)")
            ax.axhline(y - h / 2 + 0.5, color=SYSTEM_COLOURS.get(name, "tab:gray"), linewidth=2)
        y += 2
    ax.set_yticks(ticks, labels, fontsize=7)
    ax.invert_yaxis()
    ax.set(xlabel="seconds into one steady iteration",
           title="one iteration: a row per function, a line per system")  # fmt: skip
    ax.legend(handles=[Patch(color=c, label=k) for k, c in STATE_COLOURS.items()],
              fontsize=7, loc="lower right")  # fmt: skip
