"""A picture of an iteration: device slots over time, each function coloured by its stage.

Drawn from the run's billing events (``billing.jsonl``: every function's spawn request, READY,
calls, leases and release), so it shows what ran, not what was planned: a cold start (hatched),
the time a stage's function worked (solid), held but waiting (pale), and kept warm after its
release (grey). ``metrics.jsonl`` gives each iteration's start, so one iteration can be cut out.

    rlhfless timeline runs/default --iteration 5 -o timeline.png
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import msgspec
import typer

from rlhfless.runtime.messages import BillingEvent

STAGE_COLOURS = {  # one colour per stage, the same in every picture
    "rollout": "#1f77b4",
    "reward": "#2ca02c",
    "reference": "#9467bd",
    "critic": "#8c564b",
    "train": "#d62728",
}


class TimelineError(ValueError):
    """The run directory lacks what a timeline is drawn from."""


def read_run(run_dir: Path) -> tuple[list[BillingEvent], list[dict[str, Any]]]:
    billing, metrics = run_dir / "billing.jsonl", run_dir / "metrics.jsonl"
    if not billing.is_file() or not metrics.is_file():
        raise TimelineError(f"{run_dir} has no billing.jsonl and metrics.jsonl: is it a run dir?")
    events = [msgspec.json.decode(line, type=BillingEvent) for line in _lines(billing)]
    rows = [msgspec.json.decode(line) for line in _lines(metrics)]
    return events, rows


def _lines(path: Path) -> list[bytes]:
    return [line for line in path.read_bytes().splitlines() if line.strip()]


def window(rows: list[dict[str, Any]], iteration: int | None) -> tuple[float, float, str]:
    """(start, end, title) in Unix seconds of one iteration (default: the last one)."""
    timed = [r for r in rows if r.get("started_at")]
    if not timed:
        raise TimelineError("metrics.jsonl has no iteration start times (a run before 0.2?)")
    pick = (
        timed[-1]
        if iteration is None
        else next((r for r in timed if r["iteration"] == iteration), None)
    )
    if pick is None:
        raise TimelineError(f"no iteration {iteration} in metrics.jsonl")
    mode = "streamed" if pick.get("streamed") else "staged"
    title = f"iteration {pick['iteration']} ({mode}): {pick['seconds']:.2f} s"
    return pick["started_at"], pick["started_at"] + pick["seconds"], title


def segments(e: BillingEvent, t0: float, t1: float) -> list[tuple[float, float, str]]:
    """(start, end, kind) of one function inside [t0, t1]: cold, busy, held (leased, not
    busy) and warm (released, alive); seconds from t0."""
    out: list[tuple[float, float, str]] = []
    if e.ready_at is not None:
        out.append((e.requested_at, e.ready_at, "cold"))
    out += [(a, b, "held") for a, b in e.leases]
    out += [(a, b, "busy") for a, b in e.busy]
    end = e.exited_at or t1
    for (_, b), (a, _) in zip(e.leases, [*e.leases[1:], (end, end)], strict=True):
        out.append((b, a, "warm"))
    return [(max(a, t0) - t0, min(b, t1) - t0, k) for a, b, k in out if b > t0 and a < t1 and b > a]


def plot_timeline(
    events: Sequence[BillingEvent], start: float, end: float, title: str, path: Path
) -> Path:
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    rows = [(e, segments(e, start, end)) for e in events]
    rows = [(e, segs) for e, segs in rows if segs]  # one row per function alive in the window
    rows.sort(key=lambda r: (r[0].node, r[0].slot, min(a for a, _, _ in r[1])))
    fig = Figure(figsize=(10, 1.2 + 0.45 * len(rows)))
    ax = fig.add_subplot()
    style = {"held": 0.3, "busy": 1.0}
    for y, (e, segs) in enumerate(rows):
        colour = STAGE_COLOURS.get(e.stage, "#7f7f7f")
        for a, b, kind in segs:
            if kind == "cold":
                ax.barh(y, b - a, left=a, color="white", edgecolor=colour, hatch="///", height=0.6)
            elif kind == "warm":
                ax.barh(y, b - a, left=a, color="#dddddd", height=0.3)
            else:
                ax.barh(y, b - a, left=a, color=colour, alpha=style[kind], height=0.6)
    ax.set_yticks(range(len(rows)), [f"{e.node} slot {e.slot}: {e.stage}" for e, _ in rows])
    ax.invert_yaxis()
    ax.set_xlabel("seconds from the iteration's start")
    ax.set_xlim(0, end - start)
    ax.set_title(title)
    used = sorted(
        {e.stage for e in events if e.stage in STAGE_COLOURS}, key=list(STAGE_COLOURS).index
    )
    handles = [Patch(color=STAGE_COLOURS[s], label=f"{s} (working)") for s in used]
    handles += [
        Patch(color="#7f7f7f", alpha=0.3, label="held, waiting (pale stage colour)"),
        Patch(facecolor="white", edgecolor="#7f7f7f", hatch="///", label="cold start"),
        Patch(color="#dddddd", label="released, kept warm"),
    ]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def timeline(run_dir: Path, iteration: int | None, path: Path) -> Path:
    events, rows = read_run(run_dir)
    start, end, title = window(rows, iteration)
    return plot_timeline(events, start, end, title, path)


def timeline_command(
    run_dir: Annotated[Path, typer.Argument(help="a run directory (rlhfless train's --run-dir)")],
    iteration: Annotated[
        int | None, typer.Option("--iteration", "-i", help="which iteration (default: the last)")
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="PNG (default: RUN_DIR/timeline.png)")
    ] = None,
) -> None:
    """Draw one iteration as slots over time, coloured by stage (a PNG from billing.jsonl)."""
    try:
        path = timeline(run_dir, iteration, out or run_dir / "timeline.png")
    except (TimelineError, ImportError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"wrote {path}")
