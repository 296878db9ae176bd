"""Does a real model learn? Reward over iterations of a config, over several seeds.

Runs ``rlhfless train CONFIG --set run.seed=S --set run.run_dir=OUT/seed-S`` for each seed one
after another (or, with ``--read``, reads run dirs that already exist), then writes
``OUT/learning.png`` (reward per iteration, one colour per seed, their mean in black),
``OUT/learning.json`` and prints a table: per seed the iterations, the mean reward of the first
and of the last 5 iterations, the minutes the run took and the machine's load (1-minute
average at the start and at the end of the run, from /proc/loadavg: other work on the machine
slows a run down).

    python benchmarks/learning.py configs/smollm2-learn.toml --seeds 0 1 2 --out runs/learning
    python benchmarks/learning.py --read runs/learning/seed-0 runs/learning/seed-1 --out runs/x
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

WINDOW = 5  # iterations averaged at the start and at the end of a run
TIMING = "learning-timing.json"  # a run's wall minutes and load, beside its metrics


def load() -> float:
    return os.getloadavg()[0]


def train(config: str, seed: int, run_dir: Path, extra: list[str]) -> dict[str, Any]:
    """One seed's run, its wall time and the load around it."""
    cmd = [
        sys.executable, "-m", "rlhfless.cli", "train", config,
        "--set", f"run.seed={seed}", "--set", f"run.run_dir={run_dir}",
    ]  # fmt: skip
    for item in extra:
        cmd += ["--set", item]
    load0, t0 = load(), time.time()
    print(f"seed {seed}: {' '.join(cmd[2:])} (load {load0:.1f})", file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True)
    timing = {"minutes": (time.time() - t0) / 60, "load_start": load0, "load_end": load()}
    (run_dir / TIMING).write_text(json.dumps(timing))  # for --read later
    return timing


def read_timing(run_dir: Path) -> dict[str, Any]:
    """What train() recorded for a run dir, or its summary's wall time (load unknown)."""
    if (run_dir / TIMING).is_file():
        timing: dict[str, Any] = json.loads((run_dir / TIMING).read_text())
        return timing
    if (run_dir / "summary.json").is_file():
        return {"minutes": json.loads((run_dir / "summary.json").read_text())["seconds"] / 60}
    return {}


def read_rewards(run_dir: Path) -> list[float]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise SystemExit(f"{run_dir} has no metrics.jsonl: not a run directory")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [float(r["reward_mean"]) for r in sorted(rows, key=lambda r: r["iteration"])]


def row(name: str, rewards: list[float], timing: dict[str, Any]) -> dict[str, Any]:
    k = min(WINDOW, len(rewards))
    return {
        "run": name,
        "iterations": len(rewards),
        "first": statistics.fmean(rewards[:k]),
        "last": statistics.fmean(rewards[-k:]),
        "rewards": rewards,
        **timing,
    }


def plot(rows: list[dict[str, Any]], title: str, path: Path) -> None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    colours = [f"C{i}" for i in range(10)]  # matplotlib's default cycle: one colour per seed
    for i, r in enumerate(rows):
        ax.plot(range(1, len(r["rewards"]) + 1), r["rewards"], color=colours[i % 10], alpha=0.6,
                linewidth=1.2, marker="o", markersize=3, label=r["run"])  # fmt: skip
    n = min(len(r["rewards"]) for r in rows)
    mean = [statistics.fmean(r["rewards"][j] for r in rows) for j in range(n)]
    ax.plot(range(1, n + 1), mean, color="black", linewidth=2.4, label=f"mean of {len(rows)}")
    ax.set_xlabel("iteration")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_ylabel("mean reward of the iteration's samples")
    ax.set_ylim(0, 1)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def table(rows: list[dict[str, Any]]) -> str:
    head = f"{'run':<14}{'iters':>6}{'first 5':>9}{'last 5':>8}{'minutes':>9}{'load':>11}"
    lines = [head]
    for r in rows:
        minutes = f"{r['minutes']:.1f}" if "minutes" in r else "-"
        ld = f"{r['load_start']:.1f}-{r['load_end']:.1f}" if "load_start" in r else "-"
        lines.append(
            f"{r['run']:<14}{r['iterations']:>6}{r['first']:>9.3f}{r['last']:>8.3f}"
            f"{minutes:>9}{ld:>11}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("config", nargs="?", help="config to train (omit with --read)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", default="runs/learning", help="where the runs and results go")
    ap.add_argument("--set", action="append", default=[], help="extra key=value overrides")
    ap.add_argument("--read", nargs="+", type=Path, help="existing run dirs instead of training")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    if args.read:
        for d in args.read:
            rows.append(row(d.name, read_rewards(d), read_timing(d)))
        title = "reward per iteration: " + ", ".join(str(d) for d in args.read)
    else:
        if not args.config:
            ap.error("give a CONFIG to train, or --read RUN_DIR...")
        for seed in args.seeds:
            run_dir = out / f"seed-{seed}"
            timing = train(args.config, seed, run_dir, args.set)
            rows.append(row(f"seed {seed}", read_rewards(run_dir), timing))
        title = f"{args.config}: reward per iteration, {len(rows)} seeds"
    plot(rows, title, out / "learning.png")
    (out / "learning.json").write_text(json.dumps({"title": title, "runs": rows}, indent=1))
    print(table(rows))
    print(f"wrote {out / 'learning.png'} and {out / 'learning.json'}")


if __name__ == "__main__":
    main()
