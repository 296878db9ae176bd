"""Showing a simulation: a rich table, JSON, and a PNG (time and cost; a busy/idle timeline)."""

from __future__ import annotations

from pathlib import Path

import msgspec
from rich.table import Table

from rlhfless.sim.run import SimReport


def table(report: SimReport, title: str = "") -> Table:
    c = report.config
    costs = list(c.costs)
    t = Table(
        title=title
        or f"{c.workload.algo} {c.model} on {c.nodes} x {report.gpus // c.nodes} {c.gpu} "
        f"(tp {report.tp}), {c.workload.dataset if not c.workload.trace else 'trace'}, "
        f"{c.workload.batch_prompts} x {c.workload.group_size} samples"
    )
    for col in ("system", "s/iter", "speedup", "GPU-h busy", "GPU-h idle", "GPU-h cold"):
        t.add_column(col, justify="right")
    for m in costs:
        t.add_column(f"$ {m}", justify="right")
        t.add_column(f"saved vs colo {m}", justify="right")
    base = report.systems.get("serverful-colocated")
    for name, s in report.systems.items():
        row = [
            name,
            f"{s.mean_iteration_seconds:.2f}",
            f"{base.mean_iteration_seconds / s.mean_iteration_seconds:.2f}x" if base else "-",
            f"{s.busy_gpu_hours:.3f}",
            f"{s.idle_gpu_hours:.3f}",
            f"{s.cold_gpu_hours:.3f}",
        ]
        for m in costs:
            usd, ref = s.usd.get(m), base.usd.get(m) if base else None
            row.append("n/a" if usd is None else f"{usd:.2f}")
            row.append(f"{1 - usd / ref:+.1%}" if usd is not None and ref else "-")
        t.add_row(*row)
    return t


def to_json(reports: list[SimReport]) -> bytes:
    return msgspec.json.format(msgspec.json.encode(reports), indent=1)


def plot(reports: list[SimReport], path: str | Path) -> None:
    """Time and cost per system (and per sweep point), and one iteration's GPU timeline."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    last = reports[-1]
    systems = list(last.systems)
    costs = list(last.config.costs)
    fig, axes = plt.subplots(1, 3, figsize=(17, 5))
    xs = [r.config.nodes for r in reports]
    for name in systems:
        axes[0].plot(
            xs, [r.systems[name].mean_iteration_seconds for r in reports], "o-", label=name
        )
        for m in costs:
            ys = [r.systems[name].usd.get(m) or float("nan") for r in reports]
            axes[1].plot(xs, ys, "o-", label=f"{name} ({m})")
    axes[0].set(xlabel="nodes", ylabel="seconds per iteration", title="time")
    axes[1].set(xlabel="nodes", ylabel="USD for the job", title="cost", yscale="log")
    axes[0].legend(fontsize=7)
    axes[1].legend(fontsize=6)
    ax = axes[2]
    colours = {"busy": "tab:green", "idle": "tab:red", "cold": "tab:gray"}
    y = 0
    for name in systems:
        rows: dict[str, int] = {}
        spans = last.systems[name].timeline
        t0 = min((s.start for s in spans), default=0.0)
        for s in spans:
            if s.row not in rows:
                rows[s.row] = y
                y += 1
            ax.barh(
                rows[s.row], s.end - s.start, left=s.start - t0, color=colours[s.kind], height=1.0
            )
        ax.text(0, y, name, fontsize=8, va="bottom")
        y += 3
    ax.set(
        xlabel="seconds into one iteration",
        ylabel="functions (GPU slots)",
        title="busy (green) / idle (red) / cold (grey)",
    )
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
