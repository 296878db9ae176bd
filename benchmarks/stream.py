"""The streamed iteration against the staged one: same job, same machine, side by side.

    python benchmarks/stream.py                       # tiny model ("small" size), 3 rounds
    python benchmarks/stream.py --model smollm2 --rounds 3 --iterations 3

Each round runs the job once streamed (``pipeline.stream = true``) and once staged, in
alternating order, each on a fresh Runtime over the same model dir, with the same prompts and
seeds: both decode the same samples. The first iteration of each run (cold starts) is left out;
the others are measured. Reported per mode, medians over all measured iterations: the iteration
time, the rollout's tail share (time from the first rollout function's end to the last's, over
the rollout), and, streamed, the scoring and training seconds that overlapped the rollout. The
ratio staged / streamed is the speedup. Prints a table and writes benchmarks/results/stream.json
with the machine's load average before and after.

The workload is long-tailed on purpose (repeat task with lognormal sigma 1.4, 2 rollout
functions on 2 slots, ``train.epochs = 1``): the streamed iteration can only fill a tail, and
with several epochs only the first one's forward and backward can run before the last group.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from rlhfless.runtime import Runtime  # noqa: E402
from rlhfless.stages.config import Config, load_config  # noqa: E402
from rlhfless.stages.pipeline import IterationMetrics, Pipeline  # noqa: E402
from rlhfless.stages.run import prepare_model  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "stream.json"
WORKLOADS = {
    "tiny": [
        "model.tiny_size=small",
        "train.batch_prompts=16",
        "train.group_size=8",
        "rollout.max_new_tokens=96",
        "task.median_len=8",
        "task.sigma=1.4",
    ],
    "smollm2": [
        "model.kind=smollm2",
        "task.name=reasoning-gym",
        "task.dataset=gsm_symbolic",
        "train.batch_prompts=4",
        "train.group_size=4",
        "rollout.max_new_tokens=96",
    ],
}
# One epoch (only the first epoch can stream), and a learning rate so small that the policy,
# and so the response lengths, stay put over the rounds: every round measures the same work.
COMMON = [
    "train.epochs=1",
    "train.lr=1e-8",
    "runtime.slots=2",
    "rollout.functions=2",
    "checkpoint.every=0",
]


def config(args: argparse.Namespace, run_dir: Path, stream: bool) -> Config:
    sets = [*COMMON, *WORKLOADS[args.model], *args.set]
    return load_config(
        None, [*sets, f"run.run_dir={run_dir}", f"pipeline.stream={str(stream).lower()}"]
    )


async def one_run(
    cfg: Config, model_dir: Path, run_dir: Path, iterations: int
) -> list[IterationMetrics]:
    async with Runtime(slots=cfg.runtime.slots, keep_alive_s=60) as rt:
        p = Pipeline(rt, cfg, model_dir, run_dir)
        return [await p.run_iteration(i) for i in range(iterations)]


def tail_share(m: IterationMetrics) -> float:
    ends = m.scaling.get("finished_at") or []
    rollout = m.stage_seconds["rollout"] if not m.streamed else max(ends, default=0.0)
    if len(ends) < 2 or rollout <= 0:
        return 0.0
    return (max(ends) - min(ends)) / rollout


def tail_seconds(m: IterationMetrics) -> float:
    ends = m.scaling.get("finished_at") or []
    return max(ends) - min(ends) if len(ends) >= 2 else 0.0


def summarise(ms: list[IterationMetrics]) -> dict[str, Any]:
    med = statistics.median
    seconds = med(m.seconds for m in ms)
    tail = med(tail_seconds(m) for m in ms)
    return {
        "iterations": len(ms),
        "seconds": seconds,
        "rollout_seconds": med(max(m.scaling.get("finished_at") or [0.0]) for m in ms),
        "tail_share": med(tail_share(m) for m in ms),
        "tail_seconds": tail,
        # With every slot decoding until the first rollout function ends, work after the rollout
        # can only move into the tail: streaming saves at most the tail's seconds.
        "speedup_bound": seconds / max(seconds - tail, 1e-9),
        "overlapped_seconds": med(m.overlapped_seconds for m in ms),
        "busy_seconds": {
            k: med(m.busy_seconds.get(k, 0.0) for m in ms) for k in ms[0].busy_seconds
        },
        "stage_seconds": {k: med(m.stage_seconds[k] for m in ms) for k in ms[0].stage_seconds},
        "reward_mean": [m.reward_mean for m in ms],
        "finished_at": [m.scaling.get("finished_at") for m in ms],
    }


async def main(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="rlhfless-stream-"))
    model_dir = prepare_model(config(args, work / "model-run", True), work / "model-run")
    measured: dict[str, list[IterationMetrics]] = {"streamed": [], "staged": []}
    for r in range(args.rounds):
        order = [True, False] if r % 2 == 0 else [False, True]
        for stream in order:
            name = "streamed" if stream else "staged"
            run_dir = work / f"{name}-{r}"
            t0 = time.perf_counter()
            ms = await one_run(config(args, run_dir, stream), model_dir, run_dir, args.iterations)
            measured[name] += ms[1:]
            print(
                f"round {r} {name}: {time.perf_counter() - t0:.1f} s, "
                f"iterations {[round(m.seconds, 2) for m in ms]}",
                flush=True,
            )
    out = {k: summarise(v) for k, v in measured.items()}
    out["speedup"] = out["staged"]["seconds"] / out["streamed"]["seconds"]
    return out


def table(out: dict[str, Any]) -> str:
    rows = [
        f"{'mode':10} {'iteration s':>12} {'rollout s':>10} {'tail share':>11} {'overlapped s':>13}"
    ]
    for name in ("staged", "streamed"):
        s = out[name]
        rows.append(
            f"{name:10} {s['seconds']:12.2f} {s['rollout_seconds']:10.2f} "
            f"{s['tail_share']:11.0%} {s['overlapped_seconds']:13.2f}"
        )
    rows.append(f"speedup (staged / streamed, medians): {out['speedup']:.2f}x")
    rows.append(
        f"most streaming can save here (the staged tail, {out['staged']['tail_seconds']:.2f} s "
        f"of {out['staged']['seconds']:.2f} s): {out['staged']['speedup_bound']:.2f}x"
    )
    return "\n".join(rows)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=sorted(WORKLOADS), default="tiny")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--iterations", type=int, default=4, help="per run; the first is left out")
    ap.add_argument("--set", action="append", default=[], help="extra config overrides")
    a = ap.parse_args()
    load0 = os.getloadavg()
    result = asyncio.run(main(a))
    result["machine"] = {
        "cpus": os.cpu_count(),
        "load_before": load0,
        "load_after": os.getloadavg(),
        "python": platform.python_version(),
    }
    result["args"] = vars(a)
    print(table(result))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    key = a.model
    old = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    old[key] = result
    RESULTS.write_text(json.dumps(old, indent=2))
    print(f"wrote {RESULTS} [{key}]")
